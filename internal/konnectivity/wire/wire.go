// Package wire holds what tether's Konnectivity server, agent and frontend
// dialer agree on: the upstream-compatible packet validation, the gRPC
// metadata keys (agentID, agentIdentifiers, serverID, serverCount), the
// agentIdentifiers parser, and tether's capability extension that moves each
// tunnelled connection onto its own gRPC stream (per-connection flow control).
//
// Packet types are the upstream ones from
// sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client; this
// package never defines new message encodings, so an upstream peer that does
// not negotiate the extension sees only upstream traffic.
package wire

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"google.golang.org/grpc/metadata"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
)

// Upstream metadata keys. gRPC lower-cases keys on the wire.
const (
	MDAgentID          = "agentid"
	MDAgentIdentifiers = "agentidentifiers"
	MDServerID         = "serverid"
	MDServerCount      = "servercount"
	MDAuthorization    = "authorization"
	BearerPrefix       = "Bearer "
)

// tether extension metadata keys. Upstream peers ignore unknown metadata.
const (
	// MDCapabilities is sent by a tether agent in its Connect request
	// metadata and by a tether server in its response header. Its value is a
	// comma-separated list of capability tokens.
	MDCapabilities = "tether-konnectivity-capabilities"
	// MDConnStream marks an /AgentService/Connect stream opened by an agent
	// as the data stream of one dialled connection. The value is the dial's
	// random (decimal) copied from the DIAL_REQ.
	MDConnStream = "tether-konnectivity-conn-stream"
	// CapConnStreams is the capability "one gRPC stream per tunnelled
	// connection" (version 1 of the extension).
	CapConnStreams = "conn-streams.v1"
)

// MaxDataChunk is the largest DATA payload tether peers put in one packet.
// It stays just under 256 KiB so that a whole DATA packet fits gRPC's
// 256 KiB buffer-pool tier (one byte more doubles the buffer and its zeroing).
const MaxDataChunk = 256<<10 - 64

// MaxMessageSize bounds a received gRPC message; a peer sending more is a
// protocol error on that stream only.
const MaxMessageSize = 4 << 20

// ErrMalformed is wrapped by every packet validation error.
var ErrMalformed = errors.New("malformed konnectivity packet")

// Validate checks that pkt has the payload its type requires. Unknown types
// are errors: tether never sends them and upstream does not define them.
func Validate(pkt *client.Packet) error {
	if pkt == nil {
		return fmt.Errorf("%w: nil packet", ErrMalformed)
	}
	ok := false
	switch pkt.Type {
	case client.PacketType_DIAL_REQ:
		ok = pkt.GetDialRequest() != nil
	case client.PacketType_DIAL_RSP:
		ok = pkt.GetDialResponse() != nil
	case client.PacketType_CLOSE_REQ:
		ok = pkt.GetCloseRequest() != nil
	case client.PacketType_CLOSE_RSP:
		ok = pkt.GetCloseResponse() != nil
	case client.PacketType_DATA:
		ok = pkt.GetData() != nil
	case client.PacketType_DIAL_CLS:
		ok = pkt.GetCloseDial() != nil
	case client.PacketType_DRAIN:
		ok = true // upstream agents send DRAIN with or without the empty payload
	default:
		return fmt.Errorf("%w: unknown type %d", ErrMalformed, int32(pkt.Type))
	}
	if !ok {
		return fmt.Errorf("%w: %s without its payload", ErrMalformed, pkt.Type)
	}
	return nil
}

// Identifiers is the parsed agentIdentifiers metadata.
type Identifiers struct {
	Hosts        []string
	IPv4         []netip.Addr
	IPv6         []netip.Addr
	CIDRs        []netip.Prefix
	DefaultRoute bool
}

// Empty reports whether no identifier is set.
func (id Identifiers) Empty() bool {
	return len(id.Hosts) == 0 && len(id.IPv4) == 0 && len(id.IPv6) == 0 && len(id.CIDRs) == 0 && !id.DefaultRoute
}

// Encode renders the identifiers in the upstream URL-query form.
func (id Identifiers) Encode() string {
	v := url.Values{}
	for _, h := range id.Hosts {
		v.Add("host", h)
	}
	for _, a := range id.IPv4 {
		v.Add("ipv4", a.String())
	}
	for _, a := range id.IPv6 {
		v.Add("ipv6", a.String())
	}
	for _, p := range id.CIDRs {
		v.Add("cidr", p.String())
	}
	if id.DefaultRoute {
		v.Add("default-route", "true")
	}
	return v.Encode()
}

// Limits for ParseIdentifiers: metadata comes from the network.
const (
	maxIdentifiersLen   = 16 << 10
	maxIdentifiersCount = 256
)

// ParseIdentifiers parses agentIdentifiers ("host=a&ipv4=1.2.3.4&cidr=...").
// Unknown keys are ignored as upstream does (version skew); malformed values
// of known keys are errors, unlike upstream, so that a typo never silently
// routes traffic elsewhere.
func ParseIdentifiers(s string) (Identifiers, error) {
	var id Identifiers
	if len(s) > maxIdentifiersLen {
		return id, fmt.Errorf("agentIdentifiers: %d bytes exceeds limit %d", len(s), maxIdentifiersLen)
	}
	if s == "" {
		return id, nil
	}
	vals, err := url.ParseQuery(s)
	if err != nil {
		return id, fmt.Errorf("agentIdentifiers: %w", err)
	}
	n := 0
	for k, vs := range vals {
		n += len(vs)
		if n > maxIdentifiersCount {
			return Identifiers{}, fmt.Errorf("agentIdentifiers: more than %d values", maxIdentifiersCount)
		}
		for _, v := range vs {
			switch k {
			case "host":
				if v == "" || strings.ContainsAny(v, " /\\@") {
					return Identifiers{}, fmt.Errorf("agentIdentifiers: bad host %q", v)
				}
				id.Hosts = append(id.Hosts, strings.ToLower(v))
			case "ipv4":
				a, err := netip.ParseAddr(v)
				if err != nil || !a.Unmap().Is4() {
					return Identifiers{}, fmt.Errorf("agentIdentifiers: bad ipv4 %q", v)
				}
				id.IPv4 = append(id.IPv4, a.Unmap())
			case "ipv6":
				a, err := netip.ParseAddr(v)
				if err != nil || !a.Is6() || a.Is4In6() {
					return Identifiers{}, fmt.Errorf("agentIdentifiers: bad ipv6 %q", v)
				}
				id.IPv6 = append(id.IPv6, a)
			case "cidr":
				p, err := netip.ParsePrefix(v)
				if err != nil {
					return Identifiers{}, fmt.Errorf("agentIdentifiers: bad cidr %q: %w", v, err)
				}
				id.CIDRs = append(id.CIDRs, p.Masked())
			case "default-route":
				b, err := strconv.ParseBool(v)
				if err != nil {
					return Identifiers{}, fmt.Errorf("agentIdentifiers: bad default-route %q", v)
				}
				id.DefaultRoute = id.DefaultRoute || b
			}
		}
	}
	return id, nil
}

// Capabilities parses a capability list from metadata values.
func Capabilities(vals []string) map[string]bool {
	caps := map[string]bool{}
	for _, v := range vals {
		if len(v) > 1024 {
			continue
		}
		for _, c := range strings.Split(v, ",") {
			if c = strings.TrimSpace(c); c != "" && len(caps) < 32 {
				caps[c] = true
			}
		}
	}
	return caps
}

// HasCap reports whether md announces capability c under MDCapabilities.
func HasCap(md metadata.MD, c string) bool {
	return Capabilities(md.Get(MDCapabilities))[c]
}

// One returns the single value of key in md, or an error if it is missing
// or repeated.
func One(md metadata.MD, key string) (string, error) {
	v := md.Get(key)
	if len(v) != 1 {
		return "", fmt.Errorf("metadata %q: want exactly one value, got %d", key, len(v))
	}
	return v[0], nil
}

// SplitDialAddress validates a dial address "host:port" and returns its
// parts. The host is lower-cased; IPv6 zones are rejected.
func SplitDialAddress(addr string) (host string, port uint16, err error) {
	if len(addr) > 512 {
		return "", 0, fmt.Errorf("dial address too long (%d bytes)", len(addr))
	}
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("dial address %q: %w", addr, err)
	}
	if h == "" || strings.ContainsAny(h, "%/ \\@") {
		return "", 0, fmt.Errorf("dial address %q: bad host", addr)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("dial address %q: bad port", addr)
	}
	return strings.ToLower(h), uint16(n), nil
}

package sshtunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// directTCPIP is the channel-open payload of a direct-tcpip channel
// (RFC 4254 section 7.2).
type directTCPIP struct {
	Host       netip.Addr
	Port       uint16
	OriginHost string
	OriginPort uint32
}

// maxHostLen bounds the host strings of a direct-tcpip payload.
const maxHostLen = 255

// parseDirectTCPIP decodes a direct-tcpip payload strictly: the destination
// must be an IP literal with a port in 1..65535, and nothing may follow.
func parseDirectTCPIP(b []byte) (directTCPIP, error) {
	var p directTCPIP
	host, rest, err := sshString(b)
	if err != nil {
		return p, fmt.Errorf("destination host: %w", err)
	}
	port, rest, err := sshUint32(rest)
	if err != nil {
		return p, fmt.Errorf("destination port: %w", err)
	}
	origin, rest, err := sshString(rest)
	if err != nil {
		return p, fmt.Errorf("originator host: %w", err)
	}
	oport, rest, err := sshUint32(rest)
	if err != nil {
		return p, fmt.Errorf("originator port: %w", err)
	}
	if len(rest) != 0 {
		return p, fmt.Errorf("%d trailing bytes", len(rest))
	}
	addr, err := netip.ParseAddr(string(host))
	if err != nil || addr.Zone() != "" {
		return p, fmt.Errorf("destination %q is not an IP address", host)
	}
	if port == 0 || port > 65535 {
		return p, fmt.Errorf("destination port %d out of range", port)
	}
	p.Host, p.Port, p.OriginHost, p.OriginPort = addr.Unmap(), uint16(port), string(origin), oport
	return p, nil
}

var errShort = errors.New("payload too short")

func sshString(b []byte) ([]byte, []byte, error) {
	n, rest, err := sshUint32(b)
	if err != nil {
		return nil, nil, err
	}
	if n > maxHostLen {
		return nil, nil, fmt.Errorf("string of %d bytes too long", n)
	}
	if uint32(len(rest)) < n {
		return nil, nil, errShort
	}
	return rest[:n], rest[n:], nil
}

func sshUint32(b []byte) (uint32, []byte, error) {
	if len(b) < 4 {
		return 0, nil, errShort
	}
	return binary.BigEndian.Uint32(b), b[4:], nil
}

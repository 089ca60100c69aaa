// Package server is tether's Konnectivity server: agents in the node network
// dial out to it (/AgentService/Connect) and it gives frontends (the hub's
// egress dialer, kube-apiserver's konnectivity-client, HTTP CONNECT clients)
// a TCP proxy into that network (/ProxyService/Proxy or HTTP CONNECT).
//
// It is wire-compatible with upstream apiserver-network-proxy. With tether
// agents it negotiates the conn-streams extension (see package wire) so that
// each tunnelled connection has its own gRPC stream and therefore its own
// HTTP/2 flow-control window: a stalled reader never blocks other
// connections. With upstream agents it falls back to upstream behaviour, but
// with bounded per-connection queues.
package server

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
	agentpb "sigs.k8s.io/apiserver-network-proxy/proto/agent"

	"github.com/tether-dev/tether/internal/konnectivity/wire"
)

// Strategy names how a dial picks an agent (upstream --proxy-strategies,
// plus tether's nodeName).
type Strategy string

const (
	// StrategyDefault picks any ready agent.
	StrategyDefault Strategy = "default"
	// StrategyDestHost picks an agent whose host/ipv4/ipv6/cidr identifiers
	// match the destination host.
	StrategyDestHost Strategy = "destHost"
	// StrategyDefaultRoute picks an agent announcing default-route=true.
	StrategyDefaultRoute Strategy = "defaultRoute"
	// StrategyNodeName picks the agent whose agentID equals the destination
	// host, so the hub can dial "node-name:port" (tether extension).
	StrategyNodeName Strategy = "nodeName"
)

// ParseStrategies parses a comma-separated --proxy-strategies value.
func ParseStrategies(s string) ([]Strategy, error) {
	var out []Strategy
	for _, f := range splitComma(s) {
		switch Strategy(f) {
		case StrategyDefault, StrategyDestHost, StrategyDefaultRoute, StrategyNodeName:
			out = append(out, Strategy(f))
		default:
			return nil, fmt.Errorf("unknown proxy strategy %q (want default, destHost, defaultRoute or nodeName)", f)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no proxy strategy given")
	}
	return out, nil
}

// AgentAuthenticator checks an agent's Connect request and returns the
// identity it proved (a certificate CN, a service account user name).
type AgentAuthenticator interface {
	AuthenticateAgent(ctx context.Context, md metadata.MD) (identity string, err error)
}

// Config configures a Server. The zero value of every field is usable.
type Config struct {
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// ServerID is sent to agents as serverID; "" picks a random ID.
	ServerID string
	// ServerCount is sent to agents as serverCount; 0 means 1.
	ServerCount int
	// Strategies in order of preference; nil means [default].
	Strategies []Strategy
	// Authenticator checks agents; nil accepts every agent that got past the
	// transport (mTLS on the agent listener).
	Authenticator AgentAuthenticator
	// Entitled, if set, is asked whether identity may serve as agentID with
	// these identifiers; an error rejects the agent. Used so a node's agent
	// cannot claim another node's name or addresses.
	Entitled func(identity, agentID string, ids wire.Identifiers) error
	// DialTimeout bounds how long a frontend dial waits for the agent; 0 means 10s.
	DialTimeout time.Duration
	// CloseTimeout bounds how long a close waits for the agent's CLOSE_RSP; 0 means 5s.
	CloseTimeout time.Duration
	// MaxPendingDialsPerAgent bounds dials in flight per agent stream; 0 means 1000.
	MaxPendingDialsPerAgent int
	// MaxConnsPerAgent bounds established connections per agent stream; 0 means 10000.
	MaxConnsPerAgent int
	// FallbackQueuePackets bounds, per connection, the packets queued from an
	// upstream (non-extension) agent towards a slow frontend; 0 means 64.
	FallbackQueuePackets int
	// FallbackStallTimeout is how long a full fallback queue may block the
	// shared agent stream before that one connection is reset; 0 means 10s.
	FallbackStallTimeout time.Duration
	// DisableConnStreams turns the tether extension off (upstream behaviour).
	DisableConnStreams bool
	// DisableRawConns turns off raw connections (tether extension: each
	// tunnelled connection on its own TLS connection, for agents that
	// authenticate with a client certificate).
	DisableRawConns bool
	// Registerer receives the metrics; nil uses a private registry (see Gatherer).
	Registerer prometheus.Registerer
}

// Server is a Konnectivity proxy server. Serve its gRPC services and HTTP
// CONNECT handler with Listen* helpers or register them on your own servers.
type Server struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	gather  prometheus.Gatherer
	closing atomic.Bool
	// rawListener is set when Run serves the agent port through agentMux,
	// so raw connections can reach this server.
	rawListener atomic.Bool
	rawAccepted atomic.Int64

	mu       sync.Mutex
	backends []*backend
	pending  map[int64]*tunnel // by agent-facing dial ID
	nextID   atomic.Int64

	agentpb.UnimplementedAgentServiceServer
	client.UnimplementedProxyServiceServer
}

// New validates cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ServerID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		cfg.ServerID = hex.EncodeToString(b[:])
	}
	if cfg.ServerCount <= 0 {
		cfg.ServerCount = 1
	}
	if len(cfg.Strategies) == 0 {
		cfg.Strategies = []Strategy{StrategyDefault}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	defI := func(d *int, v int) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.DialTimeout, 10*time.Second)
	def(&cfg.CloseTimeout, 5*time.Second)
	def(&cfg.FallbackStallTimeout, 10*time.Second)
	defI(&cfg.MaxPendingDialsPerAgent, 1000)
	defI(&cfg.MaxConnsPerAgent, 10000)
	defI(&cfg.FallbackQueuePackets, 64)
	var gather prometheus.Gatherer
	if cfg.Registerer == nil {
		r := prometheus.NewRegistry()
		cfg.Registerer, gather = r, r
	} else if g, ok := cfg.Registerer.(prometheus.Gatherer); ok {
		gather = g
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("konnectivity server metrics: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, m: m, gather: gather, pending: map[int64]*tunnel{}}
	var seed [8]byte
	_, _ = rand.Read(seed[:])
	s.nextID.Store(int64(binary.BigEndian.Uint64(seed[:]) >> 24)) // unpredictable start, room to count
	return s, nil
}

// ID returns the server ID announced to agents.
func (s *Server) ID() string { return s.cfg.ServerID }

// Gatherer returns the registry holding this server's metrics, or nil if
// Config.Registerer was not a Gatherer.
func (s *Server) Gatherer() prometheus.Gatherer { return s.gather }

// ReadyAgents returns the number of connected agent streams.
func (s *Server) ReadyAgents() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, b := range s.backends {
		if !b.draining.Load() {
			n++
		}
	}
	return n
}

// AgentIDs returns the IDs of connected agents (duplicates removed).
func (s *Server) AgentIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, b := range s.backends {
		if !seen[b.agentID] {
			seen[b.agentID] = true
			out = append(out, b.agentID)
		}
	}
	return out
}

// Stats is a snapshot of bookkeeping, for tests and debugging.
type Stats struct {
	Backends, Pending, Established int
}

// Stats returns counts of agent streams, pending dials and established connections.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{Backends: len(s.backends), Pending: len(s.pending)}
	for _, b := range s.backends {
		st.Established += len(b.conns)
	}
	return st
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			f := s[start:i]
			for len(f) > 0 && f[0] == ' ' {
				f = f[1:]
			}
			for len(f) > 0 && f[len(f)-1] == ' ' {
				f = f[:len(f)-1]
			}
			if f != "" {
				out = append(out, f)
			}
			start = i + 1
		}
	}
	return out
}

// RawConnsAccepted counts raw connections (tether extension) accepted so far.
func (s *Server) RawConnsAccepted() int64 { return s.rawAccepted.Load() }

// ---- agents ----

type backend struct {
	s        *Server
	agentID  string
	identity string
	ids      wire.Identifiers
	ext      bool
	peer     string
	rawKey   string // wire.CertKey of the control stream's TLS peer, if raw conns were negotiated
	stream   agentpb.AgentService_ConnectServer
	sendMu   sync.Mutex
	done     chan struct{}
	draining atomic.Bool

	// guarded by s.mu
	conns    map[int64]*tunnel // by agent connect ID
	npending int
}

func (b *backend) send(pkt *client.Packet) error {
	select {
	case <-b.done:
		return errAgentGone
	default:
	}
	b.sendMu.Lock()
	defer b.sendMu.Unlock()
	if err := b.stream.Send(pkt); err != nil {
		b.s.m.streamErrors.WithLabelValues(segToAgent, status.Code(err).String(), pkt.Type.String()).Inc()
		return fmt.Errorf("send to agent %s: %w", b.agentID, err)
	}
	b.s.m.streamPackets.WithLabelValues(segToAgent, pkt.Type.String()).Inc()
	return nil
}

var (
	errAgentGone   = errors.New("konnectivity agent disconnected")
	errNoAgent     = errors.New("no konnectivity agent available for destination")
	errDialTimeout = errors.New("dial timeout waiting for konnectivity agent")
	errLimit       = errors.New("konnectivity agent connection limit reached")
	errServerStop  = errors.New("konnectivity server shutting down")
)

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.Network() + "://" + p.Addr.String()
	}
	return ""
}

func (s *Server) authenticate(ctx context.Context, md metadata.MD) (agentID, identity string, err error) {
	agentID, err = wire.One(md, wire.MDAgentID)
	if err != nil {
		return "", "", status.Error(codes.InvalidArgument, err.Error())
	}
	if agentID == "" || len(agentID) > 253 {
		return "", "", status.Error(codes.InvalidArgument, "agentID must be 1..253 bytes")
	}
	if s.cfg.Authenticator != nil {
		identity, err = s.cfg.Authenticator.AuthenticateAgent(ctx, md)
		if err != nil {
			return "", "", status.Errorf(codes.Unauthenticated, "agent authentication failed: %v", err)
		}
	}
	return agentID, identity, nil
}

// Connect implements /AgentService/Connect.
func (s *Server) Connect(stream agentpb.AgentService_ConnectServer) error {
	ctx := stream.Context()
	md, _ := metadata.FromIncomingContext(ctx)
	if s.closing.Load() {
		return status.Error(codes.Unavailable, errServerStop.Error())
	}
	if len(md.Get(wire.MDConnStream)) > 0 && !s.cfg.DisableConnStreams {
		return s.serveConnStream(stream, md)
	}
	agentID, identity, err := s.authenticate(ctx, md)
	if err != nil {
		s.log.Warn("rejected agent", "peer", peerAddr(ctx), "err", err)
		return err
	}
	var ids wire.Identifiers
	if v := md.Get(wire.MDAgentIdentifiers); len(v) > 0 {
		if len(v) > 1 {
			return status.Error(codes.InvalidArgument, "agentIdentifiers given more than once")
		}
		if ids, err = wire.ParseIdentifiers(v[0]); err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
	}
	if s.cfg.Entitled != nil {
		if err := s.cfg.Entitled(identity, agentID, ids); err != nil {
			s.log.Warn("agent not entitled", "agentID", agentID, "identity", identity, "err", err)
			return status.Errorf(codes.PermissionDenied, "agent %q not entitled: %v", agentID, err)
		}
	}
	ext := !s.cfg.DisableConnStreams && wire.HasCap(md, wire.CapConnStreams)
	hdr := metadata.Pairs(wire.MDServerID, s.cfg.ServerID, wire.MDServerCount, strconv.Itoa(s.cfg.ServerCount))
	if !s.cfg.DisableConnStreams {
		hdr.Append(wire.MDCapabilities, wire.CapConnStreams)
	}
	rawKey := ""
	if s.rawListener.Load() && !s.cfg.DisableRawConns && wire.HasCap(md, wire.CapRawConns) {
		if p, ok := peer.FromContext(ctx); ok {
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
				rawKey = wire.CertKey(ti.State)
			}
		}
		if rawKey != "" {
			hdr.Append(wire.MDCapabilities, wire.CapRawConns)
		}
	}
	if err := stream.SendHeader(hdr); err != nil {
		return err
	}
	b := &backend{s: s, agentID: agentID, identity: identity, ids: ids, ext: ext, peer: peerAddr(ctx), rawKey: rawKey,
		stream: stream, done: make(chan struct{}), conns: map[int64]*tunnel{}}
	s.addBackend(b)
	s.m.grpcConnections.WithLabelValues("Connect").Inc()
	defer s.m.grpcConnections.WithLabelValues("Connect").Dec()
	s.log.Info("agent connected", "agentID", agentID, "identity", identity, "peer", b.peer, "connStreams", ext)

	recvDone := make(chan error, 1)
	go func() { recvDone <- s.recvBackend(b) }()
	select {
	case err = <-recvDone:
	case <-ctx.Done():
		err = ctx.Err()
	}
	s.removeBackend(b)
	s.log.Info("agent disconnected", "agentID", agentID, "peer", b.peer, "err", err)
	if errors.Is(err, wire.ErrMalformed) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return nil
}

func (s *Server) addBackend(b *backend) {
	s.mu.Lock()
	s.backends = append(s.backends, b)
	s.updateBackendGauges()
	s.mu.Unlock()
}

// updateBackendGauges needs s.mu.
func (s *Server) updateBackendGauges() {
	s.m.readyBackendConns.Set(float64(len(s.backends)))
	ids := map[string]bool{}
	for _, b := range s.backends {
		ids[b.agentID] = true
	}
	s.m.readyBackends.Set(float64(len(ids)))
}

// removeBackend fails every pending and established connection of b at once.
func (s *Server) removeBackend(b *backend) {
	s.mu.Lock()
	for i, x := range s.backends {
		if x == b {
			s.backends = append(s.backends[:i], s.backends[i+1:]...)
			break
		}
	}
	close(b.done)
	var victims []*tunnel
	for _, t := range s.pending {
		if t.b == b {
			victims = append(victims, t)
		}
	}
	for _, t := range b.conns {
		victims = append(victims, t)
	}
	s.updateBackendGauges()
	s.mu.Unlock()
	for _, t := range victims {
		s.abort(t, errAgentGone, false)
	}
}

func (s *Server) recvBackend(b *backend) error {
	for {
		pkt, err := b.stream.Recv()
		if err != nil {
			return err
		}
		if err := wire.Validate(pkt); err != nil {
			s.m.streamErrors.WithLabelValues(segFromAgent, codes.InvalidArgument.String(), pkt.GetType().String()).Inc()
			return err
		}
		s.m.streamPackets.WithLabelValues(segFromAgent, pkt.Type.String()).Inc()
		switch pkt.Type {
		case client.PacketType_DIAL_RSP:
			r := pkt.GetDialResponse()
			t := s.takePending(r.Random, b)
			if t == nil {
				if r.Error == "" && r.ConnectID != 0 {
					// The dial was cancelled while in flight: close it at the agent.
					_ = b.send(closeReq(r.ConnectID))
				}
				continue
			}
			if r.Error != "" {
				s.failDial(t, fmt.Errorf("dial %s: %s", t.address, r.Error), reasonEndpoint, false)
				continue
			}
			s.establish(t, r.ConnectID, nil)
		case client.PacketType_DATA:
			d := pkt.GetData()
			s.mu.Lock()
			t := b.conns[d.ConnectID]
			s.mu.Unlock()
			if t == nil {
				if d.ConnectID != 0 {
					_ = b.send(closeReq(d.ConnectID))
				}
				continue
			}
			t.enqueueFallback(d.Data)
		case client.PacketType_CLOSE_RSP:
			r := pkt.GetCloseResponse()
			s.mu.Lock()
			t := b.conns[r.ConnectID]
			s.mu.Unlock()
			if t != nil {
				var err error
				if r.Error != "" {
					err = errors.New(r.Error)
				}
				s.finish(t, err, false)
			}
		case client.PacketType_DIAL_CLS:
			if t := s.takePending(pkt.GetCloseDial().Random, b); t != nil {
				s.failDial(t, errors.New("dial closed by agent"), reasonEndpoint, false)
			}
		case client.PacketType_DRAIN:
			b.draining.Store(true)
			s.log.Info("agent draining", "agentID", b.agentID)
		default:
			return fmt.Errorf("%w: %s not expected from an agent", wire.ErrMalformed, pkt.Type)
		}
	}
}

// serveConnStream serves one tunnelled connection's data stream (tether
// extension). The first packet is the DIAL_RSP of a pending dial this agent
// was asked to make.
func (s *Server) serveConnStream(stream agentpb.AgentService_ConnectServer, md metadata.MD) error {
	ctx := stream.Context()
	agentID, _, err := s.authenticate(ctx, md)
	if err != nil {
		return err
	}
	rv, err := wire.One(md, wire.MDConnStream)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	random, err := strconv.ParseInt(rv, 10, 64)
	if err != nil {
		return status.Error(codes.InvalidArgument, "bad conn stream id")
	}
	pkt, err := stream.Recv()
	if err != nil {
		return err
	}
	if err := wire.Validate(pkt); err != nil || pkt.Type != client.PacketType_DIAL_RSP || pkt.GetDialResponse().Random != random {
		return status.Error(codes.InvalidArgument, "conn stream must start with its DIAL_RSP")
	}
	r := pkt.GetDialResponse()
	pa := peerAddr(ctx)
	s.mu.Lock()
	t := s.pending[random]
	if t != nil && (t.b.agentID != agentID || t.b.peer != pa) {
		t = nil // another agent, or another connection, may not claim this dial
	}
	s.mu.Unlock()
	if t == nil || s.takePending(random, t.b) == nil {
		return status.Error(codes.NotFound, "no such pending dial (cancelled or timed out)")
	}
	if r.Error != "" {
		s.failDial(t, fmt.Errorf("dial %s: %s", t.address, r.Error), reasonEndpoint, false)
		return nil
	}
	if !s.establish(t, r.ConnectID, stream) {
		return status.Error(codes.Aborted, "connection closed before it was established")
	}
	recvDone := make(chan error, 1)
	go func() { recvDone <- s.recvConnStream(t, stream) }()
	select {
	case err = <-recvDone:
		if err != nil {
			s.abort(t, fmt.Errorf("konnectivity agent stream: %w", err), false)
		}
		return nil
	case <-t.done:
	case <-ctx.Done():
		s.abort(t, errAgentGone, false)
		return nil
	}
	if t.abortFast() {
		return status.Error(codes.Aborted, t.err().Error())
	}
	// Closed by the frontend: give the agent time to answer CLOSE_REQ.
	timer := time.NewTimer(s.cfg.CloseTimeout)
	defer timer.Stop()
	select {
	case <-recvDone:
	case <-timer.C:
	case <-ctx.Done():
	}
	return nil
}

func (s *Server) recvConnStream(t *tunnel, stream agentpb.AgentService_ConnectServer) error {
	for {
		pkt, err := stream.Recv()
		if err != nil {
			return err
		}
		if err := wire.Validate(pkt); err != nil {
			return err
		}
		s.m.streamPackets.WithLabelValues(segFromAgent, pkt.Type.String()).Inc()
		switch pkt.Type {
		case client.PacketType_DATA:
			if err := t.deliver(pkt.GetData().Data); err != nil {
				return nil // frontend gone; the tunnel is being torn down
			}
		case client.PacketType_CLOSE_RSP:
			var err error
			if e := pkt.GetCloseResponse().Error; e != "" {
				err = errors.New(e)
			}
			s.finish(t, err, false)
			return nil
		default:
			return fmt.Errorf("%w: %s on a connection stream", wire.ErrMalformed, pkt.Type)
		}
	}
}

// ---- routing ----

func (s *Server) pickBackend(host string) (*backend, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	addr, addrErr := netip.ParseAddr(host)
	for _, st := range s.cfg.Strategies {
		var cands []*backend
		for _, b := range s.backends {
			if b.draining.Load() {
				continue
			}
			ok := false
			switch st {
			case StrategyDefault:
				ok = true
			case StrategyDefaultRoute:
				ok = b.ids.DefaultRoute
			case StrategyNodeName:
				ok = b.agentID == host
			case StrategyDestHost:
				ok = matchHost(b.ids, host, addr, addrErr == nil)
			}
			if ok {
				cands = append(cands, b)
			}
		}
		if len(cands) > 0 {
			return leastLoaded(cands), nil
		}
	}
	return nil, fmt.Errorf("%w %q", errNoAgent, host)
}

// leastLoaded picks among the candidates' agents the one with fewer
// connections (two random choices), and of that agent its oldest stream: an
// agent that reconnects or probes for new servers (upstream's sync-forever)
// opens short-lived duplicate streams that must not attract dials. Needs s.mu.
func leastLoaded(c []*backend) *backend {
	a := c[randIndex(len(c))]
	if len(c) > 1 {
		b := c[randIndex(len(c))]
		if b.agentID != a.agentID && len(b.conns)+b.npending < len(a.conns)+a.npending {
			a = b
		}
	}
	for _, x := range c { // s.backends is in connection order: the first match is the oldest
		if x.agentID == a.agentID {
			return x
		}
	}
	return a
}

func randIndex(n int) int {
	i, err := rand.Int(rand.Reader, big.NewInt(int64(n)))
	if err != nil {
		return 0
	}
	return int(i.Int64())
}

func matchHost(ids wire.Identifiers, host string, addr netip.Addr, isAddr bool) bool {
	if !isAddr {
		for _, h := range ids.Hosts {
			if h == host {
				return true
			}
		}
		return false
	}
	addr = addr.Unmap()
	for _, a := range ids.IPv4 {
		if a == addr {
			return true
		}
	}
	for _, a := range ids.IPv6 {
		if a == addr {
			return true
		}
	}
	for _, p := range ids.CIDRs {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

func closeReq(connID int64) *client.Packet {
	return &client.Packet{Type: client.PacketType_CLOSE_REQ,
		Payload: &client.Packet_CloseRequest{CloseRequest: &client.CloseRequest{ConnectID: connID}}}
}

func dialCls(random int64) *client.Packet {
	return &client.Packet{Type: client.PacketType_DIAL_CLS,
		Payload: &client.Packet_CloseDial{CloseDial: &client.CloseDial{Random: random}}}
}

func dataPkt(connID int64, b []byte) *client.Packet {
	return &client.Packet{Type: client.PacketType_DATA,
		Payload: &client.Packet_Data{Data: &client.Data{ConnectID: connID, Data: b}}}
}

// Package agent is tether's Konnectivity agent: it runs in the node network,
// dials out to one or more Konnectivity servers (/AgentService/Connect, the
// agent is the gRPC client), and dials TCP endpoints on their behalf.
//
// It is wire-compatible with upstream apiserver-network-proxy servers. With a
// tether server it negotiates the conn-streams extension (package wire): each
// tunnelled connection gets its own gRPC stream on the same HTTP/2
// connection, so HTTP/2 flow control applies per connection and one stalled
// reader cannot block the others.
package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
	agentpb "sigs.k8s.io/apiserver-network-proxy/proto/agent"

	"github.com/tether-dev/tether/internal/konnectivity/wire"
)

// Config configures an Agent. Zero values are documented per field.
type Config struct {
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Servers are the proxy servers' agent addresses (host:port). The agent
	// connects to every one; with a single (load-balanced) address it opens
	// as many connections as the servers' serverCount. Required.
	Servers []string
	// TLS is the client TLS configuration (mutual TLS). Required unless
	// InsecureTCP is set.
	TLS *tls.Config
	// InsecureTCP allows plaintext connections to the servers (logs a warning).
	InsecureTCP bool
	// AgentID identifies this agent; "" picks a random ID.
	AgentID string
	// Identifiers are announced as agentIdentifiers for destHost/defaultRoute routing.
	Identifiers wire.Identifiers
	// TokenPath, if set, is a service-account token file sent as a bearer
	// token on every connection (re-read each time, so rotation works).
	TokenPath string
	// SyncInterval is the first reconnect delay; 0 means 1s (upstream default).
	// Reconnects after a working connection drops start at SyncInterval/10.
	SyncInterval time.Duration
	// SyncIntervalCap caps the exponential backoff; 0 means 10s.
	SyncIntervalCap time.Duration
	// KeepaliveTime is the gRPC ping interval; 0 means 1h (upstream default).
	KeepaliveTime time.Duration
	// DialTimeout bounds endpoint dials; 0 means 10s.
	DialTimeout time.Duration
	// MaxConns bounds open endpoint connections; 0 means 10000.
	MaxConns int
	// MaxPendingDials bounds endpoint dials in flight; 0 means 1000.
	MaxPendingDials int
	// AllowedDestinations, if non-empty, restricts endpoint dials to these
	// prefixes; names are resolved first and the checked address is dialled.
	AllowedDestinations []netip.Prefix
	// DisableConnStreams turns the tether extension off (upstream behaviour).
	DisableConnStreams bool
	// DisableRawConns turns off raw connections (tether extension: each
	// tunnelled connection on its own TLS connection to the server).
	DisableRawConns bool
	// HealthAddr serves /healthz, /readyz and /metrics; "" disables.
	HealthAddr string
	// AdminAddr serves /metrics; "" disables.
	AdminAddr string
	// EnableProfiling serves net/http/pprof on the admin listener.
	EnableProfiling bool
	// Registerer receives metrics; nil uses a private registry.
	Registerer prometheus.Registerer
	// DialEndpoint dials endpoints; nil uses net.Dialer. Only "tcp" is ever requested.
	DialEndpoint func(ctx context.Context, network, addr string) (net.Conn, error)
	// Ready, if set, is called with the health and admin addresses once they listen.
	Ready func(health, admin net.Addr)
	// ServerCount, if set, counts the servers from their leases (upstream's
	// --count-server-leases); see package leases.
	ServerCount func() int
	// ServerCountSource combines lease and response counts: "default" uses
	// the leases when ServerCount is set, "max" takes the larger.
	ServerCountSource string
	// Drain, when closed, makes the agent send DRAIN to every server (now
	// and on later connections): servers stop routing new dials to it while
	// established connections continue.
	Drain <-chan struct{}
}

// Agent is a Konnectivity agent.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	m      *metrics
	gather prometheus.Gatherer

	connID atomic.Int64

	mu        sync.Mutex
	servers   map[string]*session // by server ID
	nconns    int
	npending  int
	respCount int // largest serverCount a server announced
	slotCount int

	rawSessions tls.ClientSessionCache // TLS resumption for raw connections
}

// New validates cfg and returns an Agent.
func New(cfg Config) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Servers) == 0 {
		return nil, errors.New("konnectivity agent: no proxy server address")
	}
	for _, s := range cfg.Servers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return nil, fmt.Errorf("konnectivity agent: server address %q: %w", s, err)
		}
	}
	if cfg.TLS == nil && !cfg.InsecureTCP {
		return nil, errors.New("konnectivity agent: TLS configuration required (or --insecure-tcp)")
	}
	if cfg.AgentID == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		cfg.AgentID = hex.EncodeToString(b[:])
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = time.Second
	}
	switch cfg.ServerCountSource {
	case "", "default", "max":
	default:
		return nil, fmt.Errorf("konnectivity agent: server count source %q: want default or max", cfg.ServerCountSource)
	}
	if cfg.SyncIntervalCap <= 0 {
		cfg.SyncIntervalCap = 10 * time.Second
	}
	if cfg.SyncIntervalCap < cfg.SyncInterval {
		cfg.SyncIntervalCap = cfg.SyncInterval
	}
	if cfg.KeepaliveTime <= 0 {
		cfg.KeepaliveTime = time.Hour
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 10000
	}
	if cfg.MaxPendingDials <= 0 {
		cfg.MaxPendingDials = 1000
	}
	if cfg.DialEndpoint == nil {
		d := &net.Dialer{}
		cfg.DialEndpoint = d.DialContext
	}
	var gather prometheus.Gatherer
	if cfg.Registerer == nil {
		r := prometheus.NewRegistry()
		cfg.Registerer, gather = r, r
	} else if g, ok := cfg.Registerer.(prometheus.Gatherer); ok {
		gather = g
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("konnectivity agent metrics: %w", err)
	}
	return &Agent{cfg: cfg, log: cfg.Logger.With("agentID", cfg.AgentID), m: m, gather: gather, servers: map[string]*session{},
		rawSessions: tls.NewLRUClientSessionCache(64)}, nil
}

// ID returns the agent ID.
func (a *Agent) ID() string { return a.cfg.AgentID }

// ConnectedServers returns the IDs of the servers this agent is connected to.
func (a *Agent) ConnectedServers() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for id := range a.servers {
		out = append(out, id)
	}
	return out
}

// OpenConns returns the number of open endpoint connections.
func (a *Agent) OpenConns() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nconns
}

// Run connects to the servers and serves until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	if a.cfg.InsecureTCP && a.cfg.TLS == nil {
		a.log.Warn("INSECURE: connecting to konnectivity servers without TLS")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var httpServers []*http.Server
	var health, admin net.Addr
	for _, hp := range []struct {
		addr string
		dst  *net.Addr
		h    http.Handler
	}{{a.cfg.HealthAddr, &health, a.healthMux()}, {a.cfg.AdminAddr, &admin, a.metricsMux()}} {
		if hp.addr == "" {
			continue
		}
		var lc net.ListenConfig
		l, err := lc.Listen(ctx, "tcp", hp.addr)
		if err != nil {
			for _, hs := range httpServers {
				_ = hs.Close()
			}
			wg.Wait()
			return fmt.Errorf("konnectivity agent: listen %s: %w", hp.addr, err)
		}
		*hp.dst = l.Addr()
		hs := &http.Server{Handler: hp.h, ReadHeaderTimeout: 10 * time.Second}
		httpServers = append(httpServers, hs)
		wg.Go(func() { _ = hs.Serve(l) })
	}
	if a.cfg.Ready != nil {
		a.cfg.Ready(health, admin)
	}
	a.m.knownServerCount.Set(float64(max(len(a.cfg.Servers), a.serverCount())))
	// One slot per address; more for a single load-balanced address when the
	// servers announce (or their leases show) a larger count.
	grow := make(chan struct{}, 1)
	var recount <-chan time.Time
	if a.cfg.ServerCount != nil {
		t := time.NewTicker(a.cfg.SyncInterval)
		defer t.Stop()
		recount = t.C
	}
	start := func() {
		a.mu.Lock()
		i := a.slotCount
		a.slotCount++
		a.mu.Unlock()
		addr := a.cfg.Servers[i%len(a.cfg.Servers)]
		wg.Go(func() { a.slot(ctx, addr, grow) })
	}
	for range a.cfg.Servers {
		start()
	}
	for {
		select {
		case <-ctx.Done():
			for _, hs := range httpServers {
				_ = hs.Close()
			}
			wg.Wait()
			return nil
		case <-recount:
		case <-grow:
		}
		n := a.serverCount()
		a.m.knownServerCount.Set(float64(max(len(a.cfg.Servers), n)))
		if len(a.cfg.Servers) != 1 {
			continue
		}
		a.mu.Lock()
		need := n - a.slotCount
		a.mu.Unlock()
		for ; need > 0; need-- {
			start()
		}
	}
}

// serverCount is the number of servers the agent should be connected to,
// combining the servers' announced serverCount and, if configured, their
// leases the way upstream's --server-count-source does.
func (a *Agent) serverCount() int {
	a.mu.Lock()
	resp := a.respCount
	a.mu.Unlock()
	if a.cfg.ServerCount == nil {
		return max(resp, 1)
	}
	n := a.cfg.ServerCount()
	if a.cfg.ServerCountSource == "max" {
		n = max(n, resp)
	}
	return max(n, 1)
}

// slot keeps one server connection up, with capped exponential backoff and jitter.
func (a *Agent) slot(ctx context.Context, addr string, grow chan<- struct{}) {
	b := backoff{base: a.cfg.SyncInterval, cap: a.cfg.SyncIntervalCap}
	for ctx.Err() == nil {
		started := time.Now()
		ok, err := a.session(ctx, addr, grow)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			a.log.Debug("server connection ended", "server", addr, "err", err)
		}
		wait := jitter(b.next(ok, time.Since(started), time.Now()))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// recentLoss is how long after a working connection dropped the agent keeps
// retrying at least every SyncInterval (a restarted or briefly unreachable
// server is picked up within about SyncInterval of coming back) before the
// backoff may grow to SyncIntervalCap.
const recentLoss = 30 * time.Second

// backoff computes the waits between connection attempts of one slot:
// exponential from base up to cap; after a working connection dropped, the
// first retry comes after base/10 (base if it lasted under a second: a
// flapping server is not hammered) and, for recentLoss, the waits stay at
// most base.
type backoff struct {
	base, cap time.Duration
	delay     time.Duration
	lostAt    time.Time
}

// next returns the wait after an attempt; ok reports whether the attempt
// connected and lasted how long it ran.
func (b *backoff) next(ok bool, lasted time.Duration, now time.Time) time.Duration {
	if b.delay == 0 {
		b.delay = b.base
	}
	if ok {
		b.delay, b.lostAt = b.base/10, now
		if lasted < time.Second {
			b.delay = b.base
		}
	}
	limit := b.cap
	if !b.lostAt.IsZero() && now.Sub(b.lostAt) < recentLoss {
		limit = min(b.base, b.cap)
	}
	d := min(b.delay, limit)
	b.delay = min(b.delay*2, limit)
	return d
}

// jitter returns d scaled by a random factor in [0.75, 1.25).
func jitter(d time.Duration) time.Duration {
	n, err := rand.Int(rand.Reader, big.NewInt(1000))
	if err != nil {
		return d
	}
	return d*3/4 + time.Duration(int64(d)/2*n.Int64()/1000)
}

func (a *Agent) dialOptions() []grpc.DialOption {
	creds := insecure.NewCredentials()
	if a.cfg.TLS != nil {
		creds = credentials.NewTLS(a.cfg.TLS)
	}
	return []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithInitialWindowSize(1 << 20),
		grpc.WithInitialConnWindowSize(16 << 20),
		grpc.WithReadBufferSize(256 << 10),
		grpc.WithWriteBufferSize(256 << 10),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(wire.MaxMessageSize)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: a.cfg.KeepaliveTime, PermitWithoutStream: true}),
	}
}

func (a *Agent) metadata() (metadata.MD, error) {
	md := metadata.Pairs(wire.MDAgentID, a.cfg.AgentID)
	if !a.cfg.Identifiers.Empty() {
		md.Set(wire.MDAgentIdentifiers, a.cfg.Identifiers.Encode())
	}
	var caps []string
	if !a.cfg.DisableConnStreams {
		caps = append(caps, wire.CapConnStreams)
	}
	if !a.cfg.DisableRawConns && a.cfg.TLS != nil {
		caps = append(caps, wire.CapRawConns)
	}
	if len(caps) > 0 {
		md.Set(wire.MDCapabilities, strings.Join(caps, ","))
	}
	if a.cfg.TokenPath != "" {
		tok, err := os.ReadFile(a.cfg.TokenPath)
		if err != nil {
			return nil, fmt.Errorf("read service account token: %w", err)
		}
		md.Set(wire.MDAuthorization, wire.BearerPrefix+strings.TrimSpace(string(tok)))
	}
	return md, nil
}

func (a *Agent) healthMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if len(a.ConnectedServers()) == 0 {
			http.Error(w, "not connected to any konnectivity server", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	mux.Handle("/metrics", a.metricsHandler())
	return mux
}

func (a *Agent) metricsMux() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", a.metricsHandler())
	if a.cfg.EnableProfiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

func (a *Agent) metricsHandler() http.Handler {
	if a.gather == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(a.gather, promhttp.HandlerOpts{})
}

// checkDestination resolves addr and applies the allow-list; it returns the
// address to dial (the checked IP when an allow-list is configured).
func (a *Agent) checkDestination(ctx context.Context, addr string) (string, error) {
	host, port, err := wire.SplitDialAddress(addr)
	if err != nil {
		return "", err
	}
	if len(a.cfg.AllowedDestinations) == 0 {
		return addr, nil
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip.Unmap()}
	} else {
		res, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return "", fmt.Errorf("resolve %s: %w", host, err)
		}
		for _, r := range res {
			ips = append(ips, r.Unmap())
		}
	}
	for _, ip := range ips {
		for _, p := range a.cfg.AllowedDestinations {
			if p.Contains(ip) {
				return net.JoinHostPort(ip.String(), strconv.Itoa(int(port))), nil
			}
		}
	}
	return "", fmt.Errorf("destination %s not allowed by this agent", addr)
}

func closeResp(connID int64, err error) *client.Packet {
	r := &client.CloseResponse{ConnectID: connID}
	if err != nil {
		r.Error = err.Error()
	}
	return &client.Packet{Type: client.PacketType_CLOSE_RSP, Payload: &client.Packet_CloseResponse{CloseResponse: r}}
}

func dialResp(random, connID int64, err error) *client.Packet {
	r := &client.DialResponse{Random: random, ConnectID: connID}
	if err != nil {
		r.Error = err.Error()
		r.ConnectID = 0
	}
	return &client.Packet{Type: client.PacketType_DIAL_RSP, Payload: &client.Packet_DialResponse{DialResponse: r}}
}

func dataPkt(connID int64, b []byte) *client.Packet {
	return &client.Packet{Type: client.PacketType_DATA, Payload: &client.Packet_Data{Data: &client.Data{ConnectID: connID, Data: b}}}
}

var _ = agentpb.NewAgentServiceClient

// Gatherer returns the registry holding the agent's metrics, or nil if
// Config.Registerer was not a Gatherer.
func (a *Agent) Gatherer() prometheus.Gatherer { return a.gather }

package konnectivity_test

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	upclient "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
	clientpb "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
	upagent "sigs.k8s.io/apiserver-network-proxy/pkg/agent"
	upserver "sigs.k8s.io/apiserver-network-proxy/pkg/server"
	"sigs.k8s.io/apiserver-network-proxy/pkg/server/proxystrategies"
	agentpb "sigs.k8s.io/apiserver-network-proxy/proto/agent"

	"github.com/tether-dev/tether/internal/konnectivity/agent"
	"github.com/tether-dev/tether/internal/konnectivity/client"
	"github.com/tether-dev/tether/internal/konnectivity/konnectivitytest"
	"github.com/tether-dev/tether/internal/konnectivity/server"
)

// env is one server (ours or upstream) with its listeners.
type env struct {
	pki       *konnectivitytest.PKI
	uds       string // frontend unix socket
	front     string // frontend mTLS TCP address
	agentAddr string // agent mTLS address
	mode      string
	ours      *server.Server
	up        *upserver.ProxyServer
	stop      func()
}

type serverOpts struct {
	mode       string
	cfg        server.Config
	serverID   string
	serverCnt  int
	noFrontTCP bool
}

// startOurServer starts tether's server with a UDS and an mTLS TCP frontend
// and an mTLS agent listener.
func startOurServer(t testing.TB, pki *konnectivitytest.PKI, o serverOpts) *env {
	t.Helper()
	if o.mode == "" {
		o.mode = server.ModeGRPC
	}
	cfg := o.cfg
	if os.Getenv("KONN_TEST_LOG") != "" && cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if o.serverID != "" {
		cfg.ServerID = o.serverID
	}
	if o.serverCnt != 0 {
		cfg.ServerCount = o.serverCnt
	}
	s, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{pki: pki, mode: o.mode, ours: s, uds: filepath.Join(shortTempDir(t), "k.sock")}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan server.Addrs, 1)
	done := make(chan error, 1)
	lc := server.ListenConfig{Mode: o.mode, UDSName: e.uds, AgentAddr: "127.0.0.1:0", AgentTLS: pki.ServerTLS(t),
		Ready: func(a server.Addrs) { ready <- a }}
	if !o.noFrontTCP {
		lc.FrontendAddr, lc.FrontendTLS = "127.0.0.1:0", pki.ServerTLS(t)
	}
	go func() { done <- s.Run(ctx, lc) }()
	select {
	case a := <-ready:
		e.agentAddr = a.Agent.String()
		if a.Frontend != nil {
			e.front = a.Frontend.String()
		}
	case err := <-done:
		cancel()
		t.Fatal(err)
	}
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("server Run: %v", err)
			}
		})
	}
	t.Cleanup(e.stop)
	return e
}

// shortTempDir returns a temp dir with a path short enough for a Unix socket.
func shortTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "kn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

// startUpstreamServer runs upstream's ProxyServer in-process.
func startUpstreamServer(t testing.TB, pki *konnectivitytest.PKI, mode string) *env {
	t.Helper()
	ps := upserver.NewProxyServer("upstream-"+t.Name(), []proxystrategies.ProxyStrategy{proxystrategies.ProxyStrategyDefault}, 1, &upserver.AgentTokenAuthenticationOptions{}, 150)
	e := &env{pki: pki, mode: mode, up: ps, uds: filepath.Join(shortTempDir(t), "u.sock")}
	al, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.agentAddr = al.Addr().String()
	ags := grpc.NewServer(grpc.Creds(credentials.NewTLS(pki.ServerTLS(t))))
	agentpb.RegisterAgentServiceServer(ags, ps)
	var wg sync.WaitGroup
	wg.Go(func() { _ = ags.Serve(al) })
	ul, err := net.Listen("unix", e.uds)
	if err != nil {
		t.Fatal(err)
	}
	fl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.front = fl.Addr().String()
	ftls := pki.ServerTLS(t)
	tfl := tls.NewListener(fl, ftls)
	var stops []func()
	if mode == server.ModeGRPC {
		fs := grpc.NewServer()
		clientpb.RegisterProxyServiceServer(fs, ps)
		wg.Go(func() { _ = fs.Serve(ul) })
		fs2 := grpc.NewServer(grpc.Creds(credentials.NewTLS(ftls)))
		clientpb.RegisterProxyServiceServer(fs2, ps)
		wg.Go(func() { _ = fs2.Serve(fl) })
		stops = append(stops, fs.Stop, fs2.Stop)
	} else {
		hs := &http.Server{Handler: &upserver.Tunnel{Server: ps}}
		hs2 := &http.Server{Handler: &upserver.Tunnel{Server: ps}}
		wg.Go(func() { _ = hs.Serve(ul) })
		wg.Go(func() { _ = hs2.Serve(tfl) })
		stops = append(stops, func() { _ = hs.Close() }, func() { _ = hs2.Close() })
	}
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			ags.Stop()
			for _, s := range stops {
				s()
			}
			wg.Wait()
		})
	}
	t.Cleanup(e.stop)
	return e
}

func (e *env) readyAgents() int {
	if e.ours != nil {
		return e.ours.ReadyAgents()
	}
	if ok, _ := e.up.Readiness.Ready(); !ok {
		return 0
	}
	return 1
}

// runningAgent is an agent (ours or upstream) that can be stopped.
type runningAgent struct {
	ours *agent.Agent
	stop func()
}

type agentOpts struct {
	id        string
	servers   []string
	cfg       agent.Config
	noWait    bool
	upstream  bool
	cn        string
	waitCount int
	pki       *konnectivitytest.PKI // when e is nil
}

func startOurAgent(t testing.TB, e *env, o agentOpts) *runningAgent {
	t.Helper()
	cfg := o.cfg
	cfg.Servers = o.servers
	if len(cfg.Servers) == 0 {
		cfg.Servers = []string{e.agentAddr}
	}
	if cfg.AgentID == "" {
		cfg.AgentID = o.id
	}
	cn := o.cn
	if cn == "" {
		cn = "agent"
	}
	if cfg.TLS == nil {
		pki := o.pki
		if pki == nil {
			pki = e.pki
		}
		cfg.TLS = pki.ClientTLS(t, cn)
	}
	if cfg.SyncInterval == 0 {
		cfg.SyncInterval = 50 * time.Millisecond
		cfg.SyncIntervalCap = 500 * time.Millisecond
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	before := 0
	if e != nil {
		before = e.readyAgents()
	}
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	ra := &runningAgent{ours: a, stop: func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent Run: %v", err)
			}
		})
	}}
	t.Cleanup(ra.stop)
	if !o.noWait {
		want := len(cfg.Servers)
		if o.waitCount > 0 {
			want = o.waitCount
		}
		konnectivitytest.Eventually(t, 10*time.Second, "agent connected", func() bool { return len(a.ConnectedServers()) >= want })
		if e != nil && e.ours != nil {
			konnectivitytest.Eventually(t, 10*time.Second, "server sees agent", func() bool { return e.readyAgents() > before })
		}
	}
	return ra
}

func startUpstreamAgent(t testing.TB, e *env, id string) *runningAgent {
	t.Helper()
	stopCh := make(chan struct{})
	drainCh := make(chan struct{})
	cc := &upagent.ClientSetConfig{
		Address: e.agentAddr, AgentID: id, SyncInterval: 50 * time.Millisecond, ProbeInterval: time.Second,
		SyncIntervalCap: 500 * time.Millisecond, XfrChannelSize: 150,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(e.pki.ClientTLS(t, "upstream-agent")))},
	}
	before := e.readyAgents()
	cs := cc.NewAgentClientSet(drainCh, stopCh)
	cs.SetServerCounter(upagent.NewResponseBasedCounter(cs))
	cs.Serve()
	var once sync.Once
	ra := &runningAgent{stop: func() { once.Do(func() { close(stopCh) }) }}
	t.Cleanup(ra.stop)
	konnectivitytest.Eventually(t, 10*time.Second, "upstream agent connected", func() bool { return cs.HealthyClientsCount() > 0 })
	if e.ours != nil {
		konnectivitytest.Eventually(t, 10*time.Second, "server sees upstream agent", func() bool { return e.readyAgents() > before })
	}
	return ra
}

// dialer is a frontend: ours (gRPC / HTTP CONNECT, UDS / mTLS) or upstream konnectivity-client.
type dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

type frontendKind struct {
	name     string
	upstream bool // upstream konnectivity-client (gRPC only)
	tcp      bool // mTLS TCP rather than UDS
}

func newDialer(t testing.TB, e *env, k frontendKind) dialer {
	t.Helper()
	if k.upstream {
		return upstreamDialer{e: e, t: t, tcp: k.tcp}
	}
	cfg := client.Config{Mode: e.mode, UDSName: e.uds}
	if k.tcp {
		cfg = client.Config{Mode: e.mode, Address: e.front, TLS: e.pki.ClientTLS(t, "frontend")}
	}
	d, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// upstreamDialer makes one single-use upstream tunnel per dial, as kube-apiserver does.
type upstreamDialer struct {
	e   *env
	t   testing.TB
	tcp bool
}

func (u upstreamDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var opts []grpc.DialOption
	target := "unix://" + u.e.uds
	if u.tcp {
		target = u.e.front
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(u.e.pki.ClientTLS(u.t, "frontend"))))
	} else {
		opts = append(opts, grpc.WithTransportCredentials(insecureCreds()))
	}
	tun, err := upclient.CreateSingleUseGrpcTunnelWithContext(ctx, context.Background(), target, opts...)
	if err != nil {
		return nil, err
	}
	c, err := tun.DialContext(ctx, network, addr)
	if err != nil {
		return nil, errors.Join(err)
	}
	return c, nil
}

package konnectivity_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/konnectivity/agent"
	"github.com/tether-dev/tether/internal/konnectivity/konnectivitytest"
	"github.com/tether-dev/tether/internal/konnectivity/server"
	"github.com/tether-dev/tether/internal/konnectivity/wire"
)

// TestRawConns: between our HTTP CONNECT server and our agent (mTLS),
// tunnelled connections travel on raw TLS connections; a gRPC-mode server
// does not offer them (conn-streams are faster there); with the extension
// switched off on either side they are not used, and everything still works.
func TestRawConns(t *testing.T) {
	pki := newPKI(t)
	backend := konnectivitytest.NewBackend(t)
	for _, tc := range []struct {
		mode    string
		wantRaw bool
	}{{server.ModeHTTPConnect, true}, {server.ModeGRPC, false}} {
		t.Run(tc.mode, func(t *testing.T) {
			e := startOurServer(t, pki, serverOpts{mode: tc.mode})
			startOurAgent(t, e, agentOpts{id: "a"})
			exercise(t, newDialer(t, e, frontendKind{}), backend.Addr())
			n := e.ours.RawConnsAccepted()
			if tc.wantRaw && n < 3 || !tc.wantRaw && n != 0 {
				t.Fatalf("raw connections accepted: %d (want raw: %v)", n, tc.wantRaw)
			}
		})
	}
	t.Run("agent-disabled", func(t *testing.T) {
		e := startOurServer(t, pki, serverOpts{mode: server.ModeHTTPConnect})
		startOurAgent(t, e, agentOpts{id: "a", cfg: agent.Config{DisableRawConns: true}})
		exercise(t, newDialer(t, e, frontendKind{}), backend.Addr())
		if n := e.ours.RawConnsAccepted(); n != 0 {
			t.Fatalf("raw connections accepted with the agent's extension off: %d", n)
		}
	})
	t.Run("server-disabled", func(t *testing.T) {
		e := startOurServer(t, pki, serverOpts{mode: server.ModeHTTPConnect, cfg: server.Config{DisableRawConns: true}})
		startOurAgent(t, e, agentOpts{id: "a"})
		exercise(t, newDialer(t, e, frontendKind{}), backend.Addr())
		if n := e.ours.RawConnsAccepted(); n != 0 {
			t.Fatalf("raw connections accepted with the server's extension off: %d", n)
		}
	})
}

// TestRawConnOnlyForTheDialingAgent: while a dial is pending at agent a,
// a client with another certificate (same CA) that guesses the dial's
// random is refused; a wrong server ID is refused; garbage is dropped. The
// real agent then completes the dial.
func TestRawConnOnlyForTheDialingAgent(t *testing.T) {
	pki := newPKI(t)
	backend := konnectivitytest.NewBackend(t)
	e := startOurServer(t, pki, serverOpts{serverID: "s1", mode: server.ModeHTTPConnect})
	release := make(chan struct{})
	startOurAgent(t, e, agentOpts{id: "a", cfg: agent.Config{DialEndpoint: func(ctx context.Context, network, addr string) (net.Conn, error) {
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		var d net.Dialer
		return d.DialContext(ctx, network, backend.Addr())
	}}})
	d := newDialer(t, e, frontendKind{})
	type res struct {
		c   net.Conn
		err error
	}
	got := make(chan res, 1)
	go func() {
		c, err := d.DialContext(context.Background(), "tcp", backend.Addr())
		got <- res{c, err}
	}()
	konnectivitytest.Eventually(t, 5*time.Second, "dial pending", func() bool {
		return metricValue(t, e.ours, "konnectivity_network_proxy_server_pending_backend_dials") == 1
	})
	try := func(cn string, h wire.RawHello) byte {
		cfg := pki.ClientTLS(t, cn)
		cfg.NextProtos = []string{wire.ALPNRawConn}
		c, err := tls.Dial("tcp", e.agentAddr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		b, err := h.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		var ans [1]byte
		if _, err := io.ReadFull(c, ans[:]); err != nil {
			return 0xff
		}
		return ans[0]
	}
	for random := int64(1); random <= 4; random++ {
		if a := try("mallory", wire.RawHello{Random: random, ConnID: 1, AgentID: "a", ServerID: "s1"}); a != wire.RawRefused {
			t.Fatalf("another certificate claiming dial %d: answer %d, want refused", random, a)
		}
	}
	// Same certificate CN as the agent but a fresh certificate: refused too
	// (bound to the control stream's certificate).
	if a := try("agent", wire.RawHello{Random: 1, ConnID: 1, AgentID: "a", ServerID: "s1"}); a != wire.RawRefused {
		t.Fatalf("a different certificate with the agent's CN: answer %d, want refused", a)
	}
	// Garbage instead of a hello: the connection is dropped, the server lives.
	cfg := pki.ClientTLS(t, "agent")
	cfg.NextProtos = []string{wire.ALPNRawConn}
	if c, err := tls.Dial("tcp", e.agentAddr, cfg); err == nil {
		_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		_, err := io.ReadAll(c)
		_ = err
		c.Close()
	}
	close(release)
	r := <-got
	if r.err != nil {
		t.Fatalf("the real dial: %v", r.err)
	}
	if err := konnectivitytest.Command(r.c, konnectivitytest.CmdEcho, 0); err != nil {
		t.Fatal(err)
	}
	if err := konnectivitytest.EchoRoundTrip(r.c, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	_ = r.c.Close()
	if n := e.ours.RawConnsAccepted(); n != 1 {
		t.Fatalf("raw connections accepted: %d, want 1 (the real agent's)", n)
	}
}

// TestRawConnFallbackBehindLoadBalancer: behind one round-robin address a
// raw connection may reach the wrong replica; it is refused there and the
// agent falls back to a connection stream, so every dial still works.
func TestRawConnFallbackBehindLoadBalancer(t *testing.T) {
	pki := newPKI(t)
	backend := konnectivitytest.NewBackend(t)
	s1 := startOurServer(t, pki, serverOpts{serverID: "s1", serverCnt: 2, mode: server.ModeHTTPConnect})
	s2 := startOurServer(t, pki, serverOpts{serverID: "s2", serverCnt: 2, mode: server.ModeHTTPConnect})
	lb := konnectivitytest.NewRoundRobinProxy(t, s1.agentAddr, s2.agentAddr)
	startOurAgent(t, nil, agentOpts{pki: pki, id: "a1", servers: []string{lb}, waitCount: 2})
	for _, e := range []*env{s1, s2} {
		konnectivitytest.Eventually(t, 5*time.Second, "server sees the agent", func() bool { return e.ours.ReadyAgents() == 1 })
		for range 3 {
			exercise(t, newDialer(t, e, frontendKind{}), backend.Addr())
		}
	}
}

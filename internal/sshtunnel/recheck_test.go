package sshtunnel

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestEndpointRecheck: a destination allowed only after a refresh (a pod
// CIDR allocated since the last poll) works on the first try; refusals
// re-check at most once per second.
func TestEndpointRecheck(t *testing.T) {
	hub, host := newSigner(t), newSigner(t)
	echo := echoServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var ep *Endpoint
	var checks atomic.Int64
	ep, err = NewEndpoint(EndpointConfig{Listener: ln, HostKey: host, Logger: quietLogger(),
		Recheck: func(context.Context) {
			checks.Add(1)
			ep.SetDestinations(Destinations{IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Ports: []uint16{uint16(echo.Port)}})
		}})
	if err != nil {
		t.Fatal(err)
	}
	ep.SetAuthorizedKeys(hub.PublicKey())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ep.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	nodes := &fakeNodes{}
	nodes.set(testNode("node-a", ln.Addr().(*net.TCPAddr).Port, host.PublicKey()))
	tun := startTunneler(t, Config{Signer: hub, Nodes: nodes.list})
	dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
	defer dcancel()
	c, err := tun.DialContext(dctx, "tcp", echo.String())
	if err != nil {
		t.Fatalf("dial after recheck: %v", err)
	}
	echoOnce(t, c, "rechecked")
	c.Close()
	if n := checks.Load(); n != 1 {
		t.Fatalf("%d rechecks, want 1", n)
	}
	// A forbidden port: refused; the recheck just ran, so not again.
	if _, err := tun.DialContext(dctx, "tcp", net.JoinHostPort("127.0.0.1", "1")); err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Fatalf("forbidden port: %v", err)
	}
	if n := checks.Load(); n != 1 {
		t.Fatalf("%d rechecks within a second, want 1", n)
	}
}

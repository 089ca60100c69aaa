package konnectivity_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/konnectivity/client"
	"github.com/tether-dev/tether/internal/konnectivity/konnectivitytest"
	"github.com/tether-dev/tether/internal/konnectivity/server"
	"github.com/tether-dev/tether/internal/tcplb"
)

// startLB runs internal/tcplb in front of backends and returns its address.
func startLB(t *testing.T, backends ...string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lb, err := tcplb.New(tcplb.Config{Listener: ln, Backends: backends})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- lb.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("tcplb: %v", err)
		}
	})
	return ln.Addr().String()
}

// Behind one load-balanced address, a server without an agent for the
// destination (e.g. just restarted, agents not back yet) answers 503; the
// HTTP CONNECT dialer tries again and the load balancer sends the retry to
// another server.
func TestHTTPConnectRetriesOtherServerBehindLB(t *testing.T) {
	pki, err := konnectivitytest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	withAgent := startOurServer(t, pki, serverOpts{mode: server.ModeHTTPConnect, serverID: "with-agent"})
	empty := startOurServer(t, pki, serverOpts{mode: server.ModeHTTPConnect, serverID: "empty"})
	startOurAgent(t, withAgent, agentOpts{id: "a1"})
	be := konnectivitytest.NewBackend(t)
	lb := startLB(t, withAgent.front, empty.front)

	dial := func(attempts int) (ok, failed int, lastErr error) {
		d, err := client.New(client.Config{Mode: client.ModeHTTPConnect, Address: lb, TLS: pki.ClientTLS(t, "frontend"),
			DialAttempts: attempts})
		if err != nil {
			t.Fatal(err)
		}
		for range 10 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, err := d.DialContext(ctx, "tcp", be.Addr())
			cancel()
			if err != nil {
				failed++
				lastErr = err
				continue
			}
			if err := konnectivitytest.Command(c, konnectivitytest.CmdEcho, 0); err == nil {
				err = konnectivitytest.EchoRoundTrip(c, []byte("hello"))
			}
			c.Close()
			if err != nil {
				t.Fatalf("echo: %v", err)
			}
			ok++
		}
		return ok, failed, lastErr
	}
	// Without retries, round robin sends every other dial to the empty server.
	if ok, failed, err := dial(1); failed == 0 || ok == 0 {
		t.Fatalf("DialAttempts=1: %d ok, %d failed (%v); want both (the LB alternates)", ok, failed, err)
	}
	if ok, failed, err := dial(0); failed != 0 {
		t.Fatalf("default attempts: %d ok, %d failed, last: %v", ok, failed, err)
	}
}

// A proxy that disappears (killed, path cut) behind a load balancer leaves
// the client a bare TCP end with no TLS close_notify, which crypto/tls reads
// as io.EOF; the dialer's connection turns it into ErrReset, while a normal
// end of a tunnel stays io.EOF.
func TestHTTPConnectProxyGoneIsNotEOF(t *testing.T) {
	pki, err := konnectivitytest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	e := startOurServer(t, pki, serverOpts{mode: server.ModeHTTPConnect})
	startOurAgent(t, e, agentOpts{id: "a1"})
	be := konnectivitytest.NewBackend(t)
	path := konnectivitytest.NewProxy(t, e.front) // the path that will be cut
	lb := startLB(t, path.Addr())
	d, err := client.New(client.Config{Mode: client.ModeHTTPConnect, Address: lb, TLS: pki.ClientTLS(t, "frontend")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// A normal end: the backend sends 1 MiB and closes → all bytes, then io.EOF.
	c, err := d.DialContext(ctx, "tcp", be.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if err := konnectivitytest.Command(c, konnectivitytest.CmdDownload, 1<<20); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, c)
	c.Close()
	if err != nil || n != 1<<20 {
		t.Fatalf("download: %d bytes, %v; want 1 MiB and a clean end", n, err)
	}

	// The path dies while the tunnel is idle (at a TLS record boundary):
	// closed with FIN (a killed process with nothing unread) or reset.
	for _, cut := range []struct {
		name string
		do   func()
	}{{"fin", path.CloseAll}, {"reset", path.Kill}} {
		c, err = d.DialContext(ctx, "tcp", be.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if err := konnectivitytest.Command(c, konnectivitytest.CmdEcho, 0); err != nil {
			t.Fatal(err)
		}
		if err := konnectivitytest.EchoRoundTrip(c, []byte("before the cut")); err != nil {
			t.Fatal(err)
		}
		cut.do()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 10))
		c.Close()
		if err == nil || errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s: read after the proxy went away: %v; want an error, not EOF", cut.name, err)
		}
		if cut.name == "fin" && !errors.Is(err, client.ErrReset) {
			t.Fatalf("fin: read after the proxy went away: %v; want an error wrapping client.ErrReset", err)
		}
	}
}

// A gRPC frontend behind a load balancer: the path to its server is cut and
// the very next dial must still work — a stream that fails Unavailable
// before DIAL_RSP is retried once gRPC has reconnected (through the balancer,
// possibly to the other server).
func TestGRPCDialRightAfterServerLost(t *testing.T) {
	pki, err := konnectivitytest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	a := startOurServer(t, pki, serverOpts{mode: server.ModeGRPC, serverID: "a", serverCnt: 2})
	b := startOurServer(t, pki, serverOpts{mode: server.ModeGRPC, serverID: "b", serverCnt: 2})
	startOurAgent(t, a, agentOpts{id: "a1", servers: []string{a.agentAddr, b.agentAddr}})
	be := konnectivitytest.NewBackend(t)
	path := konnectivitytest.NewProxy(t, a.front)
	lb := startLB(t, path.Addr(), b.front)
	d, err := client.New(client.Config{Mode: client.ModeGRPC, Address: lb, TLS: pki.ClientTLS(t, "frontend")})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	echo := func(what string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", be.Addr())
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer c.Close()
		if err := konnectivitytest.Command(c, konnectivitytest.CmdEcho, 0); err != nil {
			t.Fatal(err)
		}
		if err := konnectivitytest.EchoRoundTrip(c, []byte("hello")); err != nil {
			t.Fatalf("%s: echo: %v", what, err)
		}
	}
	for i := range 10 {
		echo("before the cut")
		path.Kill()
		echo("right after the cut " + string(rune('0'+i)))
	}
}

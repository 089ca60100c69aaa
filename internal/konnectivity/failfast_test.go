package konnectivity_test

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/konnectivity/agent"
	"github.com/tether-dev/tether/internal/konnectivity/konnectivitytest"
	"github.com/tether-dev/tether/internal/konnectivity/server"
)

// The ≤1 s bound is asserted with a 1 s wait per case: a failure mode here is
// "never fails" (upstream waits for the client's own 30 s timeout), not slowness.
const failFast = time.Second

func TestPendingDialFailsWhenAgentDisconnects(t *testing.T) {
	pki, err := konnectivitytest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mode string
		tcp  bool
	}{
		{"grpc-uds", server.ModeGRPC, false},
		{"grpc-mtls", server.ModeGRPC, true},
		{"http-connect-uds", server.ModeHTTPConnect, false},
		{"http-connect-mtls", server.ModeHTTPConnect, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startOurServer(t, pki, serverOpts{mode: tc.mode})
			dialing := make(chan struct{}, 1)
			a := startOurAgent(t, e, agentOpts{id: "a1", cfg: agent.Config{
				DialEndpoint: func(ctx context.Context, _, _ string) (net.Conn, error) {
					dialing <- struct{}{}
					<-ctx.Done() // an endpoint that never answers
					return nil, ctx.Err()
				}}})
			d := newDialer(t, e, frontendKind{tcp: tc.tcp})
			errc := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				c, err := d.DialContext(ctx, "tcp", "10.0.0.1:80")
				if c != nil {
					_ = c.Close()
				}
				errc <- err
			}()
			<-dialing
			a.stop()
			select {
			case err := <-errc:
				if err == nil {
					t.Fatal("dial succeeded after agent disconnected")
				}
				t.Logf("dial failed as expected: %v", err)
			case <-time.After(failFast):
				t.Fatal("pending dial not failed within 1s of agent disconnect")
			}
			konnectivitytest.Eventually(t, 5*time.Second, "server bookkeeping empty", func() bool {
				st := e.ours.Stats()
				return st.Pending == 0 && st.Established == 0
			})
		})
	}
}

func TestEstablishedConnFailsWithErrorWhenAgentDisconnects(t *testing.T) {
	pki, err := konnectivitytest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	backend := konnectivitytest.NewBackend(t)
	for _, tc := range []struct {
		name string
		mode string
		tcp  bool
	}{
		{"grpc-uds", server.ModeGRPC, false},
		{"grpc-mtls", server.ModeGRPC, true},
		{"http-connect-mtls", server.ModeHTTPConnect, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startOurServer(t, pki, serverOpts{mode: tc.mode})
			a := startOurAgent(t, e, agentOpts{id: "a1"})
			d := newDialer(t, e, frontendKind{tcp: tc.tcp})
			c, err := d.DialContext(context.Background(), "tcp", backend.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// A long download, partly read.
			if err := konnectivitytest.Command(c, konnectivitytest.CmdDownload, 1<<40); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
				t.Fatal(err)
			}
			a.stop()
			errc := make(chan error, 1)
			go func() {
				_, err := io.Copy(io.Discard, c)
				if err == nil {
					err = io.EOF // io.Copy reports a clean EOF as nil
				}
				errc <- err
			}()
			select {
			case err := <-errc:
				if errors.Is(err, io.EOF) {
					t.Fatal("killed agent looked like a clean EOF: truncated transfer would look complete")
				}
				t.Logf("read failed as expected: %v", err)
			case <-time.After(failFast):
				t.Fatal("established connection not failed within 1s of agent disconnect")
			}
		})
	}
}

func TestEndpointResetReachesClientAsError(t *testing.T) {
	pki, err := konnectivitytest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	backend := konnectivitytest.NewBackend(t)
	// gRPC mode carries the connection on a conn-stream, HTTP CONNECT on a
	// raw connection: a reset must surface as an error on both. (HTTP
	// CONNECT uses the mTLS TCP frontend: a Unix socket cannot carry a reset.)
	for _, mode := range []string{server.ModeGRPC, server.ModeHTTPConnect} {
		t.Run(mode, func(t *testing.T) {
			e := startOurServer(t, pki, serverOpts{mode: mode})
			startOurAgent(t, e, agentOpts{id: "a1"})
			d := newDialer(t, e, frontendKind{tcp: mode == server.ModeHTTPConnect})
			c, err := d.DialContext(context.Background(), "tcp", backend.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := konnectivitytest.Command(c, konnectivitytest.CmdReset, 4<<20); err != nil {
				t.Fatal(err)
			}
			n, err := io.Copy(io.Discard, c)
			if err == nil {
				t.Fatalf("reset endpoint ended cleanly after %d bytes", n)
			}
			t.Logf("after %d bytes: %v", n, err)
		})
	}
}

// TestAgentKilledMidTransfer cuts the agent's connection without letting the
// agent say anything (a killed process, a dead path): the client must see an
// error within 1 s, not a clean EOF, and the endpoint connection must go.
func TestAgentKilledMidTransfer(t *testing.T) {
	pki := newPKI(t)
	backend := konnectivitytest.NewBackend(t)
	e := startOurServer(t, pki, serverOpts{})
	path := konnectivitytest.NewProxy(t, e.agentAddr)
	a := startOurAgent(t, e, agentOpts{id: "a1", servers: []string{path.Addr()}, cfg: agent.Config{SyncInterval: time.Hour}})
	d := newDialer(t, e, frontendKind{})
	c, err := d.DialContext(context.Background(), "tcp", backend.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := konnectivitytest.Command(c, konnectivitytest.CmdDownload, 1<<40); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	path.Kill()
	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, c)
		if err == nil {
			err = io.EOF
		}
		errc <- err
	}()
	select {
	case err := <-errc:
		if errors.Is(err, io.EOF) {
			t.Fatal("killed agent looked like a clean EOF")
		}
		t.Logf("read failed as expected: %v", err)
	case <-time.After(failFast):
		t.Fatal("connection not failed within 1s of the agent's death")
	}
	konnectivitytest.Eventually(t, 10*time.Second, "agent-side endpoint connection closed", func() bool {
		return a.ours.OpenConns() == 0 && backend.Conns() == 0
	})
}

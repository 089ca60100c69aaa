package konnectivity_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/konnectivity/konnectivitytest"
	"github.com/tether-dev/tether/internal/konnectivity/server"
)

// exercise dials the backend through d: an echo round trip, a 1 MiB
// download and a 1 MiB upload.
func exercise(t *testing.T, d dialer, backend string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", backend)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if err := konnectivitytest.Command(c, konnectivitytest.CmdEcho, 0); err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 200<<10)
	_, _ = rand.Read(msg)
	if err := konnectivitytest.EchoRoundTrip(c, msg); err != nil {
		t.Fatalf("echo: %v", err)
	}
	_ = c.Close()

	c, err = d.DialContext(ctx, "tcp", backend)
	if err != nil {
		t.Fatalf("dial 2: %v", err)
	}
	const n = 1 << 20
	if err := konnectivitytest.Command(c, konnectivitytest.CmdDownload, n); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || len(got) != n || !bytes.Equal(got[:16], make([]byte, 16)) {
		t.Fatalf("download: %d bytes, %v", len(got), err)
	}
	_ = c.Close()

	c, err = d.DialContext(ctx, "tcp", backend)
	if err != nil {
		t.Fatalf("dial 3: %v", err)
	}
	if err := konnectivitytest.Command(c, konnectivitytest.CmdUpload, n); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 1)
	if _, err := io.ReadFull(c, ack); err != nil {
		t.Fatalf("upload ack: %v", err)
	}
	_ = c.Close()
}

func TestInteropMatrix(t *testing.T) {
	pki, err := konnectivitytest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	backend := konnectivitytest.NewBackend(t)
	fronts := []frontendKind{
		{name: "ours-uds"},
		{name: "ours-mtls", tcp: true},
		{name: "upstream-client-uds", upstream: true},
		{name: "upstream-client-mtls", upstream: true, tcp: true},
	}
	for _, tc := range []struct {
		name           string
		upServer       bool
		upAgent        bool
		mode           string
		upstreamClient bool
	}{
		{name: "ours+ours/grpc", mode: server.ModeGRPC},
		{name: "ours+ours/http-connect", mode: server.ModeHTTPConnect},
		{name: "ourServer+upstreamAgent/grpc", upAgent: true, mode: server.ModeGRPC},
		{name: "ourServer+upstreamAgent/http-connect", upAgent: true, mode: server.ModeHTTPConnect},
		{name: "upstreamServer+ourAgent/grpc", upServer: true, mode: server.ModeGRPC},
		{name: "upstreamServer+ourAgent/http-connect", upServer: true, mode: server.ModeHTTPConnect},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e *env
			if tc.upServer {
				e = startUpstreamServer(t, pki, tc.mode)
			} else {
				e = startOurServer(t, pki, serverOpts{mode: tc.mode})
			}
			if tc.upAgent {
				startUpstreamAgent(t, e, "up-agent")
			} else {
				startOurAgent(t, e, agentOpts{id: "our-agent"})
			}
			for _, f := range fronts {
				if f.upstream && tc.mode != server.ModeGRPC {
					continue
				}
				t.Run(f.name, func(t *testing.T) {
					exercise(t, newDialer(t, e, f), backend.Addr())
				})
			}
		})
	}
}

var _ = fmt.Sprint

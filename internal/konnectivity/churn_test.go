package konnectivity_test

import (
	"context"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/konnectivity/konnectivitytest"
	"github.com/tether-dev/tether/internal/konnectivity/server"
)

func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// TestChurn runs dial/echo/close cycles with agent kills in between, then
// checks that goroutines, fds and server/agent bookkeeping return to their
// baseline. 10k cycles; 2k with -short, 1k under -race.
func TestChurn(t *testing.T) {
	cycles := 10000
	if testing.Short() {
		cycles = 2000
	}
	if raceEnabled {
		cycles = 1000 // the race detector makes 10k cycles take minutes
	}
	pki := newPKI(t)
	backend := konnectivitytest.NewBackend(t)
	for _, mode := range []string{server.ModeGRPC, server.ModeHTTPConnect} {
		t.Run(mode, func(t *testing.T) {
			e := startOurServer(t, pki, serverOpts{mode: mode, noFrontTCP: true})
			d := newDialer(t, e, frontendKind{})
			// Warm up one agent so lazily created gRPC connections count in the baseline.
			a := startOurAgent(t, e, agentOpts{id: "warm"})
			exercise(t, d, backend.Addr())
			a.stop()
			konnectivitytest.Eventually(t, 5*time.Second, "agent gone", func() bool { return e.ours.ReadyAgents() == 0 })
			runtime.GC()
			baseG, baseFD := runtime.NumGoroutine(), openFDs(t)

			const workers = 8
			rounds := 5
			per := cycles / rounds / workers
			var failures, done atomic.Int64
			for r := range rounds {
				a := startOurAgent(t, e, agentOpts{id: "churn"})
				var wg sync.WaitGroup
				for w := range workers {
					wg.Go(func() {
						msg := []byte("ping")
						for i := range per {
							ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
							c, err := d.DialContext(ctx, "tcp", backend.Addr())
							cancel()
							if err != nil {
								failures.Add(1)
								done.Add(1)
								continue
							}
							if (i+w)%4 != 0 { // a quarter are abandoned right after the dial
								if konnectivitytest.Command(c, konnectivitytest.CmdEcho, 0) != nil || konnectivitytest.EchoRoundTrip(c, msg) != nil {
									failures.Add(1)
								}
							}
							_ = c.Close()
							done.Add(1)
						}
					})
				}
				if r%2 == 1 {
					// Kill the agent while the round is in flight.
					konnectivitytest.Eventually(t, 30*time.Second, "half the round done", func() bool { return done.Load() >= int64(workers*per/2) })
					a.stop()
				}
				wg.Wait()
				done.Store(0)
				a.stop()
				konnectivitytest.Eventually(t, 5*time.Second, "agent gone", func() bool { return e.ours.ReadyAgents() == 0 })
			}
			t.Logf("%d cycles, %d failed (expected only in rounds with an agent kill)", rounds*workers*per, failures.Load())
			konnectivitytest.Eventually(t, 20*time.Second, "bookkeeping back to zero", func() bool {
				st := e.ours.Stats()
				return st.Pending == 0 && st.Established == 0 && backend.Conns() == 0
			})
			deadline := time.Now().Add(20 * time.Second)
			for runtime.NumGoroutine() > baseG+2 || openFDs(t) > baseFD+2 {
				if time.Now().After(deadline) {
					buf := make([]byte, 1<<20)
					t.Fatalf("goroutines %d (baseline %d), fds %d (baseline %d):\n%s\n%s", runtime.NumGoroutine(), baseG, openFDs(t), baseFD, fdList(), buf[:runtime.Stack(buf, true)])
				}
				// io.Copy between TCP conns splices through pooled pipes that
				// are only closed when a GC drops them from the pool.
				runtime.GC()
				time.Sleep(10 * time.Millisecond)
			}
			t.Logf("goroutines %d (baseline %d), fds %d (baseline %d)", runtime.NumGoroutine(), baseG, openFDs(t), baseFD)
		})
	}
}

func fdList() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var sb strings.Builder
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		sb.WriteString(e.Name() + " -> " + l + "\n")
	}
	for _, f := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6", "/proc/self/net/unix"} {
		b, _ := os.ReadFile(f)
		sb.WriteString(f + ":\n" + string(b))
	}
	return sb.String()
}

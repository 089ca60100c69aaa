package konnectivity_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/konnectivity/agent"
	"github.com/tether-dev/tether/internal/konnectivity/konnectivitytest"
)

// BenchmarkAgentFleet connects KONN_BENCH_FLEET (default 200; the issue asks
// for 2000) in-process agents, each with its own mTLS connection, to one
// server and reports the RSS growth per agent (both ends of each connection
// live in this process) and a dial through a random agent afterwards.
//
//	KONN_BENCH_FLEET=2000 go test -run '^$' -bench AgentFleet -benchtime 1x ./internal/konnectivity/
func BenchmarkAgentFleet(b *testing.B) {
	n := int(envInt("KONN_BENCH_FLEET", 200))
	for b.Loop() {
		pki, err := konnectivitytest.NewPKI()
		if err != nil {
			b.Fatal(err)
		}
		backend := konnectivitytest.NewBackend(b)
		e := startOurServer(b, pki, serverOpts{})
		tlsCfg := pki.ClientTLS(b, "fleet")
		runtime.GC()
		before := rssKiB()
		start := time.Now()
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for i := range n {
			a, err := agent.New(agent.Config{Servers: []string{e.agentAddr}, TLS: tlsCfg, AgentID: fmt.Sprintf("node-%d", i)})
			if err != nil {
				b.Fatal(err)
			}
			wg.Go(func() { _ = a.Run(ctx) })
		}
		konnectivitytest.Eventually(b, 5*time.Minute, "fleet connected", func() bool { return e.ours.ReadyAgents() == n })
		connectTime := time.Since(start)
		runtime.GC()
		perAgent := (rssKiB() - before) / float64(n)
		d := newDialer(b, e, frontendKind{})
		c, err := d.DialContext(context.Background(), "tcp", backend.Addr())
		if err != nil {
			b.Fatal(err)
		}
		_ = c.Close()
		msg := fmt.Sprintf("fleet: %d agents connected in %v, RSS %.1f KiB per agent (server+agent ends), goroutines %d\n",
			n, connectTime.Round(time.Millisecond), perAgent, runtime.NumGoroutine())
		b.Log(msg)
		fmt.Fprint(os.Stderr, msg)
		b.ReportMetric(perAgent, "KiB/agent")
		cancel()
		wg.Wait()
		e.stop()
	}
}

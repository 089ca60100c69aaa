package konnectivity_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/tether-dev/tether/internal/konnectivity/agent"
	"github.com/tether-dev/tether/internal/konnectivity/konnectivitytest"
	"github.com/tether-dev/tether/internal/konnectivity/leases"
)

// TestAgentDrain: an agent told to drain sends DRAIN; the server (ours or
// upstream) routes every new dial to the other agent while the drained one's
// established connection keeps working.
func TestAgentDrain(t *testing.T) {
	for _, upstream := range []bool{false, true} {
		name := "ours"
		if upstream {
			name = "upstream-server"
		}
		t.Run(name, func(t *testing.T) {
			pki := newPKI(t)
			backend := konnectivitytest.NewBackend(t)
			var e *env
			if upstream {
				e = startUpstreamServer(t, pki, "grpc")
			} else {
				e = startOurServer(t, pki, serverOpts{})
			}
			var got sync.Map
			drain := make(chan struct{})
			startOurAgent(t, e, agentOpts{id: "a", cfg: agent.Config{Drain: drain, DialEndpoint: recordingDialer("a", &got, backend.Addr())}})
			startOurAgent(t, e, agentOpts{id: "b", cfg: agent.Config{DialEndpoint: recordingDialer("b", &got, backend.Addr())}})
			d := newDialer(t, e, frontendKind{upstream: upstream})
			// Find a connection served by agent a before draining.
			var held []byte
			var heldOK bool
			for i := 0; i < 64 && !heldOK; i++ {
				addr := "10.9.0." + itoa(i) + ":80"
				c, err := d.DialContext(context.Background(), "tcp", addr)
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				if v, _ := got.Load(addr); v == "a" {
					heldOK = true
					held = []byte("still works")
					if err := konnectivitytest.Command(c, konnectivitytest.CmdEcho, 0); err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { _ = c.Close() })
					close(drain)
					// The drained agent's connection keeps working.
					konnectivitytest.Eventually(t, 5*time.Second, "drain reaches the server", func() bool {
						return drainedRouting(t, d, &got)
					})
					if err := konnectivitytest.EchoRoundTrip(c, held); err != nil {
						t.Fatalf("established connection on the draining agent: %v", err)
					}
					break
				}
				_ = c.Close()
			}
			if !heldOK {
				t.Fatal("no dial reached agent a in 64 tries")
			}
		})
	}
}

var drainSeq int

// drainedRouting dials 16 times and reports whether every dial went to b.
func drainedRouting(t *testing.T, d dialer, got *sync.Map) bool {
	for i := 0; i < 16; i++ {
		drainSeq++
		addr := "10.8." + itoa(drainSeq/200) + "." + itoa(drainSeq%200) + ":80"
		c, err := d.DialContext(context.Background(), "tcp", addr)
		if err != nil {
			t.Fatalf("dial after drain: %v", err)
		}
		_ = c.Close()
		if v, _ := got.Load(addr); v != "b" {
			return false
		}
	}
	return true
}

func itoa(i int) string {
	const digits = "0123456789"
	if i < 10 {
		return digits[i : i+1]
	}
	return itoa(i/10) + digits[i%10:i%10+1]
}

// TestLeaseCountedServersBehindOneAddress: two servers that each announce
// serverCount=1 (upstream's static flag, misconfigured) but publish leases;
// an agent behind one load-balanced address that counts leases still ends up
// connected to both. When one server stops, its lease is deleted at once and
// the count drops.
func TestLeaseCountedServersBehindOneAddress(t *testing.T) {
	pki := newPKI(t)
	cs := fake.NewClientset()
	lbls := map[string]string{"k8s-app": "konnectivity-server"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	pubCtx := map[string]context.CancelFunc{}
	var envs []*env
	for _, id := range []string{"s1", "s2"} {
		e := startOurServer(t, pki, serverOpts{serverID: id, serverCnt: 1})
		envs = append(envs, e)
		p, err := leases.NewPublisher(leases.PublisherConfig{Client: cs, Namespace: "kube-system", ServerID: id, Labels: lbls,
			Duration: 30 * time.Second, Renew: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		pctx, pcancel := context.WithCancel(ctx)
		pubCtx[id] = pcancel
		wg.Go(func() {
			if err := p.Run(pctx); err != nil {
				t.Errorf("publisher %s: %v", id, err)
			}
		})
	}
	defer cancel()
	counter, err := leases.NewCounter(leases.CounterConfig{Client: cs, Namespace: "kube-system", Selector: "k8s-app=konnectivity-server"})
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _ = counter.Run(ctx) })
	konnectivitytest.Eventually(t, 10*time.Second, "two leases counted", func() bool { return counter.Count() == 2 })
	lb := konnectivitytest.NewRoundRobinProxy(t, envs[0].agentAddr, envs[1].agentAddr)
	a := startOurAgent(t, nil, agentOpts{pki: pki, id: "a1", servers: []string{lb}, waitCount: 2,
		cfg: agent.Config{ServerCount: counter.Count}})
	if got := len(a.ours.ConnectedServers()); got != 2 {
		t.Fatalf("connected to %d servers, want 2", got)
	}
	pubCtx["s2"]()
	konnectivitytest.Eventually(t, 10*time.Second, "stopped server's lease deleted", func() bool { return counter.Count() == 1 })
}

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
)

// BenchmarkIsolatedUp: wall time from starting `tether up --nodes 3` to
// its ready file (nodes Ready, and for the isolated topology also every
// node reached through Konnectivity and the isolation dial check), for
// the isolated topology with Konnectivity egress and, as the baseline in
// the same run, the loopback topology with direct egress.
//
//	go test -run '^$' -bench BenchmarkIsolatedUp -benchtime 1x ./e2e
func BenchmarkIsolatedUp(b *testing.B) {
	var iso, loop time.Duration
	for range b.N {
		c := startUpCluster(b, true, 3, "konnectivity", "100.84.0.0/16")
		iso += c.readyAfter
		c.stop(b)
		l := startUpCluster(b, false, 3, "direct", "")
		loop += l.readyAfter
		l.stop(b)
	}
	b.ReportMetric(float64(iso.Milliseconds())/float64(b.N), "isolated-ready-ms")
	b.ReportMetric(float64(loop.Milliseconds())/float64(b.N), "loopback-ready-ms")
	b.ReportMetric(float64(iso)/float64(loop), "isolated/loopback")
}

// BenchmarkIsolatedRoundTrip: `kubectl logs` (GET pods/log, tail 1) and an
// exec echo round trip (one byte through a running `cat`) via the hub,
// isolated with Konnectivity egress versus loopback with direct egress,
// measured in the same run; reports p50 of each and their ratio.
//
//	go test -run '^$' -bench BenchmarkIsolatedRoundTrip ./e2e
func BenchmarkIsolatedRoundTrip(b *testing.B) {
	iso := startUpCluster(b, true, 2, "konnectivity", "100.85.0.0/16")
	loop := startUpCluster(b, false, 2, "direct", "")
	isoCfg, isoNS := benchCatPod(b, iso)
	loopCfg, loopNS := benchCatPod(b, loop)

	b.Run("logs", func(b *testing.B) {
		get := func(cfg *rest.Config, ns string) func() time.Duration {
			cs, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				b.Fatal(err)
			}
			c := cs.CoreV1().RESTClient()
			return func() time.Duration {
				start := time.Now()
				if _, err := c.Get().AbsPath("/api/v1/namespaces/"+ns+"/pods/cat/log").Param("tailLines", "1").DoRaw(context.Background()); err != nil {
					b.Fatal(err)
				}
				return time.Since(start)
			}
		}
		isoRT, loopRT := get(isoCfg, isoNS), get(loopCfg, loopNS)
		benchCompare(b, isoRT, loopRT)
	})
	b.Run("exec-echo", func(b *testing.B) {
		isoRT, stopIso := benchExecSession(b, isoCfg, isoNS)
		defer stopIso()
		loopRT, stopLoop := benchExecSession(b, loopCfg, loopNS)
		defer stopLoop()
		benchCompare(b, isoRT, loopRT)
	})
}

// benchCompare times b.N calls of iso (the measured path), then b.N of
// base, and reports both p50s and the ratio.
func benchCompare(b *testing.B, iso, base func() time.Duration) {
	for range 10 { // warm up connections and tunnels
		iso()
		base()
	}
	isoLat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		isoLat = append(isoLat, iso())
	}
	b.StopTimer()
	baseLat := make([]time.Duration, 0, b.N)
	for range b.N {
		baseLat = append(baseLat, base())
	}
	p50 := func(d []time.Duration) float64 {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return float64(d[len(d)/2].Microseconds()) / 1000
	}
	pi, pb := p50(isoLat), p50(baseLat)
	b.ReportMetric(pi, "isolated-p50-ms")
	b.ReportMetric(pb, "loopback-direct-p50-ms")
	if pb > 0 {
		b.ReportMetric(pi/pb, "isolated/loopback-direct")
	}
}

// benchCatPod runs pod "cat" (a long-running `cat` on node-1) in a fresh
// namespace and returns the admin config.
func benchCatPod(b *testing.B, c *isoCluster) (*rest.Config, string) {
	b.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	cfg.QPS, cfg.Burst = -1, 0
	ctx := testContext(b, 2*time.Minute)
	ns := "bench"
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	if _, err := c.cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "cat"},
		Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{
			Name: "cat", Image: "none", Command: []string{"sh", "-c", "echo cat-ready; exec sleep 3600"},
			Env: []corev1.EnvVar{{Name: "ISO_RUN", Value: c.dir}},
		}}},
	}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(readyTimeout)
	for {
		p, err := c.cs.CoreV1().Pods(ns).Get(ctx, "cat", metav1.GetOptions{})
		if err == nil && p.Status.Phase == corev1.PodRunning {
			return cfg, ns
		}
		if time.Now().After(deadline) {
			b.Fatalf("pod cat not running: %v %+v", err, p.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// benchExecSession opens `exec -i cat` through the hub and returns a
// one-byte round trip.
func benchExecSession(b *testing.B, cfg *rest.Config, ns string) (func() time.Duration, func()) {
	u, err := url.Parse(strings.TrimSuffix(cfg.Host, "/") + "/api/v1/namespaces/" + ns + "/pods/cat/exec?command=cat&stdin=true&stdout=true&container=cat")
	if err != nil {
		b.Fatal(err)
	}
	ex, err := remotecommand.NewSPDYExecutor(cfg, "POST", u)
	if err != nil {
		b.Fatal(err)
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	done := make(chan error, 1)
	go func() {
		done <- ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: inR, Stdout: outW})
		outW.Close()
	}()
	buf := make([]byte, 1)
	return func() time.Duration {
			start := time.Now()
			if _, err := inW.Write([]byte{'x'}); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(outR, buf); err != nil {
				b.Fatal(fmt.Errorf("exec echo: %v", err))
			}
			return time.Since(start)
		}, func() {
			inW.Close()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
			}
			cancel()
		}
}

package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
)

// Benchmarks of the control plane → node paths through the hub, each
// against a direct connection to the same target in the same run (issue 6
// "Performance"). Run: go test -run '^$' -bench NodePath -benchtime 1x ./e2e
// (TETHER_E2E_BIN=… skips building the binary).

// kubeletDirect is a client for agent a's kubelet API with the hub's own
// kubelet-client identity — what the hub itself does, minus the hub.
func kubeletDirect(tb testing.TB, e *nodePaths, a *agent, keepAlive bool) (*http.Client, string) {
	tb.Helper()
	pkiDir := filepath.Join(e.c.Hub.Dir, "pki")
	caPEM, err := os.ReadFile(filepath.Join(pkiDir, "ca.crt"))
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, "kubelet-client.crt"), filepath.Join(pkiDir, "kubelet-client.key"))
	if err != nil {
		tb.Fatal(err)
	}
	c := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		DisableKeepAlives: !keepAlive,
	}}
	return c, "https://" + net.JoinHostPort(a.IP, strconv.Itoa(a.KubeletPort))
}

func kubeletRestConfig(e *nodePaths, a *agent) *rest.Config {
	pkiDir := filepath.Join(e.c.Hub.Dir, "pki")
	return &rest.Config{
		Host: "https://" + net.JoinHostPort(a.IP, strconv.Itoa(a.KubeletPort)),
		TLSClientConfig: rest.TLSClientConfig{
			CAFile:   filepath.Join(pkiDir, "ca.crt"),
			CertFile: filepath.Join(pkiDir, "kubelet-client.crt"),
			KeyFile:  filepath.Join(pkiDir, "kubelet-client.key"),
		},
	}
}

// BenchmarkNodePathPortForward: bytes from the pod server through `kubectl
// port-forward` (newest kubectl → hub → kubelet → pod) vs a direct loopback
// connection to the same server. One op = 256 MiB through the hub (timed)
// and 256 MiB direct (not timed).
// Sub-benchmarks: the oldest kubectl (SPDY to the hub) and the newest
// (SPDY tunnelled over WebSocket from 1.31).
func BenchmarkNodePathPortForward(b *testing.B) {
	paths := installedKubectls(b)
	e := sharedNodePaths(b)
	for _, p := range []string{paths[0], paths[len(paths)-1]} {
		k := newKubectl(b, p, e.c.Hub)
		b.Run("kubectl-"+k.version, func(b *testing.B) { benchPortForward(b, e, k) })
	}
}

func benchPortForward(b *testing.B, e *nodePaths, k *kubectl) {
	const size = 256 << 20
	s := startLinesFor(b, 10*time.Minute, k, "port-forward", "-n", e.ns, "pod/web", "--address", "127.0.0.1", ":"+strconv.Itoa(e.httpPort))
	m := s.waitLine(b, regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+)`), 30*time.Second, nil)
	viaHub := "http://127.0.0.1:" + m[1] + "/bytes?n=" + strconv.Itoa(size)
	direct := "http://" + net.JoinHostPort(e.webIP, strconv.Itoa(e.httpPort)) + "/bytes?n=" + strconv.Itoa(size)
	fetch := func(u string) time.Duration {
		start := time.Now()
		resp, err := plainClient.Get(u)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != size {
			b.Fatalf("GET %s: %d bytes, %v", u, n, err)
		}
		return time.Since(start)
	}
	kubeletPort, stopKubelet := kubeletPortForward(b, e, e.c.Agents[1], e.httpPort)
	defer stopKubelet()
	viaKubelet := "http://127.0.0.1:" + kubeletPort + "/bytes?n=" + strconv.Itoa(size)
	fetch(viaHub) // warm: the first stream sets up the SPDY connection
	fetch(viaKubelet)
	var hubT, directT, kubeletT time.Duration
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		hubT += fetch(viaHub)
		b.StopTimer()
		directT += fetch(direct)
		kubeletT += fetch(viaKubelet)
		b.StartTimer()
	}
	b.StopTimer()
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / (1 << 20) }
	b.ReportMetric(mbps(hubT), "hub-MiB/s")
	b.ReportMetric(mbps(directT), "direct-MiB/s")
	b.ReportMetric(mbps(kubeletT), "kubelet-direct-MiB/s")
	b.ReportMetric(mbps(hubT)/mbps(directT), "hub/direct")
	b.ReportMetric(mbps(hubT)/mbps(kubeletT), "hub/kubelet-direct")
}

// kubeletPortForward forwards a local port to port of pod "web" straight
// through agent a's kubelet API (client-go SPDY port-forwarder with the
// hub's kubelet-client identity): the hub's share of the cost is the
// difference to the path through the hub.
func kubeletPortForward(b *testing.B, e *nodePaths, a *agent, port int) (string, func()) {
	cfg := kubeletRestConfig(e, a)
	rt, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		b.Fatal(err)
	}
	u, err := url.Parse(cfg.Host + "/portForward/" + e.ns + "/web")
	if err != nil {
		b.Fatal(err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-done:
		b.Fatalf("port-forward via the kubelet: %v", err)
	case <-time.After(30 * time.Second):
		b.Fatal("port-forward via the kubelet: not ready within 30s")
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		b.Fatalf("port-forward via the kubelet: ports %v, %v", ports, err)
	}
	return strconv.Itoa(int(ports[0].Local)), func() {
		close(stop)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	}
}

// BenchmarkNodePathExecEcho: round trip of 1 byte through `cat` in an exec
// session (client-go SPDY executor, as kubectl) via the hub vs directly to
// the kubelet with the hub's kubelet-client identity. One op = one round
// trip via the hub; the same number is then done direct.
func BenchmarkNodePathExecEcho(b *testing.B) {
	e := sharedNodePaths(b)
	a := e.c.Agents[0] // pod "feed" runs there
	hubCfg := e.c.Hub.Config(b)
	hubURL, err := url.Parse(hubCfg.Host + "/api/v1/namespaces/" + e.ns + "/pods/feed/exec?command=cat&stdin=true&stdout=true&container=feed")
	if err != nil {
		b.Fatal(err)
	}
	kCfg := kubeletRestConfig(e, a)
	directURL, err := url.Parse(kCfg.Host + "/exec/" + e.ns + "/feed/feed?command=cat&input=1&output=1")
	if err != nil {
		b.Fatal(err)
	}
	session := func(cfg *rest.Config, u *url.URL) (roundTrip func() time.Duration, stop func()) {
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
		roundTrip = func() time.Duration {
			start := time.Now()
			if _, err := inW.Write([]byte{'x'}); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(outR, buf); err != nil {
				b.Fatalf("exec echo: %v (stream: %v)", err, <-done)
			}
			return time.Since(start)
		}
		return roundTrip, func() {
			inW.Close()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
			}
			cancel()
		}
	}
	hubRT, stopHub := session(hubCfg, hubURL)
	defer stopHub()
	directRT, stopDirect := session(kCfg, directURL)
	defer stopDirect()
	for range 20 { // warm up both
		hubRT()
		directRT()
	}
	n := b.N
	hubLat := make([]time.Duration, 0, n)
	b.ReportAllocs()
	b.ResetTimer()
	for range n {
		hubLat = append(hubLat, hubRT())
	}
	b.StopTimer()
	directLat := make([]time.Duration, 0, n)
	for range n {
		directLat = append(directLat, directRT())
	}
	reportLatency(b, "exec-echo", hubLat, directLat)
}

func reportLatency(b *testing.B, what string, hub, direct []time.Duration) {
	slices.Sort(hub)
	slices.Sort(direct)
	pct := func(d []time.Duration, p float64) float64 {
		if len(d) == 0 {
			return 0
		}
		return float64(d[min(len(d)-1, int(float64(len(d))*p))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(hub, 0.50), "hub-p50-ms")
	b.ReportMetric(pct(hub, 0.99), "hub-p99-ms")
	b.ReportMetric(pct(direct, 0.50), "direct-p50-ms")
	b.ReportMetric(pct(direct, 0.99), "direct-p99-ms")
	if d := pct(direct, 0.50); d > 0 {
		b.ReportMetric(pct(hub, 0.50)/d, "p50-hub/direct")
	}
	if d := pct(direct, 0.99); d > 0 {
		b.ReportMetric(pct(hub, 0.99)/d, "p99-hub/direct")
	}
	_ = what
}

// BenchmarkNodePathLogsFollowFirstByte: time from request to the first
// byte of a follow=true log stream (tailLines=1, so an existing line is
// due at once) via the hub vs directly from the kubelet. Each direct
// request opens a new TLS connection, as the hub does toward the kubelet.
// Afterwards it holds 100 follow streams open on the hub and reports the
// hub's RSS growth per stream.
func BenchmarkNodePathLogsFollowFirstByte(b *testing.B) {
	e := sharedNodePaths(b)
	a := e.c.Agents[0]
	hc, err := rest.HTTPClientFor(e.c.Hub.Config(b))
	if err != nil {
		b.Fatal(err)
	}
	hubURL := e.c.Hub.URL() + "/api/v1/namespaces/" + e.ns + "/pods/feed/log?follow=true&tailLines=1"
	dc, base := kubeletDirect(b, e, a, false)
	directURL := base + "/containerLogs/" + e.ns + "/feed/feed?follow=true&tailLines=1"
	firstByte := func(c *http.Client, u string) time.Duration {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			body, _ := io.ReadAll(resp.Body)
			b.Fatalf("GET %s: %s %s", u, resp.Status, body)
		}
		if _, err := resp.Body.Read(make([]byte, 1)); err != nil {
			b.Fatalf("GET %s: first byte: %v", u, err)
		}
		return time.Since(start)
	}
	if err := e.appendFeed("bench-line"); err != nil {
		b.Fatal(err)
	}
	firstByte(hc, hubURL)
	firstByte(dc, directURL)
	hubLat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		hubLat = append(hubLat, firstByte(hc, hubURL))
	}
	b.StopTimer()
	directLat := make([]time.Duration, 0, b.N)
	for range b.N {
		directLat = append(directLat, firstByte(dc, directURL))
	}
	reportLatency(b, "logs-f-first-byte", hubLat, directLat)

	// 100 concurrent follow streams on the hub: RSS growth per stream.
	pid := e.c.Hub.pid()
	before, beforeM := rssKiB(b, pid), hubMetrics(b, hc, e.c.Hub.URL())
	const streams = 100
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var bodies []io.Closer
	for range streams {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, hubURL, nil)
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := resp.Body.Read(make([]byte, 1)); err != nil {
			b.Fatal(err)
		}
		bodies = append(bodies, resp.Body)
	}
	after, afterM := rssKiB(b, pid), hubMetrics(b, hc, e.c.Hub.URL())
	// RSS moves with the GC; heap in use and goroutines are steadier.
	b.ReportMetric(float64(after-before)/streams, "hub-RSS-KiB/stream")
	b.ReportMetric((afterM["go_memstats_heap_inuse_bytes"]-beforeM["go_memstats_heap_inuse_bytes"])/1024/streams, "hub-heap-KiB/stream")
	b.ReportMetric((afterM["go_goroutines"]-beforeM["go_goroutines"])/streams, "hub-goroutines/stream")
	for _, c := range bodies {
		c.Close()
	}
}

// hubMetrics reads the hub's Go runtime gauges from /metrics.
func hubMetrics(tb testing.TB, hc *http.Client, base string) map[string]float64 {
	tb.Helper()
	resp, err := hc.Get(base + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if ok && (name == "go_goroutines" || name == "go_memstats_heap_inuse_bytes") {
			m[name], _ = strconv.ParseFloat(strings.TrimSpace(val), 64)
		}
	}
	if len(m) != 2 {
		tb.Fatalf("/metrics: no go_goroutines / go_memstats_heap_inuse_bytes (%s)", resp.Status)
	}
	return m
}

func (h *hub) pid() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.run == nil {
		return 0
	}
	return h.run.cmd.Process.Pid
}

func rssKiB(tb testing.TB, pid int) int64 {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	tb.Fatal("no VmRSS")
	return 0
}

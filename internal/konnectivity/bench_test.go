package konnectivity_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/tether-dev/tether/internal/konnectivity/agent"
	"github.com/tether-dev/tether/internal/konnectivity/konnectivitytest"
	"github.com/tether-dev/tether/internal/konnectivity/server"
)

// benchPath is one way to reach the backend: direct, or through a server+agent pair.
type benchPath struct {
	name   string
	group  string // "direct", "upstream", "ours"
	mode   string // "grpc-uds", "grpc-mtls", "http-connect-uds"
	dial   func(ctx context.Context) (net.Conn, error)
	agents func() int
}

type benchResult struct {
	path                benchPath
	down, up, par4      float64 // MB/s
	hol                 float64 // throughput ratio of conn B with conn A stalled
	holDial             time.Duration
	holNote             string
	p50, p99            time.Duration
	cpuPerMB            time.Duration // process CPU per MB downloaded
	rssPerConn, rssIdle float64       // KiB
	err                 error
}

func envInt(name string, def int64) int64 {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	mult := int64(1)
	switch {
	case strings.HasSuffix(v, "MiB"):
		mult, v = 1<<20, strings.TrimSuffix(v, "MiB")
	case strings.HasSuffix(v, "KiB"):
		mult, v = 1<<10, strings.TrimSuffix(v, "KiB")
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return def
	}
	return n * mult
}

func rssKiB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseFloat(f[1], 64)
			return n
		}
	}
	return 0
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e6 }

// cpuTime is the process's user+system CPU time; the whole path (client,
// server, agent, backend) runs in this process, so CPU per MB compares paths
// even when the machine is busy with other work.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// best runs f twice and keeps the better result (other load on the machine
// only ever makes a run slower).
func best(f func() (float64, error)) (float64, error) {
	a, err := f()
	if err != nil {
		return 0, err
	}
	b, err := f()
	if err != nil {
		return 0, err
	}
	return max(a, b), nil
}

func download(ctx context.Context, p benchPath, n int64) (float64, error) {
	c, err := p.dial(ctx)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	start := time.Now()
	if err := konnectivitytest.Command(c, konnectivitytest.CmdDownload, n); err != nil {
		return 0, err
	}
	got, err := io.CopyN(io.Discard, c, n)
	if err != nil {
		return 0, fmt.Errorf("download: %d/%d bytes: %w", got, n, err)
	}
	return mbps(n, time.Since(start)), nil
}

func upload(ctx context.Context, p benchPath, n int64) (float64, error) {
	c, err := p.dial(ctx)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	start := time.Now()
	if err := konnectivitytest.Command(c, konnectivitytest.CmdUpload, n); err != nil {
		return 0, err
	}
	buf := make([]byte, 256<<10)
	for left := n; left > 0; {
		k := min(left, int64(len(buf)))
		if _, err := c.Write(buf[:k]); err != nil {
			return 0, err
		}
		left -= k
	}
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		return 0, err
	}
	return mbps(n, time.Since(start)), nil
}

func parallel(ctx context.Context, p benchPath, n int64, streams int) (float64, error) {
	per := n / int64(streams)
	var wg sync.WaitGroup
	errs := make([]error, streams)
	start := time.Now()
	for i := range streams {
		wg.Go(func() { _, errs[i] = download(ctx, p, per) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return 0, err
		}
	}
	return mbps(per*int64(streams), time.Since(start)), nil
}

// headOfLine stalls connection A and measures a dial and a download on B.
func headOfLine(p benchPath, n int64, unstalled float64) (ratio float64, dial time.Duration, note string) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	a, err := p.dial(ctx)
	if err != nil {
		return 0, 0, "dial A: " + err.Error()
	}
	defer a.Close()
	if err := konnectivitytest.Command(a, konnectivitytest.CmdDownload, 1<<40); err != nil {
		return 0, 0, err.Error()
	}
	if _, err := io.ReadFull(a, make([]byte, 64<<10)); err != nil {
		return 0, 0, err.Error()
	}
	// Let A's backend fill every buffer on the path (a settle period, not synchronisation).
	time.Sleep(500 * time.Millisecond)
	type res struct {
		dial time.Duration
		tput float64
		err  error
	}
	done := make(chan res, 1)
	go func() {
		start := time.Now()
		b, err := p.dial(ctx)
		if err != nil {
			done <- res{err: err}
			return
		}
		defer b.Close()
		d := time.Since(start)
		if err := konnectivitytest.Command(b, konnectivitytest.CmdDownload, n); err != nil {
			done <- res{err: err}
			return
		}
		t0 := time.Now()
		if _, err := io.CopyN(io.Discard, b, n); err != nil {
			done <- res{dial: d, err: err}
			return
		}
		done <- res{dial: d, tput: mbps(n, time.Since(t0))}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return 0, r.dial, "B failed: " + r.err.Error()
		}
		return r.tput / unstalled, r.dial, ""
	case <-time.After(10 * time.Second):
		return 0, 0, "B stalled >10s"
	}
}

func dialEcho(p benchPath, cycles int) (p50, p99 time.Duration, err error) {
	msg := make([]byte, 1024)
	lat := make([]time.Duration, 0, cycles)
	for range cycles {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		c, err := p.dial(ctx)
		cancel()
		if err != nil {
			return 0, 0, err
		}
		if err := konnectivitytest.Command(c, konnectivitytest.CmdEcho, 0); err != nil {
			return 0, 0, err
		}
		if err := konnectivitytest.EchoRoundTrip(c, msg); err != nil {
			return 0, 0, err
		}
		_ = c.Close()
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}

// idleConns opens n idle echo connections and returns the RSS growth per connection.
func idleConns(p benchPath, n int) (float64, error) {
	runtime.GC()
	before := rssKiB()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := p.dial(ctx)
		cancel()
		if err != nil {
			return 0, err
		}
		if err := konnectivitytest.Command(c, konnectivitytest.CmdEcho, 0); err != nil {
			return 0, err
		}
		conns = append(conns, c)
	}
	// Make sure every tunnel is established end to end.
	if err := konnectivitytest.EchoRoundTrip(conns[len(conns)-1], []byte("x")); err != nil {
		return 0, err
	}
	runtime.GC()
	return (rssKiB() - before) / float64(n), nil
}

// BenchmarkKonnectivityReport runs the whole comparison once and prints a
// table. Run it with:
//
//	go test -run '^$' -bench KonnectivityReport -benchtime 1x ./internal/konnectivity/
//
// KONN_BENCH_SIZE (e.g. 256MiB; default 32MiB), KONN_BENCH_CYCLES (default
// 1000), KONN_BENCH_IDLE (idle connections for RSS, default 1000) and
// KONN_BENCH_ONLY (comma-separated substrings of path names) tune it.
func BenchmarkKonnectivityReport(b *testing.B) {
	size := envInt("KONN_BENCH_SIZE", 32<<20)
	cycles := int(envInt("KONN_BENCH_CYCLES", 1000))
	idle := int(envInt("KONN_BENCH_IDLE", 1000))
	only := os.Getenv("KONN_BENCH_ONLY")
	for b.Loop() {
		results := runSuite(b, size, cycles, idle, only)
		printTable(b, results, size, cycles, idle)
	}
}

func runSuite(b *testing.B, size int64, cycles, idle int, only string) []benchResult {
	var out []benchResult
	for _, mk := range benchPaths() {
		if only != "" && !slices.ContainsFunc(strings.Split(only, ","), func(f string) bool { return strings.Contains(mk.name, f) }) {
			continue
		}
		p, stop := mk.setup(b)
		r := benchResult{path: p}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		c0 := cpuTime()
		r.down, r.err = download(ctx, p, size)
		r.cpuPerMB = (cpuTime() - c0) * 1e6 / time.Duration(size)
		if r.err == nil {
			r.down, r.err = best(func() (float64, error) { return download(ctx, p, size) })
		}
		if r.err == nil {
			r.up, r.err = best(func() (float64, error) { return upload(ctx, p, size) })
		}
		if r.err == nil {
			r.par4, r.err = parallel(ctx, p, size, 4)
		}
		if r.err == nil {
			r.p50, r.p99, r.err = dialEcho(p, cycles)
		}
		if r.err == nil && idle > 0 {
			r.rssPerConn, r.err = idleConns(p, idle)
		}
		if r.err == nil && p.group != "direct" {
			r.hol, r.holDial, r.holNote = headOfLine(p, size/4, r.down)
		}
		cancel()
		stop()
		out = append(out, r)
		b.Logf("%s done: down %.0f MB/s, err %v", p.name, r.down, r.err)
	}
	return out
}

func printTable(b *testing.B, rs []benchResult, size int64, cycles, idle int) {
	var tcp, tlsR *benchResult
	for i := range rs {
		switch rs[i].path.name {
		case "direct-tcp":
			tcp = &rs[i]
		case "direct-tls":
			tlsR = &rs[i]
		}
	}
	up := map[string]*benchResult{}
	for i := range rs {
		if rs[i].path.group == "upstream" {
			up[rs[i].path.mode] = &rs[i]
		}
	}
	ratio := func(a, b float64) string {
		if b == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nKonnectivity benchmark: %d MiB per transfer, %d dial+1KiB echo+close cycles, %d idle conns, GOMAXPROCS=%d\n\n",
		size>>20, cycles, idle, runtime.GOMAXPROCS(0))
	w := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "path\tdown MB/s\tup MB/s\t4×down MB/s\tdown/TCP\tdown/TLS\tvs upstream\tHOL ratio\tHOL dial\techo p50\techo p99\tRSS KiB/conn\tCPU/MB\t")
	for _, r := range rs {
		if r.err != nil {
			fmt.Fprintf(w, "%s\terror: %v\t\t\t\t\t\t\t\t\t\t\t\n", r.path.name, r.err)
			continue
		}
		vsUp := "-"
		if u := up[r.path.mode]; r.path.group == "ours" && u != nil && u.err == nil {
			vsUp = ratio(r.down, u.down) + "×"
		}
		hol, holDial := "-", "-"
		if r.path.group != "direct" {
			hol = fmt.Sprintf("%.2f", r.hol)
			if r.holNote != "" {
				hol = r.holNote
			} else {
				holDial = r.holDial.Round(10 * time.Microsecond).String()
			}
		}
		var tcpD, tlsD float64
		if tcp != nil {
			tcpD = tcp.down
		}
		if tlsR != nil {
			tlsD = tlsR.down
		}
		fmt.Fprintf(w, "%s\t%.0f\t%.0f\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%s\t\n", r.path.name, r.down, r.up, r.par4,
			ratio(r.down, tcpD), ratio(r.down, tlsD), vsUp, hol, holDial,
			r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond), r.rssPerConn, r.cpuPerMB.Round(time.Microsecond))
	}
	_ = w.Flush()
	b.Log(sb.String())
	fmt.Fprint(os.Stderr, sb.String())
}

type pathMaker struct {
	name  string
	setup func(b *testing.B) (benchPath, func())
}

func benchPaths() []pathMaker {
	mk := func(name, group, mode string, f func(b *testing.B, pki *konnectivitytest.PKI, backend string) (benchPath, func())) pathMaker {
		return pathMaker{name: name, setup: func(b *testing.B) (benchPath, func()) {
			pki, err := konnectivitytest.NewPKI()
			if err != nil {
				b.Fatal(err)
			}
			backend := konnectivitytest.NewBackend(b)
			p, stop := f(b, pki, backend.Addr())
			p.name, p.group, p.mode = name, group, mode
			return p, func() { stop(); backend.Close() }
		}}
	}
	var ps []pathMaker
	ps = append(ps, mk("direct-tcp", "direct", "", func(b *testing.B, _ *konnectivitytest.PKI, backend string) (benchPath, func()) {
		return benchPath{dial: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", backend)
		}}, func() {}
	}))
	ps = append(ps, mk("direct-tls", "direct", "", func(b *testing.B, pki *konnectivitytest.PKI, _ string) (benchPath, func()) {
		l, err := tls.Listen("tcp", "127.0.0.1:0", pki.ServerTLS(b))
		if err != nil {
			b.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				wg.Go(func() { _ = konnectivitytest.Handle(c); _ = c.Close() })
			}
		})
		ctls := pki.ClientTLS(b, "client")
		return benchPath{dial: func(ctx context.Context) (net.Conn, error) {
				d := tls.Dialer{Config: ctls}
				return d.DialContext(ctx, "tcp", l.Addr().String())
			}}, func() {
				_ = l.Close()
			}
	}))
	for _, m := range []struct {
		mode, srvMode string
		tcp           bool
	}{{"grpc-uds", server.ModeGRPC, false}, {"grpc-mtls", server.ModeGRPC, true}, {"http-connect-uds", server.ModeHTTPConnect, false}, {"http-connect-mtls", server.ModeHTTPConnect, true}} {
		ps = append(ps, mk("upstream/"+m.mode, "upstream", m.mode, func(b *testing.B, pki *konnectivitytest.PKI, backend string) (benchPath, func()) {
			e := startUpstreamServer(b, pki, m.srvMode)
			a := startUpstreamAgent(b, e, "bench-agent")
			var d dialer
			if m.srvMode == server.ModeGRPC {
				d = newDialer(b, e, frontendKind{upstream: true, tcp: m.tcp})
			} else {
				d = newDialer(b, e, frontendKind{tcp: m.tcp})
			}
			return benchPath{dial: func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", backend) }},
				func() { a.stop(); e.stop() }
		}))
		for _, raw := range []bool{true, false} {
			name := "ours/" + m.mode // raw connections (the default between tether peers)
			if !raw {
				name = "ours-streams/" + m.mode // conn-streams only
			}
			ps = append(ps, mk(name, "ours", m.mode, func(b *testing.B, pki *konnectivitytest.PKI, backend string) (benchPath, func()) {
				e := startOurServer(b, pki, serverOpts{mode: m.srvMode})
				a := startOurAgent(b, e, agentOpts{id: "bench-agent", cfg: agent.Config{MaxConns: 100000, DisableRawConns: !raw}})
				d := newDialer(b, e, frontendKind{tcp: m.tcp})
				return benchPath{dial: func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", backend) }},
					func() { a.stop(); e.stop() }
			}))
		}
	}
	return ps
}

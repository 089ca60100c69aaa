package e2e

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkSSHPortForward: `kubectl port-forward` throughput through a hub
// whose egress is SSH (tether up --egress=ssh: built-in endpoint, hub →
// kubelet TLS inside an SSH channel) against a hub with direct egress
// (hub → kubelet TLS over TCP), in one run, alternating. One op = 256 MiB
// through each. Also the CPU seconds per byte of each `tether up` process
// (hub, agents and endpoint live in it). Run:
// go test -run '^$' -bench SSHPortForward -benchtime 3x ./e2e
func BenchmarkSSHPortForward(b *testing.B) {
	const size = 256 << 20
	paths := installedKubectls(b)
	type side struct {
		name string
		pid  int
		url  string
		wall time.Duration
		cpu  time.Duration
	}
	var sides []*side
	for _, mode := range []string{"direct", "ssh"} {
		dir, pid := startUp(b, "--nodes", "1", "--egress="+mode)
		h := &hub{Kubeconfig: filepath.Join(dir, "admin.kubeconfig")}
		httpPort, err := freePortOn("127.0.0.1")
		if err != nil {
			b.Fatal(err)
		}
		httpsPort, err := freePortOn("127.0.0.1")
		if err != nil {
			b.Fatal(err)
		}
		w := startSSHWorkload(b, h.Client(b), "node-1", "127.0.0.1", httpPort, httpsPort)
		k := newKubectl(b, paths[len(paths)-1], h)
		s := startLinesFor(b, 30*time.Minute, k, "port-forward", "-n", w.ns, "pod/web", "--address", "127.0.0.1", ":"+strconv.Itoa(httpPort))
		m := s.waitLine(b, regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+)`), 30*time.Second, nil)
		sides = append(sides, &side{name: mode, pid: pid, url: "http://127.0.0.1:" + m[1] + "/bytes?n=" + strconv.Itoa(size)})
	}
	fetch := func(s *side) {
		start, cpu := time.Now(), procCPU(b, s.pid)
		resp, err := plainClient.Get(s.url)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != size {
			b.Fatalf("GET %s: %d bytes, %v", s.url, n, err)
		}
		s.wall += time.Since(start)
		s.cpu += procCPU(b, s.pid) - cpu
	}
	for _, s := range sides {
		s.wall, s.cpu = 0, 0
		fetch(s) // warm: the first stream sets up the connections
		s.wall, s.cpu = 0, 0
	}
	b.SetBytes(2 * size)
	for b.Loop() {
		for _, s := range sides {
			fetch(s)
		}
	}
	direct, ssh := sides[0], sides[1]
	mib := float64(size) * float64(b.N) / (1 << 20)
	b.ReportMetric(mib/direct.wall.Seconds(), "direct-MiB/s")
	b.ReportMetric(mib/ssh.wall.Seconds(), "ssh-MiB/s")
	b.ReportMetric(direct.wall.Seconds()/ssh.wall.Seconds(), "ssh/direct")
	b.ReportMetric(direct.cpu.Seconds()/ssh.cpu.Seconds(), "cpu-ssh/direct")
}

// procCPU is the user+system CPU time of process pid (from /proc).
func procCPU(tb testing.TB, pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		tb.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	// Fields after the command: state(0) ppid(1) … utime(11) stime(12), in clock ticks (100/s).
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		tb.Fatalf("parse /proc/%d/stat: %q", pid, s)
	}
	return time.Duration(ut+st) * 10 * time.Millisecond
}

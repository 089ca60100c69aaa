package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/konnectivity/client"
	"github.com/tether-dev/tether/internal/konnectivity/konnectivitytest"
	"github.com/tether-dev/tether/internal/tcplb"
)

// Konnectivity HA under fault: three `tether konnectivity-server` processes
// (HTTP CONNECT over mTLS for frontends, mTLS for agents), two
// `tether konnectivity-agent` processes connected to all three, each in front
// of its own loopback backend (routed by destHost on the agent's ipv4=
// identifier), and the frontend side — what the hub's egress dialer does —
// reaching the servers through one load-balanced address (internal/tcplb).
// Everything lives on a per-run 127.A.B.0/24.

const (
	khaServers      = 3
	khaAgents       = 2
	khaFrontPort    = 8090
	khaAgentPort    = 8091
	khaHealthPort   = 8092
	khaAgentHealth  = 8093
	khaDialTimeout  = 5 * time.Second
	khaChunk        = 16 << 10
	khaTransferPace = 5 * time.Millisecond
)

// khaProc is a child process that can be killed and started again with the
// same arguments.
type khaProc struct {
	name   string
	args   []string
	dir    string
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	starts int
}

func (p *khaProc) start(tb testing.TB) {
	tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.starts++
	f, err := os.OpenFile(filepath.Join(p.dir, p.name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	fmt.Fprintf(f, "--- start %d at %s\n", p.starts, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(tetherBin, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		tb.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(exited)
	}()
	p.cmd, p.exited = cmd, exited
}

// kill sends SIGKILL and waits for the process to be gone; it returns the
// moment the signal was sent.
func (p *khaProc) kill(tb testing.TB) time.Time {
	tb.Helper()
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	at := time.Now()
	_ = cmd.Process.Kill()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		tb.Fatalf("%s did not exit within 10s of SIGKILL", p.name)
	}
	return at
}

func (p *khaProc) stop() {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

func (p *khaProc) logTail() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, p.name+".log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// khaCluster is the whole set-up.
type khaCluster struct {
	dir      string
	prefix   string // 127.A.B
	servers  []*khaProc
	agents   []*khaProc
	backends []string // backend j is reached only through agent j
	front    []string // each server's frontend address
	lbAddr   string
	tls      *tls.Config // frontend client (the hub's) certificate
	mode     string      // the servers' and the frontend's: http-connect or grpc
}

func (c *khaCluster) ip(last int) string { return c.prefix + "." + strconv.Itoa(last) }

func (c *khaCluster) agentMetrics(j int) string {
	return "http://" + net.JoinHostPort(c.ip(21+j), strconv.Itoa(khaAgentHealth)) + "/metrics"
}

func (c *khaCluster) serverMetrics(i int) string {
	return "http://" + net.JoinHostPort(c.ip(11+i), strconv.Itoa(khaHealthPort)) + "/metrics"
}

// openServerConns is agent j's konnectivity_network_proxy_agent_open_server_connections.
func (c *khaCluster) openServerConns(j int) float64 {
	v, err := scrapeMetric(c.agentMetrics(j), "konnectivity_network_proxy_agent_open_server_connections")
	if err != nil {
		return -1
	}
	return v
}

// khaPrefix picks a 127.A.B prefix whose fixed ports are free.
func khaPrefix(tb testing.TB) string {
	tb.Helper()
	for range 50 {
		p := fmt.Sprintf("127.%d.%d", 150+mrand.IntN(90), mrand.IntN(256))
		free := true
		for _, hp := range []string{p + ".11:8090", p + ".12:8091", p + ".200:8090", p + ".21:8093"} {
			l, err := net.Listen("tcp", hp)
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			return p
		}
	}
	tb.Fatal("no free 127.A.B prefix found")
	return ""
}

// khaIssue writes a certificate for cn with the given IP SANs, signed by the test CA.
func khaIssue(tb testing.TB, p *konnectivitytest.PKI, dir, name, cn string, ips []net.IP) (certPath, keyPath string, kp tls.Certificate) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.CA, &key.PublicKey, p.CAKey)
	if err != nil {
		tb.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	cp := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	kpem := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	certPath, keyPath = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certPath, cp, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(keyPath, kpem, 0o600); err != nil {
		tb.Fatal(err)
	}
	kp, err = tls.X509KeyPair(cp, kpem)
	if err != nil {
		tb.Fatal(err)
	}
	return certPath, keyPath, kp
}

// startKHA starts the backends, the servers, the agents and the load balancer,
// and waits until every agent is connected to every server.
func startKHA(tb testing.TB, mode string) *khaCluster {
	tb.Helper()
	c := &khaCluster{dir: tb.TempDir(), prefix: khaPrefix(tb), mode: mode}
	pki, err := konnectivitytest.NewPKI()
	if err != nil {
		tb.Fatal(err)
	}
	caPath := filepath.Join(c.dir, "ca.crt")
	if err := os.WriteFile(caPath, pki.CAPEM, 0o600); err != nil {
		tb.Fatal(err)
	}
	var serverIPs []net.IP
	for i := range khaServers {
		serverIPs = append(serverIPs, net.ParseIP(c.ip(11+i)))
	}
	serverIPs = append(serverIPs, net.ParseIP(c.ip(200))) // the load-balanced address
	scert, skey, _ := khaIssue(tb, pki, c.dir, "server", "konnectivity-server", serverIPs)
	acert, akey, _ := khaIssue(tb, pki, c.dir, "agent", "konnectivity-agent", nil)
	_, _, fkp := khaIssue(tb, pki, c.dir, "frontend", "tether-hub", nil)
	c.tls = &tls.Config{Certificates: []tls.Certificate{fkp}, RootCAs: pki.Pool, MinVersion: tls.VersionTLS12}

	// Backends: one per agent, each on its own address.
	for j := range khaAgents {
		l, err := net.Listen("tcp", net.JoinHostPort(c.ip(31+j), "0"))
		if err != nil {
			tb.Fatal(err)
		}
		c.backends = append(c.backends, l.Addr().String())
		var wg sync.WaitGroup
		var mu sync.Mutex
		open := map[net.Conn]struct{}{}
		wg.Go(func() {
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				open[conn] = struct{}{}
				mu.Unlock()
				wg.Go(func() {
					_ = konnectivitytest.Handle(conn)
					conn.Close()
					mu.Lock()
					delete(open, conn)
					mu.Unlock()
				})
			}
		})
		tb.Cleanup(func() {
			l.Close()
			mu.Lock()
			for conn := range open {
				conn.Close()
			}
			mu.Unlock()
			wg.Wait()
		})
	}

	var agentAddrs []string
	for i := range khaServers {
		ip := c.ip(11 + i)
		agentAddrs = append(agentAddrs, net.JoinHostPort(ip, strconv.Itoa(khaAgentPort)))
		c.front = append(c.front, net.JoinHostPort(ip, strconv.Itoa(khaFrontPort)))
		p := &khaProc{name: "server" + strconv.Itoa(i), dir: c.dir, args: []string{"konnectivity-server",
			"--server-id", "kha-server-" + strconv.Itoa(i), "--server-count", strconv.Itoa(khaServers),
			"--mode", mode, "--proxy-strategies", "destHost",
			"--server-bind-address", ip, "--server-port", strconv.Itoa(khaFrontPort),
			"--server-cert", scert, "--server-key", skey, "--server-ca-cert", caPath,
			"--agent-bind-address", ip, "--agent-port", strconv.Itoa(khaAgentPort),
			"--cluster-cert", scert, "--cluster-key", skey, "--cluster-ca-cert", caPath,
			"--health-bind-address", ip, "--health-port", strconv.Itoa(khaHealthPort), "--admin-port", "0"}}
		p.start(tb)
		c.servers = append(c.servers, p)
		tb.Cleanup(p.stop)
	}
	for j := range khaAgents {
		p := &khaProc{name: "agent" + strconv.Itoa(j), dir: c.dir, args: []string{"konnectivity-agent",
			"--proxy-server-addresses", agentAddrs[0] + "," + agentAddrs[1] + "," + agentAddrs[2],
			"--ca-cert", caPath, "--agent-cert", acert, "--agent-key", akey,
			"--agent-id", "kha-agent-" + strconv.Itoa(j), "--agent-identifiers", "ipv4=" + c.ip(31+j),
			"--health-server-host", c.ip(21 + j), "--health-server-port", strconv.Itoa(khaAgentHealth),
			"--admin-server-port", "0"}}
		p.start(tb)
		c.agents = append(c.agents, p)
		tb.Cleanup(p.stop)
	}

	// The one address the frontend is configured with.
	ln, err := net.Listen("tcp", net.JoinHostPort(c.ip(200), strconv.Itoa(khaFrontPort)))
	if err != nil {
		tb.Fatal(err)
	}
	lb, err := tcplb.New(tcplb.Config{Listener: ln, Backends: c.front})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	lbDone := make(chan error, 1)
	go func() { lbDone <- lb.Run(ctx) }()
	tb.Cleanup(func() { cancel(); <-lbDone })
	c.lbAddr = ln.Addr().String()

	deadline := time.Now().Add(60 * time.Second)
	for j := range khaAgents {
		for c.openServerConns(j) != khaServers {
			if time.Now().After(deadline) {
				tb.Fatalf("agent %d not connected to all %d servers within 60s (open=%v)\n%s", j, khaServers,
					c.openServerConns(j), c.agents[j].logTail())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return c
}

// dialer is the frontend's HTTP CONNECT dialer for addr; attempts 0 is the
// client's default (3 on TCP).
func (c *khaCluster) dialer(tb testing.TB, addr string, attempts int) *client.Dialer {
	tb.Helper()
	d, err := client.New(client.Config{Mode: c.mode, Address: addr, TLS: c.tls, DialTimeout: khaDialTimeout,
		DialAttempts: attempts})
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

// echoOnce dials backend j through d, echoes 1 KiB and closes. A failed dial
// is returned as a *khaDialError.
func (c *khaCluster) echoOnce(ctx context.Context, d *client.Dialer, j int) error {
	ctx, cancel := context.WithTimeout(ctx, khaDialTimeout)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", c.backends[j])
	if err != nil {
		return &khaDialError{err}
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	if err := konnectivitytest.Command(conn, konnectivitytest.CmdEcho, 0); err != nil {
		return err
	}
	msg := make([]byte, 1024)
	_, _ = rand.Read(msg)
	return konnectivitytest.EchoRoundTrip(conn, msg)
}

type khaDialError struct{ err error }

func (e *khaDialError) Error() string { return "dial: " + e.err.Error() }
func (e *khaDialError) Unwrap() error { return e.err }

// khaDialRecord is one dial + echo through the load-balanced address.
type khaDialRecord struct {
	start, end time.Time
	err        error
}

// khaDialLoad keeps `workers` goroutines dialling through the load balancer.
type khaDialLoad struct {
	mu      sync.Mutex
	records []khaDialRecord
	stop    chan struct{}
	wg      sync.WaitGroup
}

func (c *khaCluster) startDialLoad(tb testing.TB, workers int, pace time.Duration, attempts int) *khaDialLoad {
	d := c.dialer(tb, c.lbAddr, attempts)
	l := &khaDialLoad{stop: make(chan struct{})}
	deadline := time.Now().Add(10 * time.Minute)
	for w := range workers {
		l.wg.Go(func() {
			for i := 0; time.Now().Before(deadline); i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				r := khaDialRecord{start: time.Now()}
				r.err = c.echoOnce(context.Background(), d, (w+i)%khaAgents)
				r.end = time.Now()
				l.mu.Lock()
				l.records = append(l.records, r)
				l.mu.Unlock()
				select {
				case <-l.stop:
					return
				case <-time.After(pace):
				}
			}
		})
	}
	tb.Cleanup(l.halt)
	return l
}

func (l *khaDialLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

func (l *khaDialLoad) snapshot() []khaDialRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.records)
}

// khaStats summarises the dials around a fault at `at`, up to `until`.
type khaStats struct {
	firstGood time.Duration // fault → end of the first successful dial started after it
	// lastFail is fault → end of the last failed dial or echo (0: none failed).
	lastFail time.Duration
	// Dials + echoes that ended in (at, until]: ok, dial failed, or dialled
	// but broken during the echo (a connection through the killed server).
	ok, failed, broken int
	firstErrors        []error
}

func khaSummarise(recs []khaDialRecord, at, until time.Time) khaStats {
	var s khaStats
	s.firstGood = -1
	for _, r := range recs {
		if !r.end.After(at) || r.end.After(until) {
			continue
		}
		if r.err != nil {
			if _, ok := errors.AsType[*khaDialError](r.err); ok {
				s.failed++
			} else {
				s.broken++
			}
			if d := r.end.Sub(at); d > s.lastFail {
				s.lastFail = d
			}
			if len(s.firstErrors) < 5 {
				s.firstErrors = append(s.firstErrors, r.err)
			}
			continue
		}
		s.ok++
		if r.start.After(at) {
			if d := r.end.Sub(at); s.firstGood < 0 || d < s.firstGood {
				s.firstGood = d
			}
		}
	}
	return s
}

// khaTransfer is a long echo stream of pseudo-random data through one server,
// checked chunk by chunk and by SHA-256 of everything sent and received.
type khaTransfer struct {
	server, agent int
	mu            sync.Mutex
	moved         int64
	err           error
	errAt         time.Time
	sumSent       [32]byte
	sumRecv       [32]byte
	done          chan struct{}
}

func (tr *khaTransfer) bytes() int64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.moved
}

func (c *khaCluster) startTransfer(tb testing.TB, server, agent int, stop <-chan struct{}) *khaTransfer {
	tb.Helper()
	tr := &khaTransfer{server: server, agent: agent, done: make(chan struct{})}
	d := c.dialer(tb, c.front[server], 1)
	ctx, cancel := context.WithTimeout(context.Background(), khaDialTimeout)
	conn, err := d.DialContext(ctx, "tcp", c.backends[agent])
	cancel()
	if err != nil {
		tb.Fatalf("transfer via server %d to agent %d: %v", server, agent, err)
	}
	if err := konnectivitytest.Command(conn, konnectivitytest.CmdEcho, 0); err != nil {
		tb.Fatal(err)
	}
	go func() {
		defer close(tr.done)
		defer conn.Close()
		rng := mrand.NewChaCha8([32]byte{byte(server), byte(agent), 42})
		hs, hr := sha256.New(), sha256.New()
		out := make([]byte, khaChunk)
		in := make([]byte, khaChunk)
		fail := func(err error) {
			tr.mu.Lock()
			tr.err, tr.errAt = err, time.Now()
			tr.mu.Unlock()
		}
		deadline := time.Now().Add(10 * time.Minute)
		for time.Now().Before(deadline) {
			select {
			case <-stop:
				tr.mu.Lock()
				copy(tr.sumSent[:], hs.Sum(nil))
				copy(tr.sumRecv[:], hr.Sum(nil))
				tr.mu.Unlock()
				return
			case <-time.After(khaTransferPace):
			}
			_, _ = rng.Read(out)
			_ = conn.SetDeadline(time.Now().Add(30 * time.Second)) // bounded: a hang is a failure too
			if _, err := conn.Write(out); err != nil {
				fail(fmt.Errorf("write: %w", err))
				return
			}
			hs.Write(out)
			got := 0
			for got < len(in) {
				n, err := conn.Read(in[got:])
				got += n
				if err != nil {
					fail(fmt.Errorf("read: %w", err))
					return
				}
			}
			hr.Write(in)
			if !bytes.Equal(in, out) {
				fail(errors.New("echoed data differs from what was sent"))
				return
			}
			tr.mu.Lock()
			tr.moved += int64(len(in))
			tr.mu.Unlock()
		}
		fail(errors.New("transfer ran into its 10 min bound"))
	}()
	return tr
}

// waitAgents waits until every agent has `want` open server connections and
// returns how long after `since` that was first seen for the slowest agent.
func (c *khaCluster) waitAgents(tb testing.TB, want float64, since time.Time, bound time.Duration) time.Duration {
	tb.Helper()
	deadline := since.Add(bound)
	for j := range khaAgents {
		for c.openServerConns(j) != want {
			if time.Now().After(deadline) {
				tb.Fatalf("agent %d: open server connections %v, want %v, %s after the fault\n%s", j,
					c.openServerConns(j), want, bound, c.agents[j].logTail())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return time.Since(since)
}

// waitListening polls server i's health port until it answers and returns
// the time since `since` (process start-up: the floor under any reconnect).
func (c *khaCluster) waitListening(tb testing.TB, i int, since time.Time, bound time.Duration) time.Duration {
	tb.Helper()
	hc := &http.Client{Timeout: time.Second}
	url := "http://" + net.JoinHostPort(c.ip(11+i), strconv.Itoa(khaHealthPort)) + "/healthz"
	for {
		resp, err := hc.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(since)
			}
		}
		if time.Since(since) > bound {
			tb.Fatalf("server %d not listening %s after its start: %v\n%s", i, bound, err, c.servers[i].logTail())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitServerUsed dials every backend through server i directly until both
// succeed; it returns the time from `since` to the last first success.
func (c *khaCluster) waitServerUsed(tb testing.TB, i int, since time.Time, bound time.Duration) time.Duration {
	tb.Helper()
	d := c.dialer(tb, c.front[i], 1)
	deadline := since.Add(bound)
	var last time.Duration
	for j := range khaAgents {
		var err error
		for {
			if err = c.echoOnce(context.Background(), d, j); err == nil {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("no dial through restarted server %d to agent %d within %s: %v\n%s", i, j, bound, err,
					c.servers[i].logTail())
			}
			time.Sleep(5 * time.Millisecond)
		}
		last = max(last, time.Since(since))
	}
	return last
}

// TestKonnectivityServerKilledUnderLoad is issue 10's "kill a Konnectivity
// server → new dials succeed through the others within 2 s", under load:
// long echo transfers pinned to every server and a steady stream of new dials
// through the load-balanced address; then the killed server is restarted and
// must be used again.
func TestKonnectivityServerKilledUnderLoad(t *testing.T) {
	for _, mode := range []string{client.ModeHTTPConnect, client.ModeGRPC} {
		t.Run(mode, func(t *testing.T) { khaKillUnderLoad(t, mode) })
	}
}

func khaKillUnderLoad(t *testing.T, mode string) {
	c := startKHA(t, mode)
	stopTransfers := make(chan struct{})
	var transfers []*khaTransfer
	for i := range khaServers {
		for j := range khaAgents {
			transfers = append(transfers, c.startTransfer(t, i, j, stopTransfers))
		}
	}
	t.Cleanup(func() {
		select {
		case <-stopTransfers:
		default:
			close(stopTransfers)
		}
		for _, tr := range transfers {
			<-tr.done
		}
	})
	load := c.startDialLoad(t, 3, 10*time.Millisecond, 0)
	konnectivitytest.Eventually(t, 60*time.Second, "load running: every transfer ≥ 256 KiB, ≥ 30 dials", func() bool {
		for _, tr := range transfers {
			if tr.bytes() < 256<<10 {
				return false
			}
		}
		return khaSummarise(load.snapshot(), time.Time{}, time.Now()).ok >= 30
	})
	if s := khaSummarise(load.snapshot(), time.Time{}, time.Now()); s.failed+s.broken > 0 {
		t.Fatalf("dials failed before any fault: %d+%d (%v)", s.failed, s.broken, s.firstErrors)
	}

	const victim = 0
	before := make([]int64, len(transfers))
	for k, tr := range transfers {
		before[k] = tr.bytes()
	}
	killAt := c.servers[victim].kill(t)
	notice := c.waitAgents(t, khaServers-1, killAt, 10*time.Second)

	// The killed server's transfers end with an error (not EOF), promptly.
	for _, tr := range transfers {
		if tr.server != victim {
			continue
		}
		select {
		case <-tr.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("transfer via the killed server (agent %d) still running 10s after the kill", tr.agent)
		}
		tr.mu.Lock()
		err, errAt := tr.err, tr.errAt
		tr.mu.Unlock()
		if err == nil || errors.Is(err, io.EOF) {
			t.Errorf("transfer via the killed server (agent %d) ended with %v, want an error that is not EOF", tr.agent, err)
		} else if d := errAt.Sub(killAt); d > 2*time.Second {
			t.Errorf("transfer via the killed server (agent %d) failed only %s after the kill", tr.agent, d)
		} else {
			t.Logf("transfer via killed server, agent %d: failed %s after the kill: %v", tr.agent, errAt.Sub(killAt).Round(time.Millisecond), err)
		}
	}

	// Keep the load on for a while with the server down: at least 3 s and
	// 50 successful dials that started ≥ 2 s after the kill.
	konnectivitytest.Eventually(t, 60*time.Second, "dials with one server down", func() bool {
		if time.Since(killAt) < 3*time.Second {
			return false
		}
		n := 0
		for _, r := range load.snapshot() {
			if r.err == nil && r.start.After(killAt.Add(2*time.Second)) {
				n++
			}
		}
		return n >= 50
	})
	restartAt := time.Now()
	down := khaSummarise(load.snapshot(), killAt, restartAt)
	t.Logf("kill → agents noticed: %s; kill → first good dial: %s; kill → last failed dial: %s; dials while down: %d ok, %d dials failed, %d connections broken %v",
		notice.Round(time.Millisecond), down.firstGood.Round(time.Microsecond), down.lastFail.Round(time.Millisecond), down.ok, down.failed, down.broken, down.firstErrors)
	if down.firstGood < 0 || down.firstGood > 2*time.Second {
		t.Errorf("kill → first successful dial: %s, want ≤ 2s", down.firstGood)
	}
	if down.lastFail > 2*time.Second {
		t.Errorf("kill → last failed dial: %s, want ≤ 2s (%v)", down.lastFail, down.firstErrors)
	}
	// Connections through the killed server break (counted as broken); a new
	// dial caught by the kill is retried on another server by the dialer.
	if down.failed > 0 {
		t.Errorf("%d dials failed after the kill (the dialer should have retried them elsewhere): %v", down.failed, down.firstErrors)
	}

	// Surviving transfers kept going.
	for k, tr := range transfers {
		if tr.server == victim {
			continue
		}
		if got := tr.bytes() - before[k]; got < 256<<10 {
			t.Errorf("transfer via server %d to agent %d moved only %d bytes after the kill", tr.server, tr.agent, got)
		}
	}

	// Restart: the agents reconnect and the server carries dials again.
	c.servers[victim].start(t)
	listening := c.waitListening(t, victim, restartAt, 60*time.Second)
	reconnect := c.waitAgents(t, khaServers, restartAt, 60*time.Second)
	reused := c.waitServerUsed(t, victim, restartAt, 60*time.Second)
	// And the load keeps working through the load balancer afterwards.
	afterRestart := time.Now()
	konnectivitytest.Eventually(t, 60*time.Second, "dials after the restart", func() bool {
		return time.Since(afterRestart) > 6*time.Second && khaSummarise(load.snapshot(), afterRestart, time.Now()).ok >= 50
	})
	load.halt()
	up := khaSummarise(load.snapshot(), restartAt, time.Now())
	t.Logf("restart → listening: %s; → agents reconnected: %s; → dials through it work: %s; dials after restart: %d ok, %d dials failed, %d connections broken %v",
		listening.Round(time.Millisecond), reconnect.Round(time.Millisecond), reused.Round(time.Millisecond), up.ok, up.failed, up.broken, up.firstErrors)
	if up.failed+up.broken > 0 {
		t.Errorf("%d dials and %d connections through the load balancer failed after the restart: %v", up.failed, up.broken, up.firstErrors)
	}

	close(stopTransfers)
	for _, tr := range transfers {
		<-tr.done
		if tr.server == victim {
			continue
		}
		tr.mu.Lock()
		err, sent, recv, moved := tr.err, tr.sumSent, tr.sumRecv, tr.moved
		tr.mu.Unlock()
		if err != nil {
			t.Errorf("transfer via surviving server %d to agent %d: %v", tr.server, tr.agent, err)
			continue
		}
		if sent != recv {
			t.Errorf("transfer via server %d to agent %d: checksum of received data differs", tr.server, tr.agent)
		}
		t.Logf("transfer via server %d to agent %d: %d KiB, sha256 %x… matches", tr.server, tr.agent, moved>>10, sent[:6])
	}
}

// BenchmarkKonnectivityFailover repeats, under a steady stream of dials
// through the load-balanced address: SIGKILL one of three servers (in turn),
// keep it down for 2 s, restart it. Reported over the iterations (p50 and
// max): kill → end of the first successful dial started after the kill,
// kill → end of the last failed dial or echo (0 when none failed), restart →
// the new process listens (the same-run floor for the next two), restart →
// both agents reconnected, restart → dials through the restarted server work
// again (behind the load balancer it gets new connections once its 5 s rest
// ends). A second dialer with DialAttempts 1 (no retries, like upstream's
// konnectivity-client) runs alongside as the baseline: *-noretry.
//
//	go test -run '^$' -bench KonnectivityFailover -benchtime 10x ./e2e/
func BenchmarkKonnectivityFailover(b *testing.B) {
	for _, mode := range []string{client.ModeHTTPConnect, client.ModeGRPC} {
		b.Run(mode, func(b *testing.B) { benchKHAFailover(b, mode) })
	}
}

func benchKHAFailover(b *testing.B, mode string) {
	c := startKHA(b, mode)
	load := c.startDialLoad(b, 3, 10*time.Millisecond, 0)
	// Same run, same faults: a frontend that never retries (DialAttempts 1,
	// like upstream's konnectivity-client) — the baseline.
	plain := c.startDialLoad(b, 3, 10*time.Millisecond, 1)
	deadline := time.Now().Add(60 * time.Second)
	for khaSummarise(load.snapshot(), time.Time{}, time.Now()).ok < 30 || khaSummarise(plain.snapshot(), time.Time{}, time.Now()).ok < 30 {
		if time.Now().After(deadline) {
			b.Fatal("dial load did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	const downFor = 2 * time.Second
	var firstGood, lastFail, firstGoodPlain, lastFailPlain, listening, reconnect, reused []float64
	b.ResetTimer()
	for i := range b.N {
		victim := i % khaServers
		killAt := c.servers[victim].kill(b)
		c.waitAgents(b, khaServers-1, killAt, 10*time.Second)
		// Down for downFor, and until a dial started after the kill succeeded.
		for {
			s := khaSummarise(load.snapshot(), killAt, time.Now())
			if time.Since(killAt) >= downFor && s.firstGood >= 0 {
				break
			}
			if time.Since(killAt) > 60*time.Second {
				b.Fatalf("no successful dial within 60s of killing server %d: %v", victim, s.firstErrors)
			}
			time.Sleep(5 * time.Millisecond)
		}
		restartAt := time.Now()
		s := khaSummarise(load.snapshot(), killAt, restartAt)
		firstGood = append(firstGood, s.firstGood.Seconds())
		lastFail = append(lastFail, s.lastFail.Seconds())
		sp := khaSummarise(plain.snapshot(), killAt, restartAt)
		firstGoodPlain = append(firstGoodPlain, sp.firstGood.Seconds())
		lastFailPlain = append(lastFailPlain, sp.lastFail.Seconds())
		c.servers[victim].start(b)
		listening = append(listening, c.waitListening(b, victim, restartAt, 60*time.Second).Seconds())
		reconnect = append(reconnect, c.waitAgents(b, khaServers, restartAt, 60*time.Second).Seconds())
		reused = append(reused, c.waitServerUsed(b, victim, restartAt, 60*time.Second).Seconds())
	}
	b.StopTimer()
	load.halt()
	plain.halt()
	after := khaSummarise(load.snapshot(), time.Time{}, time.Now())
	afterPlain := khaSummarise(plain.snapshot(), time.Time{}, time.Now())
	report := func(name string, v []float64) {
		slices.Sort(v)
		b.ReportMetric(v[len(v)/2], name+"-p50")
		b.ReportMetric(v[len(v)-1], name+"-max")
	}
	report("s-kill-first-dial", firstGood)
	report("s-kill-last-fail", lastFail)
	report("s-kill-first-dial-noretry", firstGoodPlain)
	report("s-kill-last-fail-noretry", lastFailPlain)
	report("s-restart-listening", listening)
	report("s-restart-agents", reconnect)
	report("s-restart-reused", reused)
	b.ReportMetric(float64(after.failed), "failed-dials")
	b.ReportMetric(float64(after.broken), "broken-conns")
	b.ReportMetric(float64(after.ok), "ok-dials")
	b.ReportMetric(float64(afterPlain.failed), "failed-dials-noretry")
	b.ReportMetric(float64(afterPlain.broken), "broken-conns-noretry")
	b.ReportMetric(float64(afterPlain.ok), "ok-dials-noretry")
}

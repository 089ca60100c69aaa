package sshtunnel

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func newSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// echoServer echoes every connection until the test ends.
func echoServer(t testing.TB) *net.TCPAddr {
	t.Helper()
	return serveTCP(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// sourceServer reads an 8-byte length and writes that many bytes.
func sourceServer(t testing.TB) *net.TCPAddr {
	t.Helper()
	buf := make([]byte, 256<<10)
	return serveTCP(t, func(c net.Conn) {
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := int64(binary.BigEndian.Uint64(hdr[:]))
		for n > 0 {
			m := min(n, int64(len(buf)))
			if _, err := c.Write(buf[:m]); err != nil {
				return
			}
			n -= m
		}
	})
}

func serveTCP(t testing.TB, handle func(net.Conn)) *net.TCPAddr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr)
}

// startEndpoint runs our restricted endpoint on loopback.
func startEndpoint(t testing.TB, hostKey ssh.Signer, hub ssh.PublicKey, dest Destinations) *net.TCPAddr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep, err := NewEndpoint(EndpointConfig{Listener: ln, HostKey: hostKey, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ep.SetAuthorizedKeys(hub)
	ep.SetDestinations(dest)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ep.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("endpoint: %v", err)
		}
	})
	return ln.Addr().(*net.TCPAddr)
}

// fakeNodes is a mutable node list.
type fakeNodes struct {
	mu    sync.Mutex
	nodes []corev1.Node
}

func (f *fakeNodes) list(context.Context) ([]corev1.Node, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]corev1.Node(nil), f.nodes...), nil
}

func (f *fakeNodes) set(nodes ...corev1.Node) {
	f.mu.Lock()
	f.nodes = nodes
	f.mu.Unlock()
}

func testNode(name string, sshPort int, hostKey ssh.PublicKey) corev1.Node {
	n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{PortAnnotation: strconv.Itoa(sshPort)}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}}}}
	if hostKey != nil {
		n.Annotations[HostKeyAnnotation] = AuthorizedKey(hostKey)
	}
	return n
}

func startTunneler(t testing.TB, cfg Config) *Tunneler {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	tun, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tun.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("tunneler: %v", err)
		}
	})
	return tun
}

func echoOnce(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != msg {
		t.Fatalf("echo: got %q want %q", got, msg)
	}
}

// setup: echo server, our endpoint allowing only the echo port, tunneler.
func setup(t testing.TB) (*Tunneler, *net.TCPAddr, ssh.Signer, *net.TCPAddr, *fakeNodes) {
	return setupWith(t, echoServer(t))
}

// setupWith: our endpoint allowing only echo's port, and a tunneler.
func setupWith(t testing.TB, echo *net.TCPAddr) (*Tunneler, *net.TCPAddr, ssh.Signer, *net.TCPAddr, *fakeNodes) {
	hub, host := newSigner(t), newSigner(t)
	ip := netip.MustParseAddr("127.0.0.1")
	sshAddr := startEndpoint(t, host, hub.PublicKey(), Destinations{IPs: []netip.Addr{ip}, Ports: []uint16{uint16(echo.Port)}})
	nodes := &fakeNodes{}
	nodes.set(testNode("node-a", sshAddr.Port, host.PublicKey()))
	tun := startTunneler(t, Config{Signer: hub, Nodes: nodes.list})
	return tun, echo, hub, sshAddr, nodes
}

func TestTunnelThroughEndpoint(t *testing.T) {
	tun, echo, _, _, _ := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range 3 {
		c, err := tun.DialContext(ctx, "tcp", echo.String())
		if err != nil {
			t.Fatal(err)
		}
		echoOnce(t, c, fmt.Sprintf("hello %d", i))
		c.Close()
	}
	if _, err := tun.DialContext(ctx, "tcp", "10.255.255.1:80"); err == nil || !strings.Contains(err.Error(), "no node owns") {
		t.Fatalf("unknown IP: %v", err)
	}
}

func TestHostKeySwapped(t *testing.T) {
	tun, echo, _, sshAddr, nodes := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The node "publishes" another key than the one its server presents.
	impostor := newSigner(t)
	nodes.set(testNode("node-a", sshAddr.Port, impostor.PublicKey()))
	_, err := tun.DialContext(ctx, "tcp", echo.String())
	var mm *HostKeyMismatchError
	if !errors.As(err, &mm) {
		t.Fatalf("want HostKeyMismatchError, got %v", err)
	}
	if mm.Node != "node-a" || !strings.Contains(mm.Want, ssh.FingerprintSHA256(impostor.PublicKey())) || !strings.HasPrefix(mm.Got, "SHA256:") {
		t.Fatalf("unclear error: %v", err)
	}
	t.Log(err)
}

func TestHostKeyRotationRereadsAnnotation(t *testing.T) {
	hub, oldKey, newKey := newSigner(t), newSigner(t), newSigner(t)
	echo := echoServer(t)
	sshAddr := startEndpoint(t, newKey, hub.PublicKey(), Destinations{IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Ports: []uint16{uint16(echo.Port)}})
	nodes := &fakeNodes{}
	nodes.set(testNode("node-a", sshAddr.Port, oldKey.PublicKey()))
	tun := startTunneler(t, Config{Signer: hub, Nodes: nodes.list, ResyncInterval: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Prime the cache with the old key, then rotate on the "API server".
	if err := tun.resync(ctx); err != nil {
		t.Fatal(err)
	}
	nodes.set(testNode("node-a", sshAddr.Port, newKey.PublicKey()))
	c, err := tun.DialContext(ctx, "tcp", echo.String())
	if err != nil {
		t.Fatalf("rotated key not picked up: %v", err)
	}
	echoOnce(t, c, "rotated")
	c.Close()
}

func TestNoPublishedKeyRefused(t *testing.T) {
	tun, echo, _, sshAddr, nodes := setup(t)
	nodes.set(testNode("node-a", sshAddr.Port, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := tun.resync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tun.DialContext(ctx, "tcp", echo.String()); err == nil || !strings.Contains(err.Error(), "publishes no SSH host key") {
		t.Fatalf("want refusal, got %v", err)
	}
}

func TestWrongHubKey(t *testing.T) {
	_, echo, _, sshAddr, nodes := setup(t)
	other := startTunneler(t, Config{Signer: newSigner(t), Nodes: nodes.list})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := other.DialContext(ctx, "tcp", echo.String())
	if err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Fatalf("want auth failure, got %v", err)
	}
	_ = sshAddr
}

// rawClient logs into our endpoint with the hub key, bypassing the Tunneler.
func rawClient(t *testing.T, addr *net.TCPAddr, hub ssh.Signer) *ssh.Client {
	t.Helper()
	c, err := ssh.Dial("tcp", addr.String(), &ssh.ClientConfig{User: "x", Auth: []ssh.AuthMethod{ssh.PublicKeys(hub)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestEndpointRefuses(t *testing.T) {
	_, echo, hub, sshAddr, _ := setup(t)
	c := rawClient(t, sshAddr, hub)
	if _, err := c.NewSession(); err == nil {
		t.Fatal("session accepted")
	}
	for _, typ := range []string{"session", "x11", "auth-agent@openssh.com", "forwarded-tcpip", "direct-streamlocal@openssh.com"} {
		if _, _, err := c.OpenChannel(typ, nil); err == nil || !strings.Contains(err.Error(), "only direct-tcpip") {
			t.Errorf("%s: %v", typ, err)
		}
	}
	// Forbidden destinations: another port on the node, a name, loopback v6.
	for _, addr := range []string{"127.0.0.1:22", "127.0.0.1:" + strconv.Itoa(echo.Port+1), "[::1]:" + strconv.Itoa(echo.Port)} {
		if _, err := c.Dial("tcp", addr); err == nil || !strings.Contains(err.Error(), "not allowed") {
			t.Errorf("%s: %v", addr, err)
		}
	}
	if _, err := c.Dial("tcp", "localhost:"+strconv.Itoa(echo.Port)); err == nil || !strings.Contains(err.Error(), "not an IP") {
		t.Errorf("name destination: %v", err)
	}
	// Malformed payloads.
	for _, p := range [][]byte{nil, {0, 0, 0}, {0xff, 0xff, 0xff, 0xff}, append(ssh.Marshal(struct {
		H  string
		P  uint32
		O  string
		OP uint32
	}{"127.0.0.1", uint32(echo.Port), "x", 1}), 0)} {
		if _, _, err := c.OpenChannel("direct-tcpip", p); err == nil || !strings.Contains(err.Error(), "malformed") {
			t.Errorf("payload %x: %v", p, err)
		}
	}
	// Remote forwarding.
	if _, err := c.Listen("tcp", "127.0.0.1:0"); err == nil {
		t.Error("tcpip-forward accepted")
	}
	// Keepalives work, and the allowed destination still works.
	if ok, _, err := c.SendRequest("keepalive@openssh.com", true, nil); err != nil || !ok {
		t.Errorf("keepalive: %v %v", ok, err)
	}
	conn, err := c.Dial("tcp", echo.String())
	if err != nil {
		t.Fatal(err)
	}
	echoOnce(t, conn, "still fine")
	conn.Close()
}

func TestAuthRateLimit(t *testing.T) {
	hub, host := newSigner(t), newSigner(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep, err := NewEndpoint(EndpointConfig{Listener: ln, HostKey: host, MaxAuthFailures: 2, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ep.SetAuthorizedKeys(hub.PublicKey())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ep.Run(ctx) }()
	defer func() { cancel(); <-done }()
	dial := func(s ssh.Signer) error {
		c, err := ssh.Dial("tcp", ln.Addr().String(), &ssh.ClientConfig{User: "x", Auth: []ssh.AuthMethod{ssh.PublicKeys(s)},
			HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second})
		if err == nil {
			c.Close()
		}
		return err
	}
	bad := newSigner(t)
	for range 2 {
		if err := dial(bad); err == nil {
			t.Fatal("bad key accepted")
		}
	}
	// Budget exhausted: even the right key is dropped before the handshake.
	if err := dial(hub); err == nil {
		t.Fatal("rate limit not applied")
	}
}

func TestManyConcurrentChannels(t *testing.T) {
	tun, echo, _, _, _ := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 1000
	conns := make([]net.Conn, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := tun.DialContext(ctx, "tcp", echo.String())
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
			msg := fmt.Sprintf("channel %d", i)
			if _, err := io.WriteString(c, msg); err != nil {
				errs <- err
				return
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
				errs <- fmt.Errorf("channel %d: %q %v", i, got, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// All n were open at once on one connection.
	tun.mu.Lock()
	if len(tun.tunnels) != 1 {
		t.Errorf("%d tunnels, want 1", len(tun.tunnels))
	}
	tun.mu.Unlock()
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

func TestDeletedNodeTunnelRemoved(t *testing.T) {
	tun, echo, _, _, nodes := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := tun.DialContext(ctx, "tcp", echo.String())
	if err != nil {
		t.Fatal(err)
	}
	nodes.set()
	if err := tun.resync(ctx); err != nil {
		t.Fatal(err)
	}
	// The shared connection is closed: the open channel ends.
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("channel survived node deletion: %v", err)
	}
	if _, err := tun.DialContext(ctx, "tcp", echo.String()); err == nil {
		t.Fatal("dial to deleted node succeeded")
	}
}

// sshd is a test-owned OpenSSH server on a free loopback port.
type sshd struct {
	port    int
	hostPub ssh.PublicKey
	hostLn  string // known_hosts line
}

func startOpenSSH(t testing.TB, hub ssh.PublicKey, permitOpen string) *sshd {
	t.Helper()
	const bin = "/usr/sbin/sshd"
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s not found (%v): apt-get install openssh-server", bin, err)
	}
	if os.Geteuid() == 0 {
		// sshd's compiled-in privilege separation directory.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	hostKey := filepath.Join(dir, "ssh_host_ed25519_key")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	pubB, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	hostPub, err := ParseAuthorizedKey(string(pubB))
	if err != nil {
		t.Fatal(err)
	}
	auth := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(auth, []byte(AuthorizedKey(hub)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A free port: bind, note, release (sshd binds it right after).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cfg := filepath.Join(dir, "sshd_config")
	conf := fmt.Sprintf(`ListenAddress 127.0.0.1:%d
HostKey %s
PidFile %s
AuthorizedKeysFile %s
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding local
PermitOpen %s
AllowAgentForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTunnel no
PermitTTY no
ForceCommand /bin/false
ClientAliveInterval 15
`, port, hostKey, filepath.Join(dir, "sshd.pid"), auth, permitOpen)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-t", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("sshd -t: %v: %s", err, out)
	}
	cmd := exec.Command(bin, "-D", "-e", "-f", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			t.Logf("sshd: %s", sc.Text())
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-logDone
		_ = cmd.Wait()
	})
	// Ready when the port accepts connections (bounded).
	deadline := time.Now().Add(15 * time.Second)
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 200*time.Millisecond) {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd not listening on %d: %v", port, err)
		}
		time.Sleep(delay)
	}
	return &sshd{port: port, hostPub: hostPub,
		hostLn: fmt.Sprintf("[127.0.0.1]:%d %s\n", port, AuthorizedKey(hostPub))}
}

func currentUser(t testing.TB) string {
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

func TestOpenSSHInterop(t *testing.T) {
	hub := newSigner(t)
	echo := echoServer(t)
	srv := startOpenSSH(t, hub.PublicKey(), echo.String())
	known := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(known, []byte(srv.hostLn), 0o600); err != nil {
		t.Fatal(err)
	}
	nodes := &fakeNodes{}
	nodes.set(testNode("node-ssh", srv.port, nil)) // key only in known_hosts
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("known_hosts", func(t *testing.T) {
		tun := startTunneler(t, Config{User: currentUser(t), Signer: hub, Nodes: nodes.list, KnownHostsFile: known})
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := tun.DialContext(ctx, "tcp", echo.String())
				if err != nil {
					t.Error(err)
					return
				}
				defer c.Close()
				echoOnce(t, c, fmt.Sprintf("via openssh %d", i))
			}()
		}
		wg.Wait()
		// PermitOpen refuses other destinations.
		if _, err := tun.DialContext(ctx, "tcp", "127.0.0.1:"+strconv.Itoa(srv.port)); err == nil {
			t.Error("sshd allowed a destination outside PermitOpen")
		}
	})
	t.Run("annotation", func(t *testing.T) {
		n := testNode("node-ssh", srv.port, srv.hostPub)
		nodes := &fakeNodes{}
		nodes.set(n)
		tun := startTunneler(t, Config{User: currentUser(t), Signer: hub, Nodes: nodes.list})
		c, err := tun.DialContext(ctx, "tcp", echo.String())
		if err != nil {
			t.Fatal(err)
		}
		echoOnce(t, c, "annotation")
		c.Close()
	})
	t.Run("swapped host key", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "known_hosts")
		line := fmt.Sprintf("[127.0.0.1]:%d %s\n", srv.port, AuthorizedKey(newSigner(t).PublicKey()))
		if err := os.WriteFile(bad, []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
		tun := startTunneler(t, Config{User: currentUser(t), Signer: hub, Nodes: nodes.list, KnownHostsFile: bad})
		_, err := tun.DialContext(ctx, "tcp", echo.String())
		var mm *HostKeyMismatchError
		if !errors.As(err, &mm) || mm.Node != "node-ssh" {
			t.Fatalf("want mismatch, got %v", err)
		}
		t.Log(err)
	})
	t.Run("wrong hub key", func(t *testing.T) {
		tun := startTunneler(t, Config{User: currentUser(t), Signer: newSigner(t), Nodes: nodes.list, KnownHostsFile: known})
		if _, err := tun.DialContext(ctx, "tcp", echo.String()); err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
			t.Fatalf("want auth failure, got %v", err)
		}
	})
}

func TestNodeForSharedIP(t *testing.T) {
	a, b := testNode("a", 1, nil), testNode("b", 2, nil)
	a.Status.DaemonEndpoints.KubeletEndpoint.Port = 10250
	b.Status.DaemonEndpoints.KubeletEndpoint.Port = 10251
	b.Spec.PodCIDRs = []string{"10.244.1.0/24"}
	tun, err := New(Config{Signer: newSigner(t), Nodes: (&fakeNodes{}).list})
	if err != nil {
		t.Fatal(err)
	}
	tun.nodes = []corev1.Node{a, b}
	for _, tt := range []struct {
		ip   string
		port int
		want string
		ok   bool
	}{{"127.0.0.1", 10251, "b", true}, {"127.0.0.1", 10250, "a", true}, {"127.0.0.1", 8080, "a", true}, {"10.244.1.7", 80, "b", true}, {"10.9.9.9", 80, "", false}} {
		n, ok := tun.nodeFor(net.ParseIP(tt.ip), tt.port)
		if ok != tt.ok || n.Name != tt.want {
			t.Errorf("%s:%d → %q %v, want %q", tt.ip, tt.port, n.Name, ok, tt.want)
		}
	}
}

func TestEndpointIdleTimeout(t *testing.T) {
	hub, host := newSigner(t), newSigner(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep, err := NewEndpoint(EndpointConfig{Listener: ln, HostKey: host, IdleTimeout: 300 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ep.SetAuthorizedKeys(hub.PublicKey())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ep.Run(ctx) }()
	defer func() { cancel(); <-done }()
	c := rawClient(t, ln.Addr().(*net.TCPAddr), hub)
	closed := make(chan struct{})
	go func() { _ = c.Wait(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(15 * time.Second):
		t.Fatal("idle connection not closed")
	}
}

package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestSSHEgress runs `tether up --nodes 2 --egress=ssh` (every node runs the
// restricted SSH endpoint) and drives logs, exec, attach, port-forward and
// the node proxy through the tunnels with a real kubectl; the pod and
// service proxies work when the pod IP is in the node's pod CIDR and are
// refused with a clear error otherwise (host-network pods). The endpoint
// refuses other keys, sessions and forbidden ports; a node whose published
// host key does not match what its endpoint presents is refused and kubectl
// says why.
func TestSSHEgress(t *testing.T) {
	dir, _ := startUp(t, "--nodes", "2", "--egress=ssh")
	paths := installedKubectls(t)
	k := newKubectl(t, paths[len(paths)-1], &hub{Kubeconfig: filepath.Join(dir, "admin.kubeconfig")})

	for _, n := range []string{"node-1", "node-2"} {
		if ann := k.ok(t, "get", "node", n, "-o", `jsonpath={.metadata.annotations.tether\.io/ssh-host-key}`); !strings.HasPrefix(ann, "ssh-ed25519 ") {
			t.Fatalf("%s publishes no host key: %q", n, ann)
		}
	}
	if log, _ := os.ReadFile(filepath.Join(dir, "tether.log")); !strings.Contains(string(log), "SSH tunnels are deprecated") {
		t.Errorf("no deprecation line in the log:\n%s", log)
	}
	cs := (&hub{Kubeconfig: filepath.Join(dir, "admin.kubeconfig")}).Client(t)
	node, other := "node-1", "node-2"
	n, err := cs.CoreV1().Nodes().Get(testContext(t, 30*time.Second), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var nodeIP string
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			nodeIP = a.Address
		}
	}
	httpPort, err := freePortOn(nodeIP)
	if err != nil {
		t.Fatal(err)
	}
	httpsPort, err := freePortOn(nodeIP)
	if err != nil {
		t.Fatal(err)
	}
	w := startSSHWorkload(t, cs, node, nodeIP, httpPort, httpsPort)
	w.kubeletPaths(t, k)
	t.Run("pod-and-service-proxy", func(t *testing.T) {
		// The endpoint allows the node's pod CIDR; a pod on the host
		// network (its IP is the node's) is refused, and kubectl says why.
		n, err := cs.CoreV1().Nodes().Get(testContext(t, 30*time.Second), node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		allowed := inPodCIDR(n, w.podIP)
		t.Logf("pod IP %s, pod CIDR %q: allowed %v", w.podIP, n.Spec.PodCIDR, allowed)
		w.podProxy(t, k, allowed, "administratively prohibited")
	})
	t.Run("endpoint-refuses", func(t *testing.T) {
		probeEndpoint(t, n, filepath.Join(dir, "pki", "ssh_hub_ed25519"))
	})

	// The other node has no tunnel yet: make its trusted key wrong.
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	bogus := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	k.ok(t, "annotate", "--overwrite", "node", other, "tether.io/ssh-host-key="+bogus)
	msg := k.fails(t, "get", "--raw", "/api/v1/nodes/"+other+"/proxy/healthz")
	if !strings.Contains(msg, "host key") || !strings.Contains(msg, other) {
		t.Fatalf("kubectl does not say why: %s", msg)
	}
	t.Logf("swapped key: %s", strings.TrimSpace(msg))
}

// probeEndpoint talks SSH to node n's built-in endpoint as the hub would
// and as an attacker would: a key other than the hub's fails to
// authenticate; with the hub key, a session (shell/exec) and a channel to a
// port other than the kubelet's are refused, the kubelet port is allowed.
func probeEndpoint(t *testing.T, n *corev1.Node, hubKeyFile string) {
	var ip string
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			ip = a.Address
		}
	}
	sshPort := n.Annotations["tether.io/ssh-port"]
	addr := net.JoinHostPort(ip, sshPort)
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(n.Annotations["tether.io/ssh-host-key"]))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(hubKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	hubKey, err := ssh.ParsePrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	wrong, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	conf := func(s ssh.Signer) *ssh.ClientConfig {
		return &ssh.ClientConfig{User: "tether", Auth: []ssh.AuthMethod{ssh.PublicKeys(s)},
			HostKeyCallback: ssh.FixedHostKey(hostKey), Timeout: 10 * time.Second}
	}
	if c, err := ssh.Dial("tcp", addr, conf(wrong)); err == nil {
		c.Close()
		t.Fatal("a key other than the hub's logged in")
	} else if !strings.Contains(err.Error(), "unable to authenticate") {
		t.Fatalf("wrong key: %v", err)
	} else {
		t.Logf("wrong hub key: %v", err)
	}
	c, err := ssh.Dial("tcp", addr, conf(hubKey))
	if err != nil {
		t.Fatalf("hub key: %v", err)
	}
	defer c.Close()
	if s, err := c.NewSession(); err == nil {
		s.Close()
		t.Fatal("session channel accepted (shell/exec possible)")
	} else {
		wantContains(t, "session refused", err.Error(), "administratively prohibited")
	}
	if ch, _, err := c.OpenChannel("x11", nil); err == nil {
		ch.Close()
		t.Fatal("x11 channel accepted")
	}
	if ok, _, err := c.SendRequest("tcpip-forward", true, ssh.Marshal(struct {
		Addr string
		Port uint32
	}{"127.0.0.1", 0})); ok || err != nil {
		t.Fatalf("tcpip-forward: ok %v, err %v", ok, err)
	}
	if conn, err := c.Dial("tcp", addr); err == nil {
		conn.Close()
		t.Fatal("direct-tcpip to the SSH port (not the kubelet's) accepted")
	} else {
		wantContains(t, "forbidden port refused", err.Error(), "administratively prohibited", "not allowed")
	}
	kubelet := net.JoinHostPort(ip, strconv.Itoa(int(n.Status.DaemonEndpoints.KubeletEndpoint.Port)))
	conn, err := c.Dial("tcp", kubelet)
	if err != nil {
		t.Fatalf("direct-tcpip to the kubelet %s: %v", kubelet, err)
	}
	conn.Close()
}

// startUp runs `tether up` with args on a fresh directory (loopback, free
// port), waits for up.ready and stops it when tb ends; it returns the data
// directory and the process id.
func startUp(tb testing.TB, args ...string) (string, int) {
	tb.Helper()
	dir := tb.TempDir()
	port, err := freePort()
	if err != nil {
		tb.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "process.log"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { logf.Close() })
	cmd := exec.Command(tetherBin, append([]string{"up", "--data-dir", dir, "--bind-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(port), "--service-cluster-ip-range", testServiceCIDR}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	// Ready when up.ready exists (written after the nodes joined).
	deadline := time.Now().Add(readyTimeout)
	for {
		if _, err := os.Stat(filepath.Join(dir, "up.ready")); err == nil {
			return dir, cmd.Process.Pid
		} else if !errors.Is(err, os.ErrNotExist) {
			tb.Fatal(err)
		}
		select {
		case <-exited:
			out, _ := os.ReadFile(filepath.Join(dir, "process.log"))
			tb.Fatalf("tether up exited:\n%s", out)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatal("tether up not ready")
		}
	}
}

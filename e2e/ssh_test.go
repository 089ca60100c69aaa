package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestSSHEgress runs `tether up --nodes 2 --egress=ssh` (every node runs the
// restricted SSH endpoint) and drives logs, exec and the node proxy through
// the tunnels with a real kubectl; a node whose published host key does not
// match what its endpoint presents is refused and kubectl says why.
func TestSSHEgress(t *testing.T) {
	dir := t.TempDir()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "process.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(tetherBin, "up", "--nodes", "2", "--egress=ssh", "--data-dir", dir,
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(port), "--service-cluster-ip-range", testServiceCIDR)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
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
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		select {
		case <-exited:
			out, _ := os.ReadFile(filepath.Join(dir, "process.log"))
			t.Fatalf("tether up exited:\n%s", out)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("tether up not ready")
		}
	}
	paths := installedKubectls(t)
	k := newKubectl(t, paths[len(paths)-1], &hub{Kubeconfig: filepath.Join(dir, "admin.kubeconfig")})

	for _, n := range []string{"node-1", "node-2"} {
		if ann := k.ok(t, "get", "node", n, "-o", `jsonpath={.metadata.annotations.tether\.io/ssh-host-key}`); !strings.HasPrefix(ann, "ssh-ed25519 ") {
			t.Fatalf("%s publishes no host key: %q", n, ann)
		}
	}
	k.ok(t, "run", "web", "--image=busybox", "--command", "--", "sh", "-c", "echo tick; sleep 3600")
	k.ok(t, "wait", "--for=condition=Ready", "pod/web", "--timeout=60s")
	node := k.ok(t, "get", "pod", "web", "-o", "jsonpath={.spec.nodeName}")
	other := map[string]string{"node-1": "node-2", "node-2": "node-1"}[node]
	if other == "" {
		t.Fatalf("pod on unexpected node %q", node)
	}
	if out := k.ok(t, "logs", "web"); !strings.Contains(out, "tick") {
		t.Fatalf("logs: %q", out)
	}
	stdout, _, err := k.run(t, "", "exec", "web", "--", "sh", "-c", "echo hi; exit 3")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || strings.TrimSpace(stdout) != "hi" {
		t.Fatalf("exec: %q %v", stdout, err)
	}
	if out := k.ok(t, "get", "--raw", "/api/v1/nodes/"+node+"/proxy/healthz"); strings.TrimSpace(out) != "ok" {
		t.Fatalf("node proxy: %q", out)
	}

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

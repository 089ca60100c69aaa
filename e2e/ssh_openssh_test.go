package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// sshdBin is OpenSSH's server (Debian package openssh-server).
const sshdBin = "/usr/sbin/sshd"

// openSSHD is a test-owned OpenSSH sshd: its own config, host key and
// authorized_keys in a root-owned 0700 directory under /run (so sshd's
// default StrictModes checks pass), on a private loopback port. Never the
// system service.
type openSSHD struct {
	dir, addr, config string
	cmd               *exec.Cmd
	done              chan struct{}
}

// sshdConfig is the restricted configuration from docs/ssh-tunnels.md.
const sshdConfig = `ListenAddress %s
HostKey %s
PidFile %s
AuthorizedKeysFile %s
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
AllowTcpForwarding local
PermitOpen %s
AllowAgentForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTunnel no
PermitTTY no
PermitUserRC no
GatewayPorts no
ForceCommand /bin/false
ClientAliveInterval 15
`

// newOpenSSHD prepares the directory and host keys; configure writes the
// config, start runs it.
func newOpenSSHD(t *testing.T, addr string) *openSSHD {
	t.Helper()
	if _, err := os.Stat(sshdBin); err != nil {
		t.Fatalf("%s not found (%v): apt-get install openssh-server (.ci/run does)", sshdBin, err)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the OpenSSH e2e test runs sshd as root (CI runs as root)")
	}
	// sshd's compiled-in privilege separation directory.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("/run", fmt.Sprintf("tether-e2e-sshd-%d-", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &openSSHD{dir: dir, addr: addr, config: filepath.Join(dir, "sshd_config")}
	for _, name := range []string{"host_a", "host_b"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", filepath.Join(dir, name)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
	}
	return s
}

// hostPub is the public key of host key name, in authorized_keys format.
func (s *openSSHD) hostPub(t *testing.T, name string) string {
	b, err := os.ReadFile(filepath.Join(s.dir, name+".pub"))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	return f[0] + " " + f[1]
}

// configure writes authorized_keys (the hub key, restricted again per key)
// and sshd_config with host key name and PermitOpen permitOpen, and checks
// it with sshd -t.
func (s *openSSHD) configure(t *testing.T, hubKey, hostKey string, permitOpen []string) {
	t.Helper()
	var opts []string
	for _, p := range permitOpen {
		opts = append(opts, `permitopen="`+p+`"`)
	}
	auth := "restrict,port-forwarding," + strings.Join(opts, ",") + `,command="/bin/false" ` + hubKey + "\n"
	if err := os.WriteFile(filepath.Join(s.dir, "authorized_keys"), []byte(auth), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(sshdConfig, s.addr, filepath.Join(s.dir, hostKey), filepath.Join(s.dir, "sshd.pid"),
		filepath.Join(s.dir, "authorized_keys"), strings.Join(permitOpen, " "))
	if err := os.WriteFile(s.config, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sshdBin, "-t", "-f", s.config).CombinedOutput(); err != nil {
		t.Fatalf("sshd -t: %v: %s", err, out)
	}
}

// start runs sshd -D and waits until it accepts connections.
func (s *openSSHD) start(t *testing.T) {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(s.dir, "sshd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(sshdBin, "-D", "-e", "-f", s.config)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	s.done = make(chan struct{})
	go func() { _ = s.cmd.Wait(); logf.Close(); close(s.done) }()
	t.Cleanup(s.stop)
	waitFor(t, 15*time.Second, "sshd listening on "+s.addr, func() error {
		select {
		case <-s.done:
			t.Fatalf("sshd exited:\n%s", s.log())
		default:
		}
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// stop ends sshd and the per-connection processes it forked (they start
// their own sessions, so they are found by parent pid, not process group).
func (s *openSSHD) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	pids := append(descendants(s.cmd.Process.Pid), s.cmd.Process.Pid)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	<-s.done
	s.cmd = nil
}

func (s *openSSHD) log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "sshd.log"))
	return string(b)
}

// descendants lists the processes below pid (read from /proc).
func descendants(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may contain spaces.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		if pp, err := strconv.Atoi(f[1]); err == nil {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 && len(out) < 10000 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// TestSSHEgressOpenSSH: a hub whose cluster egress is SSH, selected by an
// EgressSelectorConfiguration file, reaches a node through a real OpenSSH
// sshd (test-owned instance, the restricted config of docs/ssh-tunnels.md,
// host key from a known_hosts file, port from the node's
// tether.io/ssh-port annotation). First an impostor key on the node's SSH
// port is refused and kubectl says why; with the right key, kubectl logs,
// exec, attach, port-forward, the node proxy and the pod and service
// proxies (to the port PermitOpen allows) work through the tunnel, and a
// port PermitOpen does not list is refused.
func TestSSHEgressOpenSSH(t *testing.T) {
	dir := t.TempDir()
	const nodeIP = "127.0.0.2" // startAgents' first node address
	sshPort, err := freePortOn(nodeIP)
	if err != nil {
		t.Fatal(err)
	}
	sshAddr := net.JoinHostPort(nodeIP, strconv.Itoa(sshPort))
	sshd := newOpenSSHD(t, sshAddr)
	known := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(known, []byte(fmt.Sprintf("[%s]:%d %s\n", nodeIP, sshPort, sshd.hostPub(t, "host_a"))), 0o600); err != nil {
		t.Fatal(err)
	}
	selector := filepath.Join(dir, "egress-selector.yaml")
	if err := os.WriteFile(selector, []byte(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: SSH
`), 0o600); err != nil {
		t.Fatal(err)
	}

	h, err := newHub(filepath.Join(dir, "hub"))
	if err != nil {
		t.Fatal(err)
	}
	h.ServiceCIDR = testServiceCIDR
	h.Args = []string{"--egress-selector-config-file", selector, "--ssh-user", "root", "--ssh-known-hosts", known}
	if err := os.MkdirAll(h.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Stop)
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	if log := h.tail(); !strings.Contains(log, "SSH tunnels are deprecated") {
		t.Errorf("no deprecation line in the hub log:\n%s", log)
	}
	cs := h.Client(t)
	ctx := testContext(t, time.Minute)
	var hubKey string
	waitFor(t, 30*time.Second, "hub key in kube-system/tether-ssh", func() error {
		cm, err := cs.CoreV1().ConfigMaps("kube-system").Get(ctx, "tether-ssh", metav1.GetOptions{})
		if err != nil {
			return err
		}
		hubKey = strings.TrimSpace(cm.Data["authorized_key"])
		return nil
	})

	agents, err := startAgents(h, dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopAgents(agents) })
	a := agents[0]
	if a.IP != nodeIP {
		t.Fatalf("agent on %s, want %s", a.IP, nodeIP)
	}
	httpPort, err := freePortOn(nodeIP)
	if err != nil {
		t.Fatal(err)
	}
	httpsPort, err := freePortOn(nodeIP)
	if err != nil {
		t.Fatal(err)
	}
	// PermitOpen: the kubelet port and the pod server's HTTP port only.
	permit := []string{net.JoinHostPort(nodeIP, strconv.Itoa(a.KubeletPort)), net.JoinHostPort(nodeIP, strconv.Itoa(httpPort))}
	paths := installedKubectls(t)
	k := newKubectl(t, paths[len(paths)-1], h)
	k.ok(t, "annotate", "--overwrite", "node", a.Name, "tether.io/ssh-port="+strconv.Itoa(sshPort))

	// An impostor: the node's SSH port presents a key other than the one
	// in known_hosts.
	sshd.configure(t, hubKey, "host_b", permit)
	sshd.start(t)
	msg := k.fails(t, "get", "--raw", "/api/v1/nodes/"+a.Name+"/proxy/healthz")
	wantContains(t, "kubectl error for a wrong host key", msg, "via ssh", "host key", a.Name, "known_hosts")
	t.Logf("wrong host key: %s", strings.TrimSpace(msg))
	sshd.stop()

	// The real sshd.
	sshd.configure(t, hubKey, "host_a", permit)
	sshd.start(t)
	waitFor(t, 45*time.Second, "node proxy through OpenSSH (after the hub's reconnect backoff)", func() error {
		out, errOut, err := k.run(t, "", "get", "--raw", "/api/v1/nodes/"+a.Name+"/proxy/healthz")
		if err != nil {
			return fmt.Errorf("%v: %s", err, errOut)
		}
		if strings.TrimSpace(out) != "ok" {
			return fmt.Errorf("healthz %q", out)
		}
		return nil
	})
	w := startSSHWorkload(t, cs, a.Name, nodeIP, httpPort, httpsPort)
	w.kubeletPaths(t, k)
	t.Run("pod-and-service-proxy", func(t *testing.T) { w.podProxy(t, k, true, "") })
	t.Run("port-not-in-PermitOpen", func(t *testing.T) {
		msg := k.fails(t, "get", "--raw", "/api/v1/namespaces/"+w.ns+"/pods/https:web:"+strconv.Itoa(httpsPort)+"/proxy/")
		wantContains(t, "refused by PermitOpen", msg, "via ssh", "administratively prohibited")
		t.Logf("forbidden port: %s", strings.TrimSpace(msg))
	})
	// Everything went through one SSH connection to this sshd.
	if log := sshd.log(); !strings.Contains(log, "Accepted publickey for root") {
		t.Errorf("sshd log shows no hub login:\n%s", log)
	}
}

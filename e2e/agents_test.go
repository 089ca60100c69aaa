package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// agent is one `tether agent` child process joined to a hub with a
// bootstrap token. Its node address is a loopback IP of its own
// (127.0.0.2, 127.0.0.3, …: all of 127/8 is local on Linux) so the hub can
// tell nodes apart from itself (127.0.0.1); its kubelet API listens on that
// address only.
type agent struct {
	Name        string
	Dir         string
	IP          string
	KubeletPort int
	// NetFlags select the pod network and service proxy; nil: host
	// networking with the userspace proxy.
	NetFlags []string
	// Wrap runs the agent under a command, e.g. ip netns exec NS (the HA
	// cluster's agents only).
	Wrap []string

	cmd    *exec.Cmd
	logf   *os.File
	exited chan struct{}
	err    error
}

// joinLine matches the output of `tether token create`.
var joinLine = regexp.MustCompile(`--server (\S+) --token (\S+) --ca-cert-hash (\S+)`)

// startAgents joins n agents (n1…nN) to h with one bootstrap token and
// waits until every Node is Ready. The agents stop (and kill their pods)
// when stop is called; the error lists agents that failed to start.
func startAgents(h *hub, dir string, n int) ([]*agent, error) {
	return startAgentsWith(h, dir, n, nil)
}

// startAgentsWith is startAgents with netFlags for every agent.
func startAgentsWith(h *hub, dir string, n int, netFlags []string) ([]*agent, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, tetherBin, "token", "create", "--kubeconfig", h.Kubeconfig,
		"--description", "e2e agents").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("tether token create: %v\n%s", err, out)
	}
	m := joinLine.FindSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("tether token create printed no join line:\n%s", out)
	}
	var agents []*agent
	for i := 1; i <= n; i++ {
		a := &agent{Name: "n" + strconv.Itoa(i), Dir: filepath.Join(dir, "n"+strconv.Itoa(i)), IP: "127.0.0." + strconv.Itoa(i+1), NetFlags: netFlags}
		if a.KubeletPort, err = freePortOn(a.IP); err != nil {
			stopAgents(agents)
			return nil, err
		}
		if err := a.start(string(m[1]), string(m[2]), string(m[3])); err != nil {
			stopAgents(agents)
			return nil, err
		}
		agents = append(agents, a)
	}
	cs, err := kubernetes.NewForConfig(h.configNoT())
	if err != nil {
		stopAgents(agents)
		return nil, err
	}
	for _, a := range agents {
		if err := a.waitReady(cs); err != nil {
			stopAgents(agents)
			return nil, err
		}
	}
	return agents, nil
}

func freePortOn(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (a *agent) start(server, token, caHash string) error {
	if err := os.MkdirAll(a.Dir, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(a.Dir, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	netFlags := a.NetFlags
	if netFlags == nil {
		// The node-path tests run host-network pods (listening on the node
		// address); pods with their own network namespace and the kernel
		// service proxy are tested in podnet_test.go.
		netFlags = []string{"--pod-network=host", "--service-proxy=userspace"}
	}
	cmd := exec.Command(tetherBin, append([]string{"agent", "--server", server, "--token", token, "--ca-cert-hash", caHash,
		"--node-name", a.Name, "--data-dir", a.Dir, "--node-ip", a.IP, "--kubelet-address", a.IP,
		"--kubelet-port", strconv.Itoa(a.KubeletPort), "--stop-pods-on-exit"}, netFlags...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "HOME="+a.Dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start agent %s: %w", a.Name, err)
	}
	a.cmd, a.logf, a.exited = cmd, logf, make(chan struct{})
	go func() {
		a.err = cmd.Wait()
		close(a.exited)
	}()
	return nil
}

// waitReady polls the Node until its Ready condition is True and it has a
// kubelet endpoint.
func (a *agent) waitReady(cs kubernetes.Interface) error {
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-a.exited:
			return fmt.Errorf("agent %s exited before it was ready: %v\n%s", a.Name, a.err, a.tail())
		case <-time.After(100 * time.Millisecond):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		node, err := cs.CoreV1().Nodes().Get(ctx, a.Name, metav1.GetOptions{})
		cancel()
		if err != nil {
			last = err
			continue
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue && node.Status.DaemonEndpoints.KubeletEndpoint.Port != 0 {
				return nil
			}
		}
		last = errors.New("node not Ready yet")
	}
	return fmt.Errorf("agent %s not ready within %s: %v\n%s", a.Name, readyTimeout, last, a.tail())
}

func (a *agent) tail() string {
	b, _ := os.ReadFile(filepath.Join(a.Dir, "agent.log"))
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}

func (a *agent) stop() {
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(20 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.exited
	}
	a.logf.Close()
	a.cmd = nil
}

func stopAgents(agents []*agent) {
	var wg sync.WaitGroup
	for _, a := range agents {
		wg.Add(1)
		go func() { defer wg.Done(); a.stop() }()
	}
	wg.Wait()
}

// configNoT is the admin config without a testing.TB (for shared setup).
func (h *hub) configNoT() *rest.Config {
	cfg, err := clientcmd.BuildConfigFromFlags("", h.Kubeconfig)
	if err != nil {
		panic(err) // the kubeconfig was read by waitReady already
	}
	cfg.QPS, cfg.Burst = -1, 0
	cfg.Timeout = 30 * time.Second
	return cfg
}

// cluster is a hub with node agents, shared by the node-path tests and
// benchmarks; stopCluster (TestMain) tears it down.
type cluster struct {
	Hub    *hub
	Agents []*agent
	dir    string
}

var (
	clusterOnce sync.Once
	theCluster  *cluster
	clusterErr  error
)

// sharedCluster starts (once) a hub plus two agents on a temp dir.
func sharedCluster(tb testing.TB) *cluster {
	tb.Helper()
	clusterOnce.Do(func() {
		c := &cluster{}
		if c.dir, clusterErr = os.MkdirTemp("", "tether-e2e-cluster-"); clusterErr != nil {
			return
		}
		theCluster = c
		if c.Hub, clusterErr = newHub(filepath.Join(c.dir, "hub")); clusterErr != nil {
			return
		}
		if clusterErr = os.MkdirAll(c.Hub.Dir, 0o700); clusterErr != nil {
			return
		}
		if clusterErr = c.Hub.Start(); clusterErr != nil {
			return
		}
		c.Agents, clusterErr = startAgents(c.Hub, c.dir, 2)
	})
	if clusterErr != nil {
		tb.Fatalf("cluster (hub + 2 agents): %v", clusterErr)
	}
	return theCluster
}

func stopCluster() {
	c := theCluster
	if c == nil {
		return
	}
	stopAgents(c.Agents)
	if c.Hub != nil {
		c.Hub.Stop()
	}
	if c.dir != "" {
		os.RemoveAll(c.dir)
	}
}

// agentLogs is every agent's log tail, for failure messages.
func (c *cluster) agentLogs() string {
	var b bytes.Buffer
	for _, a := range c.Agents {
		fmt.Fprintf(&b, "--- agent %s ---\n%s\n", a.Name, a.tail())
	}
	return b.String()
}

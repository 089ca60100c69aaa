package e2e

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-dev/tether/internal/konnectivity/konnectivitytest"
)

// childProc is a tether child process whose output goes to a log file.
type childProc struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
	err    error
}

func startChild(t *testing.T, dir, name string, args ...string) *childProc {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tetherBin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	p := &childProc{name: name, cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// signalAndWait sends sig and waits up to d for the process to exit.
func (p *childProc) signalAndWait(t *testing.T, sig syscall.Signal, d time.Duration) error {
	t.Helper()
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
		return p.err
	case <-time.After(d):
		b, _ := os.ReadFile(p.log)
		t.Fatalf("%s did not exit within %s after %s\n%s", p.name, d, sig, b)
		return nil
	}
}

// scrapeMetric scrapes url and returns the value of the first sample of name.
func scrapeMetric(url, name string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			f := strings.Fields(line)
			return strconv.ParseFloat(f[len(f)-1], 64)
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// TestKonnectivityLeasesAndDrain runs two `tether konnectivity-server
// --enable-lease-controller` replicas against a real hub and one
// `tether konnectivity-agent --count-server-leases` behind a single
// load-balanced address: the leases appear in kube-system, the agent
// counts them and connects to both servers, a stopped server deletes its
// lease, and SIGTERM makes the agent drain and exit promptly.
func TestKonnectivityLeasesAndDrain(t *testing.T) {
	h := sharedHub(t)
	cs := h.Client(t)
	dir := t.TempDir()
	pki, err := konnectivitytest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	ca, scert, skey, err := pki.WriteFiles(dir, "server", "konnectivity-server")
	if err != nil {
		t.Fatal(err)
	}
	_, acert, akey, err := pki.WriteFiles(dir, "agent", "konnectivity-agent")
	if err != nil {
		t.Fatal(err)
	}
	suffix := strconv.Itoa(os.Getpid())
	var servers []*childProc
	var agentAddrs []string
	for i, id := range []string{"e2e-a-" + suffix, "e2e-b-" + suffix} {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		agentAddrs = append(agentAddrs, "127.0.0.1:"+strconv.Itoa(port))
		servers = append(servers, startChild(t, dir, "server"+strconv.Itoa(i), "konnectivity-server",
			"--server-id", id, "--uds-name", filepath.Join(dir, "s"+strconv.Itoa(i)+".sock"), "--server-port", "0",
			"--agent-bind-address", "127.0.0.1", "--agent-port", strconv.Itoa(port), "--health-port", "0", "--admin-port", "0",
			"--cluster-cert", scert, "--cluster-key", skey, "--cluster-ca-cert", ca,
			"--enable-lease-controller", "--kubeconfig", h.Kubeconfig, "--lease-namespace", "kube-system",
			"--lease-label", "k8s-app=konnectivity-server,e2e-run="+suffix))
	}
	ctx := testContext(t, 2*time.Minute)
	sel := "e2e-run=" + suffix
	konnectivitytest.Eventually(t, 60*time.Second, "both server leases", func() bool {
		l, err := cs.CoordinationV1().Leases("kube-system").List(ctx, metav1.ListOptions{LabelSelector: sel})
		return err == nil && len(l.Items) == 2
	})
	lb := konnectivitytest.NewRoundRobinProxy(t, agentAddrs...)
	host, port, _ := strings.Cut(lb, ":")
	hport, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	agent := startChild(t, dir, "agent", "konnectivity-agent", "--proxy-server-host", host, "--proxy-server-port", port,
		"--ca-cert", ca, "--agent-cert", acert, "--agent-key", akey, "--agent-id", "e2e-agent-"+suffix,
		"--health-server-host", "127.0.0.1", "--health-server-port", strconv.Itoa(hport), "--admin-server-port", "0",
		"--count-server-leases", "--kubeconfig", h.Kubeconfig, "--lease-namespace", "kube-system", "--lease-label", sel,
		"--sync-interval", "200ms", "--sync-interval-cap", "1s")
	metrics := "http://127.0.0.1:" + strconv.Itoa(hport) + "/metrics"
	konnectivitytest.Eventually(t, 60*time.Second, "agent connected to both servers behind one address", func() bool {
		n, err := scrapeMetric(metrics, "konnectivity_network_proxy_agent_open_server_connections")
		return err == nil && n == 2
	})
	if n, err := scrapeMetric(metrics, "konnectivity_network_proxy_agent_known_server_count"); err != nil || n != 2 {
		t.Fatalf("known_server_count = %v, %v; want 2", n, err)
	}
	// A server stopped with SIGTERM deletes its lease.
	if err := servers[1].signalAndWait(t, syscall.SIGTERM, 30*time.Second); err != nil {
		t.Fatalf("server exit: %v", err)
	}
	_, err = cs.CoordinationV1().Leases("kube-system").Get(ctx, "konnectivity-proxy-server-e2e-b-"+suffix, metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		t.Fatalf("lease of the stopped server: err=%v, want NotFound", err)
	}
	// SIGTERM: the agent drains and, with no open connections, exits at once.
	if err := agent.signalAndWait(t, syscall.SIGTERM, 10*time.Second); err != nil {
		b, _ := os.ReadFile(agent.log)
		t.Fatalf("agent exit: %v\n%s", err, b)
	}
	if err := servers[0].signalAndWait(t, syscall.SIGTERM, 30*time.Second); err != nil {
		t.Fatalf("server exit: %v", err)
	}
	l, err := cs.CoordinationV1().Leases("kube-system").List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil || len(l.Items) != 0 {
		t.Fatalf("leases left behind: %v %v", l, err)
	}
}

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// testServiceCIDR is the service range of the hubs these tests start
// (the server's default); the service tests assert on it.
const testServiceCIDR = "10.96.0.0/12"

// readyTimeout bounds every wait for a hub to become ready; generous
// because -race on a loaded 2-core machine is slow.
const readyTimeout = 90 * time.Second

// hub is one `tether up --nodes 0` child process and its data directory.
type hub struct {
	Dir        string
	Port       int
	Kubeconfig string
	// ServiceCIDR, if set, is passed as --service-cluster-ip-range;
	// otherwise `tether up` picks its default.
	ServiceCIDR string
	// Args are extra flags for `tether up`.
	Args []string
	// ClusterCIDR, if set, is passed as --cluster-cidr.
	ClusterCIDR string

	mu  sync.Mutex
	run *run // nil when not running
}

// run is one process of a hub.
type run struct {
	cmd    *exec.Cmd
	logf   *os.File
	exited chan struct{}
	err    error // exit status, valid once exited is closed
}

// startHub runs a hub on a fresh t.TempDir() and stops it when t ends.
func startHub(t testing.TB) *hub {
	t.Helper()
	h, err := newHub(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h.ServiceCIDR = testServiceCIDR
	t.Cleanup(h.Stop)
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	return h
}

// newHub prepares a hub on dir and a free loopback port; Start runs it.
func newHub(dir string) (*hub, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	return &hub{Dir: dir, Port: port, Kubeconfig: filepath.Join(dir, "admin.kubeconfig")}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start launches the process and waits until it is ready: the up.ready file
// exists and /readyz answers 200 with the admin credentials.
func (h *hub) Start() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.run != nil {
		return errors.New("hub already running")
	}
	// A kill -9 leaves the ready file of the previous run behind.
	if err := os.Remove(filepath.Join(h.Dir, "up.ready")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(h.Dir, "process.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	args := []string{"up", "--nodes", "0", "--data-dir", h.Dir, "--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(h.Port)}
	if h.ServiceCIDR != "" {
		args = append(args, "--service-cluster-ip-range", h.ServiceCIDR)
	}
	args = append(args, h.Args...)
	if h.ClusterCIDR != "" {
		args = append(args, "--cluster-cidr", h.ClusterCIDR)
	}
	cmd := exec.Command(tetherBin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "HOME="+h.Dir)
	// Never outlive the test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start tether: %w", err)
	}
	r := &run{cmd: cmd, logf: logf, exited: make(chan struct{})}
	h.run = r
	go func() {
		r.err = cmd.Wait()
		close(r.exited)
	}()
	if err := h.waitReady(r); err != nil {
		h.stopLocked(syscall.SIGKILL)
		return fmt.Errorf("%w\n--- tether log ---\n%s", err, h.tail())
	}
	return nil
}

func (h *hub) waitReady(r *run) error {
	deadline := time.Now().Add(readyTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var client *http.Client
	var lastErr error
	for {
		select {
		case <-r.exited:
			return fmt.Errorf("tether exited before it was ready: %v", r.err)
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tether not ready within %s: %v", readyTimeout, lastErr)
		}
		if _, err := os.Stat(filepath.Join(h.Dir, "up.ready")); err != nil {
			lastErr = err
			continue
		}
		if client == nil {
			cfg, err := clientcmd.BuildConfigFromFlags("", h.Kubeconfig)
			if err != nil {
				lastErr = err
				continue
			}
			cfg.Timeout = 5 * time.Second
			if client, err = rest.HTTPClientFor(cfg); err != nil {
				lastErr = err
				continue
			}
		}
		resp, err := client.Get(h.URL() + "/readyz")
		if err != nil {
			lastErr = err
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			client.CloseIdleConnections()
			return nil
		}
		lastErr = fmt.Errorf("/readyz: %s", resp.Status)
	}
}

// URL is the hub's HTTPS base URL.
func (h *hub) URL() string { return "https://127.0.0.1:" + strconv.Itoa(h.Port) }

// Stop sends SIGTERM and waits for a clean exit (SIGKILL after a bound).
func (h *hub) Stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopLocked(syscall.SIGTERM)
}

// Kill sends SIGKILL (kill -9) and waits for the process to go.
func (h *hub) Kill() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopLocked(syscall.SIGKILL)
}

// Restart stops the hub cleanly and starts it again on the same data dir
// and port.
func (h *hub) Restart() error {
	h.Stop()
	return h.Start()
}

func (h *hub) stopLocked(sig syscall.Signal) {
	r := h.run
	if r == nil {
		return
	}
	_ = r.cmd.Process.Signal(sig)
	select {
	case <-r.exited:
	case <-time.After(30 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
	h.run = nil
	r.logf.Close()
}

func (h *hub) tail() string {
	b, _ := os.ReadFile(filepath.Join(h.Dir, "process.log"))
	l, _ := os.ReadFile(filepath.Join(h.Dir, "tether.log"))
	b = append(b, l...)
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

// Config is an admin client config for the hub.
func (h *hub) Config(t testing.TB) *rest.Config {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", h.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = -1, 0
	cfg.Timeout = 30 * time.Second
	return cfg
}

// Client is an admin clientset (JSON).
func (h *hub) Client(t testing.TB) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(h.Config(t))
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

var (
	sharedOnce sync.Once
	shared     *hub
	sharedErr  error
	sharedDir  string
)

// sharedHub is one hub for every test that needs no restart; TestMain
// stops it.
func sharedHub(t testing.TB) *hub {
	t.Helper()
	sharedOnce.Do(func() {
		sharedDir, sharedErr = os.MkdirTemp("", "tether-e2e-hub-")
		if sharedErr != nil {
			return
		}
		shared, sharedErr = newHub(sharedDir)
		if sharedErr == nil {
			shared.ServiceCIDR = testServiceCIDR
			sharedErr = shared.Start()
		}
	})
	if sharedErr != nil {
		t.Fatalf("shared hub: %v", sharedErr)
	}
	return shared
}

func stopSharedHub() {
	if shared != nil {
		shared.Stop()
	}
	if sharedDir != "" {
		os.RemoveAll(sharedDir)
	}
}

// testContext is a context bounded by d and by the test's end.
func testContext(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

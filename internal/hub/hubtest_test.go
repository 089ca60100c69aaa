package hub

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// testHub is an in-process hub on a loopback port with its data in a temp dir.
type testHub struct {
	*Hub
	Admin *restclient.Config
	Dir   string

	etcdEndpoints []string
}

func startHub(t *testing.T, tweak func(*Config)) *testHub { return startHubTB(t, tweak) }

func startHubTB(t testing.TB, tweak func(*Config)) *testHub {
	t.Helper()
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{DataDir: dir, Listener: ln, BindAddress: net.IPv4(127, 0, 0, 1), SecurePort: ln.Addr().(*net.TCPAddr).Port,
		AdvertiseAddress: net.IPv4(127, 0, 0, 1), Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	if tweak != nil {
		tweak(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("hub: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("hub did not stop")
		}
	})
	select {
	case <-h.Ready():
	case err := <-done:
		t.Fatalf("hub stopped: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("hub not ready")
	}
	admin, err := clientcmd.BuildConfigFromFlags("", filepath.Join(dir, "admin.kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	return &testHub{Hub: h, Admin: admin, Dir: dir, etcdEndpoints: h.EtcdEndpoints()}
}

func (h *testHub) client(t *testing.T, cfg *restclient.Config) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// anonymousConfig is the admin config without credentials.
func (h *testHub) anonymousConfig() *restclient.Config {
	c := restclient.AnonymousClientConfig(h.Admin)
	return c
}

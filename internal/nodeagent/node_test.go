package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// cutDialer dials TCP until it is cut: then it closes every connection it
// made and refuses new ones, until healed.
type cutDialer struct {
	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

func (d *cutDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cut {
		return nil, errors.New("cut off from the hub")
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, addr)
	if err == nil {
		d.conns = append(d.conns, c)
	}
	return c, err
}

func (d *cutDialer) set(cut bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cut = cut
	if cut {
		for _, c := range d.conns {
			c.Close()
		}
		d.conns = nil
	}
}

// TestNodeStatusAfterOutage: the node lifecycle controller marked the node
// Ready=Unknown while the agent could not reach the hub; once the Lease
// renews again the agent posts its status at once, not at the next
// StatusInterval tick (an hour here).
func TestNodeStatusAfterOutage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h, admin, _, _ := testHub(t, ctx)
	cfg, err := clientcmd.BuildConfigFromFlags("", h.AdminKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	d := &cutDialer{}
	cfg.Dial = d.DialContext
	cfg.Timeout = 5 * time.Second
	client := kubernetes.NewForConfigOrDie(cfg)
	a := &Agent{cfg: Config{NodeName: "outage", NodeIP: net.IPv4(127, 0, 0, 9), DataDir: t.TempDir(),
		LeaseDuration: 40 * time.Second, LeaseRenewInterval: 100 * time.Millisecond, StatusInterval: time.Hour},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	n := &nodeStatus{a: a, client: client, port: 10250, kick: make(chan struct{}, 1)}
	if err := n.register(ctx); err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, f := range []func(context.Context) error{n.run, n.runLease} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = f(rctx) }()
	}
	defer func() { stop(); wg.Wait() }()
	poll := func(what string, f func() error) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			err := f()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(50 * time.Millisecond) // poll interval
		}
	}
	poll("lease created", func() error {
		_, err := admin.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, "outage", metav1.GetOptions{})
		return err
	})

	d.set(true)
	poll("a renewal failed", func() error {
		if !n.stale.Load() {
			return errors.New("no failed renewal yet")
		}
		return nil
	})
	// What the node lifecycle controller does to an unreachable node.
	node, err := admin.CoreV1().Nodes().Get(ctx, "outage", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range node.Status.Conditions {
		if c := &node.Status.Conditions[i]; c.Type == corev1.NodeReady {
			c.Status, c.Reason = corev1.ConditionUnknown, "NodeStatusUnknown"
		}
	}
	if _, err := admin.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	d.set(false)
	poll("node Ready again", func() error {
		node, err := admin.CoreV1().Nodes().Get(ctx, "outage", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
				return fmt.Errorf("Ready=%s", c.Status)
			}
		}
		return nil
	})
	if n.stale.Load() {
		t.Error("still stale after the status post")
	}
}

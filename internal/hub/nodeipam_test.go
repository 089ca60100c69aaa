package hub

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestNodeIPAM: every Node gets its own /24 of the cluster CIDR; a deleted
// Node's CIDR is handed to the next Node.
func TestNodeIPAM(t *testing.T) {
	h := startHub(t, nil)
	c := h.client(t, h.Admin)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	podCIDR := func(name string) string {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			n, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err == nil && n.Spec.PodCIDR != "" {
				if len(n.Spec.PodCIDRs) != 1 || n.Spec.PodCIDRs[0] != n.Spec.PodCIDR {
					t.Fatalf("node %s: podCIDRs %v vs podCIDR %s", name, n.Spec.PodCIDRs, n.Spec.PodCIDR)
				}
				return n.Spec.PodCIDR
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("node %s got no podCIDR", name)
		return ""
	}
	seen := map[string]string{}
	for i := range 3 {
		name := fmt.Sprintf("ipam-%d", i)
		if _, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		name := fmt.Sprintf("ipam-%d", i)
		cidr := podCIDR(name)
		if other, dup := seen[cidr]; dup {
			t.Fatalf("%s and %s both got %s", name, other, cidr)
		}
		seen[cidr] = name
	}
	if _, ok := seen["10.244.0.0/24"]; !ok {
		t.Fatalf("allocations %v do not start at 10.244.0.0/24", seen)
	}
	freed := podCIDR("ipam-1")
	if err := c.CoreV1().Nodes().Delete(ctx, "ipam-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The release is asynchronous: a node created afterwards gets the freed
	// /24 once the controller has seen the deletion.
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		name := fmt.Sprintf("ipam-new-%d", i)
		if _, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		got := podCIDR(name)
		if got == freed {
			break
		}
		if other, dup := seen[got]; dup {
			t.Fatalf("%s got %s, still held by %s", name, got, other)
		}
		seen[got] = name
		if time.Now().After(deadline) || i > 20 {
			t.Fatalf("freed %s never reused", freed)
		}
	}
}

// TestNodeIPAMConcurrentJoins: nodes joining at once are allocated by
// several workers; every Node still gets its own /24.
func TestNodeIPAMConcurrentJoins(t *testing.T) {
	h := startHub(t, nil)
	c := h.client(t, h.Admin)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const nodes, writers = 60, 6
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			for i := w; i < nodes; i += writers {
				if _, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("join-%d", i)}}, metav1.CreateOptions{}); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for {
		list, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		owner := map[string]string{}
		missing := 0
		for _, n := range list.Items {
			if n.Spec.PodCIDR == "" {
				missing++
				continue
			}
			if o, dup := owner[n.Spec.PodCIDR]; dup {
				t.Fatalf("%s and %s both got %s", o, n.Name, n.Spec.PodCIDR)
			}
			owner[n.Spec.PodCIDR] = n.Name
		}
		if len(list.Items) == nodes && missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d nodes without a pod CIDR after a minute", missing, len(list.Items))
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
}

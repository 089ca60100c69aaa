package nodeipam

import (
	"errors"
	"net/netip"
	"testing"

	"k8s.io/client-go/kubernetes"
)

func TestAllocator(t *testing.T) {
	a, err := NewAllocator(netip.MustParsePrefix("10.244.0.0/16"), 0)
	if err != nil {
		t.Fatal(err)
	}
	// State rebuilt from existing Nodes comes first: n-old holds .0 and .2.
	if _, err := a.Occupy(netip.MustParsePrefix("10.244.0.0/24"), "old-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Occupy(netip.MustParsePrefix("10.244.2.0/24"), "old-b"); err != nil {
		t.Fatal(err)
	}
	if owner, err := a.Occupy(netip.MustParsePrefix("10.244.2.0/24"), "dup"); err == nil || owner != "old-b" {
		t.Fatalf("double occupy: owner %q, err %v", owner, err)
	}
	for _, bad := range []string{"10.245.0.0/24", "10.244.1.0/25", "10.244.1.1/24", "fd00::/64"} {
		if _, err := a.Occupy(netip.MustParsePrefix(bad), "x"); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Occupy(%s): %v, want ErrOutOfRange", bad, err)
		}
	}
	want := []struct{ node, cidr string }{{"n1", "10.244.1.0/24"}, {"n2", "10.244.3.0/24"}, {"n1", "10.244.1.0/24"}, {"n3", "10.244.4.0/24"}}
	for _, w := range want {
		p, err := a.Allocate(w.node)
		if err != nil || p.String() != w.cidr {
			t.Fatalf("Allocate(%s) = %s, %v; want %s", w.node, p, err, w.cidr)
		}
	}
	if p, ok := a.Release("old-b"); !ok || p.String() != "10.244.2.0/24" {
		t.Fatalf("Release(old-b) = %s, %v", p, ok)
	}
	if _, ok := a.Release("old-b"); ok {
		t.Fatal("released twice")
	}
	if p, _ := a.Allocate("n4"); p.String() != "10.244.2.0/24" {
		t.Fatalf("freed subnet not reused: %s", p)
	}
	if a.Used() != 5 {
		t.Fatalf("Used = %d, want 5", a.Used())
	}
}

func TestAllocatorFull(t *testing.T) {
	a, err := NewAllocator(netip.MustParsePrefix("10.9.0.0/23"), 24)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := a.Allocate(n); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Allocate("c"); !errors.Is(err, ErrFull) {
		t.Fatalf("Allocate on a full range: %v", err)
	}
}

func TestAllocatorBadConfig(t *testing.T) {
	for _, c := range []struct {
		cidr string
		mask int
	}{{"10.0.0.0/8", 25}, {"10.0.0.0/24", 16}, {"10.0.0.0/16", 33}} {
		if _, err := NewAllocator(netip.MustParsePrefix(c.cidr), c.mask); err == nil {
			t.Errorf("NewAllocator(%s, %d) accepted", c.cidr, c.mask)
		}
	}
	if _, err := NewAllocator(netip.Prefix{}, 0); err == nil {
		t.Error("NewAllocator without a CIDR accepted")
	}
}

func TestAllocatorIPv6(t *testing.T) {
	a, err := NewAllocator(netip.MustParsePrefix("fd10:244::/56"), 0)
	if err != nil {
		t.Fatal(err)
	}
	a.Allocate("a")
	p, _ := a.Allocate("b")
	if p.String() != "fd10:244:0:1::/64" {
		t.Fatalf("second IPv6 subnet %s", p)
	}
}

func TestNewWorkers(t *testing.T) {
	cfg := Config{Client: &kubernetes.Clientset{}, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")}
	c, err := New(cfg)
	if err != nil || c.cfg.Workers != 30 {
		t.Fatalf("New: workers %d, %v; want the default 30", c.cfg.Workers, err)
	}
	cfg.Workers = -1
	if _, err := New(cfg); err == nil {
		t.Fatal("New accepted a negative worker count")
	}
}

package registry

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-dev/tether/internal/storage"
)

// startEtcd runs an embedded etcd member for the test and returns a client.
func startEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	dir := t.TempDir()
	m, err := storage.New(storage.Config{DataDir: filepath.Join(dir, "etcd"), LogFile: filepath.Join(dir, "etcd.log")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("etcd: %v", err)
		}
	})
	select {
	case <-m.Ready():
	case err := <-done:
		t.Fatalf("etcd: %v", err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: m.Endpoints(), DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func svc(ns, name, ip string, nodePort int32) corev1.Service {
	s := corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}}}
	if nodePort > 0 {
		s.Spec.Ports = []corev1.ServicePort{{Port: 80, NodePort: nodePort}}
	}
	return s
}

func TestRepair(t *testing.T) {
	cli := startEtcd(t)
	ctx := context.Background()
	_, cidr, _ := net.ParseCIDR("10.96.0.0/24")
	ips, err := NewIPAllocator(cli, "/t/ips/", cidr)
	if err != nil {
		t.Fatal(err)
	}
	ports := NewPortAllocator(cli, "/t/ports/", 30000, 30010)
	var services []corev1.Service
	r := &Repair{IPs: ips, NodePorts: ports, List: func(context.Context) ([]corev1.Service, error) { return services, nil }}
	mustAlloc := func(a *Allocator, v, who string) {
		t.Helper()
		if err := a.Allocate(ctx, v, who); err != nil {
			t.Fatal(err)
		}
	}
	// Held: default/web owns 10.96.0.10 and 30001.
	mustAlloc(ips, "10.96.0.10", "default/web")
	mustAlloc(ports, "30001", "default/web")
	// Leaked: a hub died after allocating for default/ghost.
	mustAlloc(ips, "10.96.0.11", "default/ghost")
	mustAlloc(ports, "30002", "default/ghost")
	// In flight: default/slow allocated, its Service not stored yet.
	mustAlloc(ips, "10.96.0.12", "default/slow")
	// Lost: default/restored holds 10.96.0.13 but the allocator forgot it.
	services = []corev1.Service{svc("default", "web", "10.96.0.10", 30001), svc("default", "restored", "10.96.0.13", 0)}

	res, err := r.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Released != 0 || res.Recorded != 1 || res.Suspects != 3 {
		t.Fatalf("first pass: %+v, want 0 released, 1 recorded, 3 suspects", res)
	}
	// default/slow's create is retried (same owner): the key is touched,
	// so the second pass must not release it even though its Service is
	// still missing from the list.
	mustAlloc(ips, "10.96.0.12", "default/slow")
	res, err = r.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Released != 2 || res.Suspects != 1 {
		t.Fatalf("second pass: %+v, want 2 released (ghost IP and port), 1 suspect (slow)", res)
	}
	owners, _ := ips.Owners(ctx)
	if _, ok := owners["10.96.0.11"]; ok {
		t.Fatal("leaked IP not released")
	}
	if owners["10.96.0.12"] != "default/slow" || owners["10.96.0.10"] != "default/web" || owners["10.96.0.13"] != "default/restored" {
		t.Fatalf("owners after repair: %v", owners)
	}
	pOwners, _ := ports.Owners(ctx)
	if _, ok := pOwners["30002"]; ok || pOwners["30001"] != "default/web" {
		t.Fatalf("port owners after repair: %v", pOwners)
	}
	// Now slow's Service lands: nothing more to do.
	services = append(services, svc("default", "slow", "10.96.0.12", 0))
	if res, err = r.Pass(ctx); err != nil || res.Released != 0 || res.Suspects != 0 {
		t.Fatalf("third pass: %+v %v", res, err)
	}
}

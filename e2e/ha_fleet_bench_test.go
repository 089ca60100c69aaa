package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	coordclient "k8s.io/client-go/kubernetes/typed/coordination/v1"
	coreclient "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tether-dev/tether/internal/pki"
)

// BenchmarkHAFleet simulates a fleet of nodes against three hub replicas on
// a 3-member etcd cluster. Every simulated node is a goroutine with its own
// identity (a client certificate CN=system:node:<name>, O=system:nodes
// signed by the cluster CA), its own HTTP/2 connection (one http.Transport)
// to one replica, pinned by address (node i → hub i mod 3, as nodes given
// several --server addresses use the first), and no informers. It
// registers as `tether agent` does (create the Node, post its status,
// create its Lease in kube-node-lease), then renews the Lease every 10 s
// (±5 % jitter per period, random phase; kubelet's defaults: 40 s lease,
// 10 s renew) by Update of the last Lease it got back, re-reading it only
// after an error, as kubelet's lease controller does.
//
// After every node is registered and one renew period has passed, each
// iteration measures a window: achieved vs target (N/10 per second) lease
// write rate, renew latency p50/p99, failed renewals, the longest gap
// between two successful renewals of one node, nodes the node lifecycle
// controller marked not Ready (must be 0), the summed VmRSS of the three
// `tether server` processes before the fleet and during the window (per
// node), and etcd's in-use database growth per node.
//
//	TETHER_FLEET_NODES=500 TETHER_FLEET_WINDOW=30s go test ./e2e -run '^$' -bench HAFleet -benchtime 1x
//	go test ./e2e -run '^$' -bench HAFleet -benchtime 1x -timeout 30m   # 5000 nodes, 60 s window
func BenchmarkHAFleet(b *testing.B) {
	nodes, err := envInt("TETHER_FLEET_NODES", 5000)
	if err != nil || nodes < 1 || nodes > 20000 {
		b.Fatalf("TETHER_FLEET_NODES: want 1..20000 (%v)", err)
	}
	window, err := envDuration("TETHER_FLEET_WINDOW", 60*time.Second)
	if err != nil || window < 10*time.Second || window > 30*time.Minute {
		b.Fatalf("TETHER_FLEET_WINDOW: want 10s..30m (%v)", err)
	}
	const period = 10 * time.Second
	// The default /16 pod range has 256 node /24s; a 5000-node cluster is
	// configured with a bigger one. No pod runs here: nothing is routed to it.
	c := startHACluster(b, 0, "--cluster-cidr", "100.64.0.0/10")
	admin, err := c.listClient()
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	rssBefore, err := c.hubRSS()
	if err != nil {
		b.Fatal(err)
	}
	dbBefore := c.etcdInUse(b)
	goBefore := c.hubGoMetrics(b)
	if dir := os.Getenv("TETHER_FLEET_PPROF"); dir != "" {
		c.saveHeapProfiles(b, dir, "before")
	}
	load0 := loadAvg()

	// Identities: one key and certificate per node, signed by the cluster CA.
	pool := x509.NewCertPool()
	pool.AddCert(c.shared.CA.Cert)
	fleet := make([]*simNode, nodes)
	pfx := fmt.Sprintf("fleet-%d-", os.Getpid())
	start := time.Now()
	for i := range fleet {
		name := pfx + strconv.Itoa(i)
		certPEM, keyPEM, err := c.shared.CA.Issue(pki.CertSpec{CommonName: "system:node:" + name,
			Organization: []string{"system:nodes"}, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			b.Fatal(err)
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			b.Fatal(err)
		}
		hub := c.hubs[i%len(c.hubs)]
		n, err := newSimNode(name, hub.url(c.port), hub.ip, pair, pool)
		if err != nil {
			b.Fatal(err)
		}
		fleet[i] = n
	}
	b.Logf("%d node identities issued in %s", nodes, time.Since(start).Round(time.Millisecond))
	defer func() {
		for _, n := range fleet {
			if n != nil {
				n.close()
			}
		}
	}()

	// Registration, bounded concurrency; each node starts renewing as soon
	// as it is registered (an early node must not expire while the rest
	// registers).
	st := &fleetStats{}
	var renewers sync.WaitGroup
	defer func() { cancel(); renewers.Wait() }()
	start = time.Now()
	regLimit, err := envDuration("TETHER_FLEET_REGISTER", 15*time.Minute)
	if err != nil || regLimit < time.Minute {
		b.Fatalf("TETHER_FLEET_REGISTER: want at least 1m (%v)", err)
	}
	regDeadline := start.Add(regLimit)
	var next, regRetries, registered atomic.Int64
	var regErr atomic.Value
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= nodes || regErr.Load() != nil {
					return
				}
				n := fleet[i]
				// As `tether agent`, retry until the hub answers (bounded).
				for {
					err := n.register(ctx)
					if err == nil {
						break
					}
					if time.Now().After(regDeadline) {
						// The hubs are saturated: measure the nodes
						// that made it.
						regErr.Store(fmt.Errorf("register %s: not within %s: %w", n.name, regLimit, err))
						return
					}
					regRetries.Add(1)
					time.Sleep(time.Second) // retry back-off
				}
				registered.Add(1)
				renewers.Add(1)
				go func() { defer renewers.Done(); n.renewLoop(ctx, period, st) }()
			}
		}()
	}
	wg.Wait()
	if err, _ := regErr.Load().(error); err != nil {
		b.Logf("registration stopped at %d of %d nodes: %v", registered.Load(), nodes, err)
	}
	if registered.Load() == 0 {
		b.Fatal("no node registered")
	}
	requested := nodes
	nodes = int(registered.Load())
	regTime := time.Since(start)
	b.Logf("%d nodes registered in %s (%.0f nodes/s, 32 at a time, %d attempts retried)", nodes, regTime.Round(time.Millisecond), float64(nodes)/regTime.Seconds(), regRetries.Load())
	// The IPAM controller gives every node a pod CIDR; how long after the
	// last registration (bounded: 2 minutes) is part of what a fleet costs.
	cidrLag, missing, err := waitPodCIDRs(ctx, admin, nodes, 2*time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("pod CIDRs: %d of %d nodes still without one %s after the last registration", missing, nodes, cidrLag.Round(time.Millisecond))
	// One period in which every node renews at least once at its own phase.
	time.Sleep(period) // lets the renew loops reach their steady state; not synchronisation

	var rates, ratios, p50s, p99s, gaps []float64
	var failed, notReady int
	notReadyBefore, err := countNotReady(ctx, admin.CoreV1())
	if err != nil {
		b.Fatal(err)
	}
	var rssDuring int64
	var loads, cpuCores, cpuPerK []float64
	var goDuring map[string]float64
	b.ResetTimer()
	for range b.N {
		cpu0, err := c.hubCPU()
		if err != nil {
			b.Fatal(err)
		}
		logs0 := c.hubLogLines()
		st.begin()
		var profiles sync.WaitGroup
		if dir := os.Getenv("TETHER_FLEET_PPROF"); dir != "" {
			c.saveCPUProfiles(b, &profiles, dir, min(window, 20*time.Second))
		}
		end := time.Now().Add(window)
		for time.Now().Before(end) {
			time.Sleep(min(5*time.Second, time.Until(end))) // sampling interval
			rss, err := c.hubRSS()
			if err != nil {
				b.Fatal(err)
			}
			rssDuring = max(rssDuring, rss)
		}
		w := st.end() // before the /metrics fetches, which a saturated hub answers slowly
		cpu1, err := c.hubCPU()
		if err != nil {
			b.Fatal(err)
		}
		goDuring = c.hubGoMetrics(b)
		if dir := os.Getenv("TETHER_FLEET_PPROF"); dir != "" {
			c.saveHeapProfiles(b, dir, "during")
		}
		profiles.Wait()
		loads = append(loads, loadAvg())
		cpuCores = append(cpuCores, (cpu1-cpu0)/window.Seconds())
		if w.ok > 0 {
			cpuPerK = append(cpuPerK, (cpu1-cpu0)/float64(w.ok)*1000)
		}
		for i, lines := range c.hubLogLines() {
			if grown := lines[len(logs0[i]):]; len(grown) > 0 {
				b.Logf("hub %d wrote %d log lines in the window; most frequent: %s", i+1, len(grown), topLines(grown, 3))
			}
		}
		target := float64(nodes) / period.Seconds()
		rate := float64(w.ok) / window.Seconds()
		rates, ratios = append(rates, rate), append(ratios, rate/target)
		p50s, p99s = append(p50s, w.quantile(0.50)), append(p99s, w.quantile(0.99))
		gaps = append(gaps, w.maxGap.Seconds())
		failed += w.failed
		if notReady, err = countNotReady(ctx, admin.CoreV1()); err != nil {
			b.Fatal(err)
		}
		b.Logf("window %s: %d renewals ok (%.1f/s, target %.1f/s), %d failed (first error: %s), p50 %.1f ms, p99 %.1f ms, longest gap %.1f s, %d nodes not Ready",
			window, w.ok, rate, target, w.failed, errString(w.firstErr), w.quantile(0.5), w.quantile(0.99), w.maxGap.Seconds(), notReady)
	}
	b.StopTimer()
	dbAfter := c.etcdInUse(b)
	b.Logf("hub RSS (3 replicas) %.1f MiB before the fleet, %.1f MiB during; etcd in-use db %.1f → %.1f MiB; load average %.2f before, %.2f during",
		float64(rssBefore)/1024, float64(rssDuring)/1024, float64(dbBefore)/(1<<20), float64(dbAfter)/(1<<20), load0, median(loads))
	b.ReportMetric(float64(requested), "nodes_requested")
	b.ReportMetric(float64(nodes), "nodes")
	b.ReportMetric(float64(nodes)/regTime.Seconds(), "registrations/s")
	b.ReportMetric(float64(regRetries.Load()), "registration_retries")
	b.ReportMetric(median(rates), "lease_writes/s")
	b.ReportMetric(median(ratios), "target_ratio")
	b.ReportMetric(median(p50s), "p50_ms")
	b.ReportMetric(median(p99s), "p99_ms")
	b.ReportMetric(slices.Max(gaps), "max_gap_s")
	b.ReportMetric(float64(failed), "failed_renewals")
	b.ReportMetric(float64(notReadyBefore), "notready_before_window")
	b.ReportMetric(float64(notReady), "notready_nodes")
	b.ReportMetric(float64(rssBefore)/1024, "hub_rss_MiB_before")
	b.ReportMetric(float64(rssDuring)/1024, "hub_rss_MiB_during")
	b.ReportMetric(float64(rssDuring-rssBefore)/float64(nodes), "rss_KiB/node")
	b.ReportMetric(float64(dbAfter-dbBefore)/1024/float64(nodes), "etcd_KiB/node")
	const gc = "go_memstats_next_gc_bytes"
	b.Logf("hubs' Go runtime (sum of 3): goroutines %.0f → %.0f, heap in use %.1f → %.1f MiB, live heap (GC target/2) %.1f → %.1f MiB",
		goBefore["go_goroutines"], goDuring["go_goroutines"], goBefore["go_memstats_heap_inuse_bytes"]/(1<<20), goDuring["go_memstats_heap_inuse_bytes"]/(1<<20),
		goBefore[gc]/2/(1<<20), goDuring[gc]/2/(1<<20))
	b.ReportMetric((goDuring["go_goroutines"]-goBefore["go_goroutines"])/float64(nodes), "goroutines/node")
	b.ReportMetric((goDuring[gc]-goBefore[gc])/2/1024/float64(nodes), "live_heap_KiB/node")
	b.ReportMetric(cidrLag.Seconds(), "podcidr_lag_s")
	b.ReportMetric(float64(missing), "podcidr_missing")
	b.ReportMetric(median(loads), "load1")
	b.ReportMetric(median(cpuCores), "hub_cpu_cores")
	if len(cpuPerK) > 0 {
		b.ReportMetric(median(cpuPerK), "hub_cpu_s/1000renewals")
	}
	// Nodes may go not Ready when the hubs cannot keep up (that is a
	// capacity result, reported above); while every renewal succeeded in
	// time none may.
	if notReady > notReadyBefore && slices.Min(ratios) >= 0.99 && failed == 0 && slices.Max(gaps) < 40 {
		b.Errorf("%d nodes were marked not Ready although every renewal succeeded within the lease", notReady-notReadyBefore)
	}
}

// simNode is one simulated node: its identity, its connection, its Lease.
type simNode struct {
	name   string
	tr     *http.Transport
	core   coreclient.CoreV1Interface
	leases coordclient.LeaseInterface
	uid    types.UID
	lease  *coordinationv1.Lease // last written; nil: read it first
}

func newSimNode(name, server, serverName string, pair tls.Certificate, pool *x509.CertPool) (*simNode, error) {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: serverName,
			MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 1,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	hc := &http.Client{Transport: tr, Timeout: 15 * time.Second}
	cfg := &rest.Config{Host: server, QPS: -1, UserAgent: "tether-fleet-sim",
		ContentConfig: rest.ContentConfig{ContentType: "application/vnd.kubernetes.protobuf",
			AcceptContentTypes: "application/vnd.kubernetes.protobuf,application/json"}}
	core, err := coreclient.NewForConfigAndClient(cfg, hc)
	if err != nil {
		return nil, err
	}
	coord, err := coordclient.NewForConfigAndClient(cfg, hc)
	if err != nil {
		return nil, err
	}
	return &simNode{name: name, tr: tr, core: core, leases: coord.Leases(corev1.NamespaceNodeLease)}, nil
}

func (n *simNode) close() { n.tr.CloseIdleConnections() }

// register writes what `tether agent` writes when it joins (see
// internal/nodeagent/node.go): the Node with its labels, its status, its
// Lease owned by the Node.
func (n *simNode) register(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: map[string]string{
		corev1.LabelHostname: n.name, corev1.LabelOSStable: "linux", corev1.LabelArchStable: "amd64"}}}
	created, err := n.core.Nodes().Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		created, err = n.core.Nodes().Get(ctx, n.name, metav1.GetOptions{})
	}
	if err != nil {
		return err
	}
	n.uid = created.UID
	now := metav1.Now()
	capacity := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("16Gi"),
		corev1.ResourcePods: resource.MustParse("110"), corev1.ResourceEphemeralStorage: resource.MustParse("100Gi")}
	created.Status = corev1.NodeStatus{
		// No traffic goes to the node: nothing asks for its kubelet.
		Addresses:       []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}, {Type: corev1.NodeHostName, Address: n.name}},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}},
		Capacity:        capacity, Allocatable: capacity.DeepCopy(),
		NodeInfo: corev1.NodeSystemInfo{MachineID: n.name, BootID: n.name, KernelVersion: "6.1.0", OSImage: "fleet simulation",
			ContainerRuntimeVersion: "tether-process://fleet", KubeletVersion: "v1.33.0", OperatingSystem: "linux", Architecture: "amd64"},
		Conditions: []corev1.NodeCondition{
			{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", LastHeartbeatTime: now, LastTransitionTime: now},
		},
	}
	// The IPAM controller may set spec.podCIDR in between: re-read on conflict.
	for attempt := 0; ; attempt++ {
		_, err = n.core.Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) || attempt == 5 {
			break
		}
		cur, gerr := n.core.Nodes().Get(ctx, n.name, metav1.GetOptions{})
		if gerr != nil {
			return gerr
		}
		cur.Status = created.Status
		created = cur
	}
	if err != nil {
		return fmt.Errorf("node status: %w", err)
	}
	renew := metav1.NewMicroTime(time.Now())
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: n.name, Namespace: corev1.NamespaceNodeLease,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.name, UID: n.uid}}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(n.name), LeaseDurationSeconds: ptr.To(int32(40)), RenewTime: &renew},
	}
	l, err := n.leases.Create(ctx, lease, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil // the renew loop reads it
	}
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	n.lease = l
	return nil
}

// renewLoop renews the Lease at a random phase every period ± 5 % until
// ctx ends. A renewal that is late starts at once, never in a burst.
func (n *simNode) renewLoop(ctx context.Context, period time.Duration, st *fleetStats) {
	next := time.Now().Add(rand.N(period))
	t := time.NewTimer(time.Until(next))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		started := time.Now()
		err := n.renew(ctx)
		if ctx.Err() != nil {
			return
		}
		st.record(n, started, time.Since(started), err)
		next = next.Add(period*95/100 + rand.N(period/10))
		t.Reset(max(0, time.Until(next)))
	}
}

func (n *simNode) renew(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if n.lease == nil {
		l, err := n.leases.Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.lease = l
	}
	l := n.lease.DeepCopy()
	now := metav1.NewMicroTime(time.Now())
	l.Spec.RenewTime = &now
	updated, err := n.leases.Update(ctx, l, metav1.UpdateOptions{})
	if err != nil {
		n.lease = nil
		return err
	}
	n.lease = updated
	return nil
}

// fleetStats collects renewals started inside the measuring window.
type fleetStats struct {
	mu      sync.Mutex
	on      bool
	started time.Time
	w       fleetWindow
	lastOK  map[*simNode]time.Time
}

type fleetWindow struct {
	ok, failed int
	firstErr   error
	latencies  []float64 // ms
	maxGap     time.Duration
}

func (s *fleetStats) begin() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.on, s.started, s.w, s.lastOK = true, time.Now(), fleetWindow{}, map[*simNode]time.Time{}
}

func (s *fleetStats) record(n *simNode, started time.Time, took time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.on || started.Before(s.started) {
		return
	}
	if err != nil {
		s.w.failed++
		if s.w.firstErr == nil {
			s.w.firstErr = err
		}
		return
	}
	s.w.ok++
	s.w.latencies = append(s.w.latencies, float64(took.Microseconds())/1000)
	done := started.Add(took)
	last, ok := s.lastOK[n]
	if !ok {
		last = s.started
	}
	s.w.maxGap = max(s.w.maxGap, done.Sub(last))
	s.lastOK[n] = done
}

// end closes the window; nodes without a successful renewal in it count
// with a gap of the whole window.
func (s *fleetStats) end() fleetWindow {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.on = false
	now := time.Now()
	for _, last := range s.lastOK {
		s.w.maxGap = max(s.w.maxGap, now.Sub(last))
	}
	w := s.w
	slices.Sort(w.latencies)
	return w
}

func (w fleetWindow) quantile(q float64) float64 {
	if len(w.latencies) == 0 {
		return 0
	}
	return w.latencies[min(len(w.latencies)-1, int(q*float64(len(w.latencies))))]
}

// waitPodCIDRs polls the Nodes (protobuf, from the watch cache) until
// every one of the fleet has spec.podCIDR or limit passes; it returns the
// time waited and how many still have none.
func waitPodCIDRs(ctx context.Context, cs kubernetes.Interface, nodes int, limit time.Duration) (time.Duration, int, error) {
	start := time.Now()
	for {
		list, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err != nil {
			return 0, 0, err
		}
		with := 0
		for _, n := range list.Items {
			if strings.HasPrefix(n.Name, "fleet-") && n.Spec.PodCIDR != "" {
				with++
			}
		}
		if with >= nodes || time.Since(start) > limit {
			return time.Since(start), nodes - with, nil
		}
		time.Sleep(time.Second) // poll interval
	}
}

// listClient is an admin client through the load balancer for lists of
// the whole fleet: protobuf, and patient with saturated hubs.
func (c *haCluster) listClient() (*kubernetes.Clientset, error) {
	cfg := c.config(c.lbURL)
	cfg.ContentType, cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf", "application/vnd.kubernetes.protobuf"
	cfg.Timeout = 2 * time.Minute
	cfg.QPS = -1
	return kubernetes.NewForConfig(cfg)
}

// countNotReady counts the Nodes whose Ready condition is not True or
// that carry the unreachable taint (the node lifecycle controller's marks).
func countNotReady(ctx context.Context, cs coreclient.CoreV1Interface) (int, error) {
	list, err := cs.Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return 0, err
	}
	bad := 0
	for _, n := range list.Items {
		ready := false
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				ready = true
			}
		}
		for _, t := range n.Spec.Taints {
			if t.Key == corev1.TaintNodeUnreachable {
				ready = false
			}
		}
		if !ready {
			bad++
		}
	}
	return bad, nil
}

// hubRSS is the summed VmRSS (KiB) of the running hub replicas.
func (c *haCluster) hubRSS() (int64, error) {
	var sum int64
	for i, h := range c.hubs {
		if h.cmd == nil {
			return 0, fmt.Errorf("hub %d is not running", i+1)
		}
		kib, err := vmRSS(h.cmd.Process.Pid)
		if err != nil {
			return 0, err
		}
		sum += kib
	}
	return sum, nil
}

func vmRSS(pid int) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, errors.New("no VmRSS in /proc/" + strconv.Itoa(pid) + "/status")
}

// hubGoMetrics sums go_goroutines, go_memstats_heap_inuse_bytes and
// go_memstats_next_gc_bytes over the replicas' /metrics. The GC target is
// twice the heap live after the last collection (GOGC=100): half of it
// estimates the live heap, without the garbage awaiting collection that
// heap-in-use and RSS include.
func (c *haCluster) hubGoMetrics(t testing.TB) map[string]float64 {
	t.Helper()
	sum := map[string]float64{}
	for i, h := range c.hubs {
		cfg := c.config(h.url(c.port))
		cfg.Timeout = 2 * time.Minute
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
		cancel()
		if err != nil {
			t.Logf("hub %d /metrics (left out of the Go runtime metrics): %v", i+1, err)
			continue
		}
		for _, line := range strings.Split(string(body), "\n") {
			name, val, ok := strings.Cut(line, " ")
			if !ok || (name != "go_goroutines" && name != "go_memstats_heap_inuse_bytes" && name != "go_memstats_next_gc_bytes") {
				continue
			}
			f, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err != nil {
				t.Fatalf("hub %d /metrics: %q: %v", i+1, line, err)
			}
			sum[name] += f
		}
	}
	return sum
}

// saveHeapProfiles writes every replica's /debug/pprof/heap to dir
// (TETHER_FLEET_PPROF: investigating the per-node memory).
func (c *haCluster) saveHeapProfiles(t testing.TB, dir, tag string) {
	t.Helper()
	for i, h := range c.hubs {
		cs, err := kubernetes.NewForConfig(c.config(h.url(c.port)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/debug/pprof/heap").DoRaw(ctx)
		cancel()
		if err != nil {
			t.Fatalf("hub %d heap profile: %v", i+1, err)
		}
		if err := os.WriteFile(fmt.Sprintf("%s/hub-%d-%s.heap", dir, i+1, tag), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// saveCPUProfiles starts fetching a CPU profile of d from every replica
// into dir; wg is done when they are written (errors are logged).
func (c *haCluster) saveCPUProfiles(t testing.TB, wg *sync.WaitGroup, dir string, d time.Duration) {
	for i, h := range c.hubs {
		cfg := c.config(h.url(c.port))
		cfg.Timeout = d + time.Minute
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), d+time.Minute)
			defer cancel()
			body, err := cs.Discovery().RESTClient().Get().AbsPath("/debug/pprof/profile").Param("seconds", strconv.Itoa(int(d.Seconds()))).
				Timeout(d + time.Minute).DoRaw(ctx)
			if err == nil {
				err = os.WriteFile(fmt.Sprintf("%s/hub-%d.cpu", dir, i+1), body, 0o644)
			}
			if err == nil {
				body, err = cs.Discovery().RESTClient().Get().AbsPath("/debug/pprof/goroutine").Param("debug", "1").DoRaw(ctx)
			}
			if err == nil {
				err = os.WriteFile(fmt.Sprintf("%s/hub-%d.goroutines", dir, i+1), body, 0o644)
			}
			if err != nil {
				t.Logf("hub %d CPU profile: %v", i+1, err)
			}
		}()
	}
}

// hubCPU is the CPU time (user+system, seconds) the hub replicas used so far.
func (c *haCluster) hubCPU() (float64, error) {
	var sum float64
	for i, h := range c.hubs {
		if h.cmd == nil {
			return 0, fmt.Errorf("hub %d is not running", i+1)
		}
		b, err := os.ReadFile("/proc/" + strconv.Itoa(h.cmd.Process.Pid) + "/stat")
		if err != nil {
			return 0, err
		}
		// Fields after the parenthesised command name; utime and stime
		// are fields 14 and 15 of the whole line.
		rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
		f := strings.Fields(rest)
		if len(f) < 13 {
			return 0, fmt.Errorf("short /proc/%d/stat", h.cmd.Process.Pid)
		}
		ut, err1 := strconv.ParseFloat(f[11], 64)
		stime, err2 := strconv.ParseFloat(f[12], 64)
		if err := errors.Join(err1, err2); err != nil {
			return 0, err
		}
		sum += (ut + stime) / 100 // USER_HZ
	}
	return sum, nil
}

// hubLogLines returns every hub's server.log as lines.
func (c *haCluster) hubLogLines() [][]string {
	out := make([][]string, len(c.hubs))
	for i, h := range c.hubs {
		b, _ := os.ReadFile(h.dir + "/server.log")
		out[i] = strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		if len(b) == 0 {
			out[i] = nil
		}
	}
	return out
}

// topLines names the most frequent log messages (timestamps and per-node
// names cut off) with their counts.
func topLines(lines []string, k int) string {
	count := map[string]int{}
	for _, l := range lines {
		if _, after, ok := strings.Cut(l, "msg="); ok {
			l = after
		} else if len(l) > 30 {
			l = l[30:] // klog header
		}
		if i := strings.Index(l, "fleet-"); i >= 0 {
			l = l[:i]
		}
		count[l[:min(len(l), 100)]]++
	}
	keys := slices.Collect(maps.Keys(count))
	slices.SortFunc(keys, func(a, b string) int { return count[b] - count[a] })
	var parts []string
	for _, key := range keys[:min(k, len(keys))] {
		parts = append(parts, fmt.Sprintf("%d× %q", count[key], key))
	}
	return strings.Join(parts, "; ")
}

func errString(err error) string {
	if err == nil {
		return "none"
	}
	return err.Error()
}

// etcdInUse compacts etcd's history up to now (as the hubs' compactor
// does every 5 minutes) and returns the in-use database size (bytes) of
// the first member: the live objects, not the lease renewals' history.
func (c *haCluster) etcdInUse(t testing.TB) int64 {
	t.Helper()
	u := c.etcd.ClientURLs()[0]
	cli := c.etcdClient(t, []string{u})
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := cli.Status(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, st.Header.Revision, clientv3.WithCompactPhysical()); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatal(err)
	}
	if st, err = cli.Status(ctx, u); err != nil {
		t.Fatal(err)
	}
	return st.DbSizeInUse
}

// loadAvg is the 1-minute load average (0 if unreadable).
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}

func envInt(name string, def int) (int, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	return strconv.Atoi(v)
}

func envDuration(name string, def time.Duration) (time.Duration, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	return time.ParseDuration(v)
}

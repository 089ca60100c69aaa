package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-dev/tether/internal/tcplb"
)

// partitionNet is a node network namespace of this test run: a veth pair
// with a /30 of 100.88.<pid%256>.0/24 (the root namespace gets an
// unreachable route for that /24 unless one is there), node-facing hub
// forwarders on the root side (the hubs listen on 127.x, which the
// namespace cannot reach), and an nftables table that drops everything on
// the node's veth while the partition is on.
type partitionNet struct {
	ns, rootLink, nodeLink string
	cidr, rootIP, nodeIP   string
	routeAdded             bool
	cancelFwd              context.CancelFunc
	fwdDone                []chan error
	closed                 bool
}

const partitionTable = "tether_e2e_partition"

func newPartitionNet(t *testing.T) *partitionNet {
	t.Helper()
	pid := os.Getpid()
	third := pid % 256
	p := &partitionNet{
		ns:       fmt.Sprintf("tether-e2e-part-%d", pid),
		rootLink: fmt.Sprintf("tp%dr", pid), nodeLink: fmt.Sprintf("tp%dn", pid),
		cidr:   fmt.Sprintf("100.88.%d.0/24", third),
		rootIP: fmt.Sprintf("100.88.%d.1", third), nodeIP: fmt.Sprintf("100.88.%d.2", third),
	}
	if out, _ := exec.Command("ip", "-o", "addr", "show").Output(); bytes.Contains(out, []byte(" "+p.rootIP+"/")) {
		t.Fatalf("%s is already in use on this machine (another run with the same pid%%256?):\n%s", p.rootIP, out)
	}
	t.Cleanup(func() { p.close(t) })
	p.routeAdded = !routeExists(t, p.cidr)
	steps := [][]string{}
	if p.routeAdded {
		steps = append(steps, []string{"route", "add", "unreachable", p.cidr})
	}
	steps = append(steps,
		[]string{"netns", "add", p.ns},
		[]string{"link", "add", p.rootLink, "type", "veth", "peer", "name", p.nodeLink, "netns", p.ns},
		[]string{"addr", "add", p.rootIP + "/30", "dev", p.rootLink},
		[]string{"link", "set", p.rootLink, "up"},
		[]string{"-n", p.ns, "link", "set", "lo", "up"},
		[]string{"-n", p.ns, "addr", "add", p.nodeIP + "/30", "dev", p.nodeLink},
		[]string{"-n", p.ns, "link", "set", p.nodeLink, "up"},
	)
	for _, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	// The veth's root side needs no DAD wait (IPv4), but the link must be up
	// on both ends before a listener on rootIP can be reached.
	eventually(t, 10*time.Second, "veth "+p.rootLink+" up", func() error {
		out, err := exec.Command("ip", "-o", "link", "show", p.rootLink).Output()
		if err != nil {
			return err
		}
		if !bytes.Contains(out, []byte("LOWER_UP")) {
			return fmt.Errorf("link %s", bytes.TrimSpace(out))
		}
		return nil
	})
	return p
}

// forwardHubs starts one forwarder per hub replica on rootIP (ephemeral
// ports) and returns the agent's --server list: one URL per replica, as
// the root-namespace agents have.
func (p *partitionNet) forwardHubs(t *testing.T, c *haCluster) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p.cancelFwd = cancel
	var servers []string
	for _, h := range c.hubs {
		ln, err := net.Listen("tcp", net.JoinHostPort(p.rootIP, "0"))
		if err != nil {
			t.Fatal(err)
		}
		lb, err := tcplb.New(tcplb.Config{Listener: ln, Backends: []string{net.JoinHostPort(h.ip, strconv.Itoa(c.port))}})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- lb.Run(ctx) }()
		p.fwdDone = append(p.fwdDone, done)
		servers = append(servers, "https://"+ln.Addr().String())
	}
	return strings.Join(servers, ",")
}

func (p *partitionNet) nft() (*nftables.Conn, func(), error) {
	f, err := os.Open("/run/netns/" + p.ns)
	if err != nil {
		return nil, nil, err
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return c, func() { _ = c.CloseLasting(); f.Close() }, nil
}

// cut installs, inside the node's namespace:
//
//	table inet tether_e2e_partition {
//	  chain input  { type filter hook input priority 0;  iifname <node veth> counter drop }
//	  chain output { type filter hook output priority 0; oifname <node veth> counter drop }
//	}
func (p *partitionNet) cut() error {
	c, done, err := p.nft()
	if err != nil {
		return err
	}
	defer done()
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: partitionTable})
	for _, h := range []struct {
		name string
		hook *nftables.ChainHook
		key  expr.MetaKey
	}{{"input", nftables.ChainHookInput, expr.MetaKeyIIFNAME}, {"output", nftables.ChainHookOutput, expr.MetaKeyOIFNAME}} {
		ch := c.AddChain(&nftables.Chain{Name: h.name, Table: tbl, Type: nftables.ChainTypeFilter, Hooknum: h.hook, Priority: nftables.ChainPriorityFilter})
		name := make([]byte, unix.IFNAMSIZ)
		copy(name, p.nodeLink)
		c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: h.key, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables in %s: %w", p.ns, err)
	}
	return nil
}

// dropped returns the packets dropped so far per chain.
func (p *partitionNet) dropped() (map[string]uint64, error) {
	c, done, err := p.nft()
	if err != nil {
		return nil, err
	}
	defer done()
	tbl := &nftables.Table{Family: nftables.TableFamilyINet, Name: partitionTable}
	got := map[string]uint64{}
	for _, ch := range []string{"input", "output"} {
		rules, err := c.GetRules(tbl, &nftables.Chain{Name: ch})
		if err != nil {
			return nil, err
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					got[ch] += ctr.Packets
				}
			}
		}
	}
	return got, nil
}

// heal deletes the table (if it is there).
func (p *partitionNet) heal() error {
	c, done, err := p.nft()
	if err != nil {
		return err
	}
	defer done()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return err
	}
	for _, tb := range tables {
		if tb.Name == partitionTable {
			c.DelTable(tb)
			return c.Flush()
		}
	}
	return nil
}

// close removes everything newPartitionNet and forwardHubs made; the
// agent in the namespace must be stopped first.
func (p *partitionNet) close(t *testing.T) {
	if p.closed {
		return
	}
	p.closed = true
	if p.cancelFwd != nil {
		p.cancelFwd()
		for _, d := range p.fwdDone {
			<-d
		}
	}
	// Deleting the namespace destroys the veth pair (both ends) and the
	// nftables table with it.
	if out, err := exec.Command("ip", "netns", "del", p.ns).CombinedOutput(); err != nil && !bytes.Contains(out, []byte("No such file")) {
		t.Errorf("ip netns del %s: %v %s", p.ns, err, out)
	}
	_ = exec.Command("ip", "link", "del", p.rootLink).Run() // gone with the namespace unless something holds it
	if p.routeAdded {
		if out, err := exec.Command("ip", "route", "del", "unreachable", p.cidr).CombinedOutput(); err != nil {
			t.Errorf("ip route del unreachable %s: %v %s", p.cidr, err, out)
		}
	}
}

// assertGone: no namespace, veth, route or process of this run is left.
func (p *partitionNet) assertGone(t *testing.T, marker string) {
	t.Helper()
	eventually(t, 10*time.Second, "namespace and veth pair removed", func() error {
		if _, err := os.Stat("/run/netns/" + p.ns); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("network namespace %s still there: %v", p.ns, err)
		}
		links, err := exec.Command("ip", "-o", "link", "show").Output()
		if err != nil {
			return err
		}
		for _, l := range []string{p.rootLink, p.nodeLink} {
			if bytes.Contains(links, []byte(" "+l+"@")) || bytes.Contains(links, []byte(" "+l+":")) {
				return fmt.Errorf("link %s still there", l)
			}
		}
		return nil
	})
	if p.routeAdded && routeExists(t, p.cidr) {
		t.Errorf("the unreachable route for %s this run added was left behind", p.cidr)
	}
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		for _, f := range []string{"cmdline", "environ"} {
			b, _ := os.ReadFile("/proc/" + e.Name() + "/" + f)
			if bytes.Contains(b, []byte(marker)) {
				t.Errorf("process %s (%s) of the partitioned node still runs", e.Name(), bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
				break
			}
		}
	}
}

// seqOf parses "seq N" lines and checks they count up from 0 without a
// gap or a restart; it returns the last N.
func seqOf(logs string) (int, error) {
	last := -1
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || f[0] != "seq" {
			continue
		}
		n, err := strconv.Atoi(f[1])
		if err != nil {
			return last, fmt.Errorf("bad line %q", sc.Text())
		}
		if n != last+1 {
			return last, fmt.Errorf("seq %d after %d: the pod restarted or lost output", n, last)
		}
		last = n
	}
	if last < 0 {
		return last, errors.New("no seq line")
	}
	return last, nil
}

func nodeCondition(n *corev1.Node) corev1.ConditionStatus {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status
		}
	}
	return ""
}

func hasUnreachableTaint(n *corev1.Node) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == corev1.TaintNodeUnreachable && t.Effect == corev1.TaintEffectNoExecute {
			return true
		}
	}
	return false
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// kubeletPods lists the pods node's agent runs, through the hub's node
// proxy (GET /pods of the kubelet API).
func kubeletPods(ctx context.Context, cs kubernetes.Interface, node string) (*corev1.PodList, error) {
	body, err := cs.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes/" + node + "/proxy/pods").DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	var l corev1.PodList
	if err := json.Unmarshal(body, &l); err != nil {
		return nil, fmt.Errorf("kubelet /pods of %s: %w", node, err)
	}
	return &l, nil
}

// TestHAPartition: three etcd members, three hubs, three nodes; the third
// node's agent runs in a network namespace of this test, and an nftables
// drop rule there cuts it off for 60s. The node goes Ready=Unknown with the
// unreachable taint, new pods go to the other nodes, writes through the
// load balancer go on; after healing the node is Ready and untainted, its
// pods are the same processes (same UID, container ID, no restart, log
// sequence unbroken), no pod runs twice, and every acknowledged write is
// there.
func TestHAPartition(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestHAPartition needs root (network namespaces, veth, nftables); CI runs the e2e tests as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("TestHAPartition needs ip(8): apt-get install iproute2")
	}
	const (
		hold  = 60 * time.Second // the whole partition
		grace = 40 * time.Second // the node lifecycle controller's
	)
	start := time.Now()
	c := startHACluster(t, 2)
	cs := c.client(t)
	ctx := context.Background()
	marker := filepath.Join(c.dir, "ha3") // on the agent's command line and in its pods' environment

	pn := newPartitionNet(t)
	a := &agent{Name: "ha3", Dir: marker, IP: pn.nodeIP, KubeletPort: 10250, // the namespace's own port space
		NetFlags: []string{"--pod-network=host", "--service-proxy=userspace"}, Wrap: []string{"ip", "netns", "exec", pn.ns}}
	if err := c.startAgent(a, pn.forwardHubs(t, c)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.stop) // before the namespace goes (cleanups run last-in first-out)
	if err := a.waitReady(cs); err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster with the partitionable node ha3 (%s in %s) ready after %s", pn.nodeIP, pn.ns, time.Since(start).Round(time.Millisecond))

	ns := "partition"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The pods of the node to cut off: one prints a sequence, one sleeps.
	var orig []*corev1.Pod
	for _, p := range []*corev1.Pod{
		podOn(a.Name, "seq", corev1.RestartPolicyAlways, "sh", "-c", `i=0; while :; do echo "seq $i"; i=$((i+1)); sleep 1; done`),
		podOn(a.Name, "sleeper", corev1.RestartPolicyAlways, "sleep", "3600"),
	} {
		p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "TETHER_E2E_PARTITION", Value: marker}}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"seq", "sleeper"} {
		var pod *corev1.Pod
		eventually(t, 60*time.Second, "pod "+name+" running and Ready on ha3", func() error {
			var err error
			if pod, err = cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
				return err
			}
			if !podReady(pod) || len(pod.Status.ContainerStatuses) != 1 || pod.Status.ContainerStatuses[0].State.Running == nil {
				return fmt.Errorf("status %+v", pod.Status)
			}
			return nil
		})
		orig = append(orig, pod)
	}
	var seqBefore int
	eventually(t, 30*time.Second, "logs of seq through the hub (hub → kubelet over the veth)", func() error {
		b, err := cs.CoreV1().Pods(ns).GetLogs("seq", &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			return err
		}
		seqBefore, err = seqOf(string(b))
		return err
	})

	// ConfigMaps part-<n> in "default" through the load balancer, the
	// whole time (ha_faults_test.go's writer); some acknowledged before the cut.
	w := startWriter(t, c, "part-")
	w.waitAcks(t, start, 5, 30*time.Second)

	// The cut.
	if err := pn.cut(); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	healed := false
	defer func() {
		if !healed {
			_ = pn.heal()
		}
	}()
	t.Logf("partition on: nftables table %s drops everything on %s in %s", partitionTable, pn.nodeLink, pn.ns)

	// The node goes Ready=Unknown with the unreachable taint, and its pods
	// not Ready, after the grace period (40s without a Lease renewal; the
	// last one was up to 10s before the cut, the controller checks every 5s).
	var notReadyAfter, taintedAfter time.Duration
	eventually(t, grace+30*time.Second, "ha3 NotReady with the unreachable taint", func() error {
		n, err := cs.CoreV1().Nodes().Get(ctx, a.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		st := nodeCondition(n)
		if st != corev1.ConditionTrue && notReadyAfter == 0 {
			notReadyAfter = time.Since(cut)
		}
		if hasUnreachableTaint(n) && taintedAfter == 0 {
			taintedAfter = time.Since(cut)
		}
		if st == corev1.ConditionTrue || !hasUnreachableTaint(n) {
			return fmt.Errorf("Ready=%s, taints %v", st, n.Spec.Taints)
		}
		return nil
	})
	t.Logf("partition → ha3 NotReady after %s, tainted node.kubernetes.io/unreachable:NoExecute after %s", notReadyAfter.Round(time.Millisecond), taintedAfter.Round(time.Millisecond))
	if notReadyAfter < grace-15*time.Second {
		t.Errorf("ha3 NotReady %s after the cut: earlier than the %s grace period allows", notReadyAfter, grace)
	}
	eventually(t, 20*time.Second, "ha3's pods marked not Ready", func() error {
		for _, o := range orig {
			p, err := cs.CoreV1().Pods(ns).Get(ctx, o.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if podReady(p) {
				return fmt.Errorf("pod %s still Ready", p.Name)
			}
		}
		return nil
	})
	// The hub cannot reach the node's kubelet now.
	func() {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := cs.CoreV1().Pods(ns).GetLogs("seq", &corev1.PodLogOptions{}).DoRaw(lctx); err == nil {
			t.Error("logs of a pod on the partitioned node were served")
		}
	}()

	// Pods created now go to the healthy nodes only.
	var during []string
	for i := range 4 {
		name := fmt.Sprintf("during-%d", i)
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyAlways,
			TerminationGracePeriodSeconds: new(int64), Containers: []corev1.Container{{Name: "c", Image: "process", Command: []string{"sleep", "3600"}}}}}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		during = append(during, name)
	}
	scheduled := map[string]string{}
	eventually(t, 30*time.Second, "pods created during the partition scheduled", func() error {
		for _, name := range during {
			p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if p.Spec.NodeName == "" {
				return fmt.Errorf("%s not scheduled yet", name)
			}
			scheduled[name] = p.Spec.NodeName
		}
		return nil
	})
	for name, node := range scheduled {
		if node == a.Name {
			t.Errorf("pod %s created during the partition was scheduled to the partitioned node", name)
		}
	}
	t.Logf("pods created during the partition: %v", scheduled)

	// Hold the partition until 60s after the cut.
	if d := time.Until(cut.Add(hold)); d > 0 {
		select {
		case <-a.exited:
			t.Fatalf("the partitioned agent exited: %v\n%s", a.err, a.tail())
		case <-time.After(d):
		}
	}
	drops, err := pn.dropped()
	if err != nil {
		t.Fatal(err)
	}
	if err := pn.heal(); err != nil {
		t.Fatal(err)
	}
	healAt := time.Now()
	healed = true
	t.Logf("partition healed after %s; packets dropped: %v", healAt.Sub(cut).Round(time.Millisecond), drops)
	if drops["input"] == 0 || drops["output"] == 0 {
		t.Errorf("the drop rules dropped nothing (%v): the node was not cut off", drops)
	}
	writesDuring := 0
	w.mu.Lock()
	for _, ack := range w.acked {
		if ack.end.After(cut) && ack.end.Before(healAt) {
			writesDuring++
		}
	}
	w.mu.Unlock()

	// Back: Ready, untainted, the same pods Ready again. The agent posts
	// its status as soon as its Lease renews again (every 10s; a dial to
	// each forwarder may time out after 3s first), the controller removes
	// the taint at its next check (every 5s).
	var readyAfter, untaintedAfter time.Duration
	eventually(t, 45*time.Second, "ha3 Ready without the unreachable taint", func() error {
		n, err := cs.CoreV1().Nodes().Get(ctx, a.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if nodeCondition(n) == corev1.ConditionTrue && readyAfter == 0 {
			readyAfter = time.Since(healAt)
		}
		if !hasUnreachableTaint(n) && untaintedAfter == 0 {
			untaintedAfter = time.Since(healAt)
		}
		if nodeCondition(n) != corev1.ConditionTrue || hasUnreachableTaint(n) {
			return fmt.Errorf("Ready=%s, taints %v", nodeCondition(n), n.Spec.Taints)
		}
		return nil
	})
	t.Logf("heal → ha3 Ready after %s, taint removed after %s", readyAfter.Round(time.Millisecond), untaintedAfter.Round(time.Millisecond))
	var podsReadyAfter time.Duration
	eventually(t, 60*time.Second, "ha3's pods Ready again", func() error {
		for _, o := range orig {
			p, err := cs.CoreV1().Pods(ns).Get(ctx, o.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !podReady(p) {
				return fmt.Errorf("pod %s not Ready: %+v", p.Name, p.Status.Conditions)
			}
		}
		podsReadyAfter = time.Since(healAt)
		return nil
	})
	t.Logf("heal → ha3's pods Ready again after %s", podsReadyAfter.Round(time.Millisecond))
	for _, o := range orig {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, o.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b, now := o.Status.ContainerStatuses[0], p.Status.ContainerStatuses[0]
		if p.UID != o.UID || p.Spec.NodeName != a.Name || now.ContainerID != b.ContainerID || now.RestartCount != 0 || now.State.Running == nil {
			t.Errorf("pod %s is not the one from before the partition: uid %s→%s node %s container %s→%s restarts %d running %v",
				o.Name, o.UID, p.UID, p.Spec.NodeName, b.ContainerID, now.ContainerID, now.RestartCount, now.State.Running != nil)
		}
	}
	// The sequence went on through the partition: the agent kept the
	// process running, and its log is complete.
	eventually(t, 30*time.Second, "seq's log continued through the partition", func() error {
		b, err := cs.CoreV1().Pods(ns).GetLogs("seq", &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			return err
		}
		last, err := seqOf(string(b))
		if err != nil {
			return err
		}
		// One line a second; allow for a loaded machine.
		if want := seqBefore + int(hold/time.Second)/2; last < want {
			return fmt.Errorf("seq at %d, want ≥ %d (was %d before the cut)", last, want, seqBefore)
		}
		return nil
	})

	// No duplicates: every pod name once in the API, on the node it was
	// bound to, and no kubelet runs a pod another node has.
	list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := len(orig) + len(during); len(list.Items) != want {
		t.Errorf("%d pods in %s, want %d (no extra pods)", len(list.Items), ns, want)
	}
	runningOn := map[string]string{}
	for _, n := range []string{"ha1", "ha2", "ha3"} {
		var l *corev1.PodList
		eventually(t, 30*time.Second, "kubelet pods of "+n, func() error {
			var err error
			l, err = kubeletPods(ctx, cs, n)
			return err
		})
		for _, p := range l.Items {
			if p.Namespace != ns {
				continue
			}
			if prev, dup := runningOn[p.Name]; dup {
				t.Errorf("pod %s runs on %s and %s", p.Name, prev, n)
			}
			runningOn[p.Name] = n
		}
	}
	for _, o := range orig {
		if runningOn[o.Name] != a.Name {
			t.Errorf("pod %s runs on %q, want %s", o.Name, runningOn[o.Name], a.Name)
		}
	}
	for name, node := range scheduled {
		if on, ok := runningOn[name]; ok && on != node {
			t.Errorf("pod %s bound to %s runs on %s", name, node, on)
		}
	}
	t.Logf("pods per kubelet after healing: %v", runningOn)

	// Every acknowledged write is there with its value.
	w.stop()
	cms, err := cs.CoreV1().ConfigMaps("default").List(ctx, metav1.ListOptions{LabelSelector: "writer=part"})
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]string{}
	for _, cm := range cms.Items {
		have[cm.Name] = cm.Data["n"]
	}
	acked := w.ackedNames()
	for _, name := range acked {
		if got, ok := have[name]; !ok || got != strings.TrimPrefix(name, "part-") {
			t.Errorf("acknowledged write %s lost (have %q, %v)", name, got, ok)
		}
	}
	w.mu.Lock()
	t.Logf("writer: %d writes acknowledged (%d during the partition), %d failed (last error %v)", len(acked), writesDuring, len(w.failed), w.last)
	w.mu.Unlock()
	if writesDuring == 0 {
		t.Error("no write was acknowledged during the partition of one node")
	}

	// Clean up this test's network and processes and check nothing is left.
	a.stop()
	if a.err != nil {
		t.Errorf("agent ha3 did not exit cleanly on SIGTERM: %v\n%s", a.err, a.tail())
	}
	pn.close(t)
	pn.assertGone(t, marker)
	t.Logf("TestHAPartition took %s", time.Since(start).Round(time.Millisecond))
}

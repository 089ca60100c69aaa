package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-dev/tether/internal/nodeagent/podnet"
)

// TestPodNetwork is the pod → hub path as Kubernetes has it, with real
// processes as root: a hub (`tether up --nodes 0`) and a `tether agent`
// with --pod-network=netns and --service-proxy=nftables. Pods get their own
// network namespace and IP from the node's podCIDR (allocated by the hub),
// their service-account volume at the standard path in their own mount
// namespace, and reach the API server only through the kubernetes Service
// VIP (nftables DNAT, TLS end to end): an unmodified client-go program
// using rest.InClusterConfig() lists its pods and is refused secrets
// elsewhere; curl with the mounted token and CA gets /api through the VIP
// while the hub's own address is unreachable from the pod. Then the hub is
// killed: the agent keeps its pods running, retries, and recovers when the
// hub returns. On agent exit every device, namespace and route it made is
// gone.
func TestPodNetwork(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestPodNetwork needs root (network namespaces, veth, nftables); CI runs the e2e tests as root")
	}
	clusterCIDR, serviceCIDR := freeRanges(t)
	dir := t.TempDir()
	h, err := newHub(filepath.Join(dir, "hub"))
	if err != nil {
		t.Fatal(err)
	}
	h.ServiceCIDR, h.ClusterCIDR = serviceCIDR.String(), clusterCIDR.String()
	if err := os.MkdirAll(h.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Stop)
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	agents, err := startAgentsWith(h, dir, 1, []string{"--pod-network=netns", "--service-proxy=nftables",
		"--cluster-cidr", clusterCIDR.String(), "--service-cidr", serviceCIDR.String()})
	if err != nil {
		t.Fatal(err)
	}
	a := agents[0]
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			a.stop()
		}
	})
	prog := buildInCluster(t, dir)

	cs, err := kubernetes.NewForConfig(h.configNoT())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	node, err := cs.CoreV1().Nodes().Get(ctx, a.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	podCIDR, err := netip.ParsePrefix(node.Spec.PodCIDR)
	if err != nil || !clusterCIDR.Contains(podCIDR.Addr()) || podCIDR.Bits() != 24 {
		t.Fatalf("node podCIDR %q (%v): want a /24 of %s", node.Spec.PodCIDR, err, clusterCIDR)
	}
	vip := serviceCIDR.Addr().Next().String() // the kubernetes Service

	seq := runSeq.Add(1)
	ns, other := fmt.Sprintf("podnet-%d", seq), fmt.Sprintf("podnet-other-%d", seq)
	for _, n := range []string{ns, other} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cs.CoreV1().Secrets(other).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s"}, StringData: map[string]string{"k": "v"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The default service account of ns may list pods there, nothing else.
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules: []rbacv1.PolicyRule{{Verbs: []string{"get", "list"}, APIGroups: []string{""}, Resources: []string{"pods"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pod-reader"},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "default", Namespace: ns}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	k := newKubectl(t, lastOf(installedKubectls(t)), h)

	// A long-running pod that must survive the hub's outage.
	sleeper := podOn(a.Name, "sleeper", corev1.RestartPolicyAlways, "sleep", "3600")
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, sleeper, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("in-cluster client-go", func(t *testing.T) {
		p := podOn(a.Name, "incluster", corev1.RestartPolicyNever, prog, other)
		pod := runToCompletion(t, ctx, cs, ns, p)
		logs := k.ok(t, "logs", "-n", ns, "incluster")
		if pod.Status.Phase != corev1.PodSucceeded {
			t.Fatalf("in-cluster program: phase %s\n%s", pod.Status.Phase, logs)
		}
		wantContains(t, "in-cluster program output", logs, "HOST https://"+vip+":443", "LIST-PODS-OK", "SECRETS-FORBIDDEN")
		ip, err := netip.ParseAddr(pod.Status.PodIP)
		if err != nil || !podCIDR.Contains(ip) || ip == podCIDR.Addr().Next() {
			t.Fatalf("pod IP %q is not a pod address of %s", pod.Status.PodIP, podCIDR)
		}
	})

	curlScript := func() string {
		return `d=/var/run/secrets/kubernetes.io/serviceaccount
echo "ROUTES=$(ip -4 route | tr '\n' ';')"
echo "SERVICE=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
curl -sS --max-time 20 --cacert $d/ca.crt -H "Authorization: Bearer $(cat $d/token)" https://$KUBERNETES_SERVICE_HOST/api || exit 3
if curl -sS -k --max-time 3 https://127.0.0.1:` + strconv.Itoa(h.Port) + `/api >/dev/null 2>&1; then echo DIRECT=reachable; else echo DIRECT=unreachable; fi`
	}
	curlPod := func(t *testing.T, name string) {
		t.Helper()
		pod := runToCompletion(t, ctx, cs, ns, podOn(a.Name, name, corev1.RestartPolicyNever, "sh", "-c", curlScript()))
		logs := k.ok(t, "logs", "-n", ns, name)
		if pod.Status.Phase != corev1.PodSucceeded {
			t.Fatalf("curl pod %s: phase %s\n%s", name, pod.Status.Phase, logs)
		}
		gw := podCIDR.Addr().Next().String()
		wantContains(t, "curl pod output", logs, `"kind": "APIVersions"`, "SERVICE="+vip+":443", "DIRECT=unreachable",
			"default via "+gw+" dev eth0")
		// The pod's only routes are its own /24 and the default via the
		// bridge: the hub's address (127.0.0.1 here) is the pod's own
		// loopback, so the API server is reachable only through the VIP.
		for _, line := range strings.Split(logs, "\n") {
			if r, ok := strings.CutPrefix(line, "ROUTES="); ok && strings.Count(r, ";") != 2 {
				t.Fatalf("pod routes: want exactly the default route and the pod /24, got %q", r)
			}
		}
	}
	t.Run("curl through the kubernetes VIP", func(t *testing.T) { curlPod(t, "curl") })

	t.Run("hub outage", func(t *testing.T) {
		before, err := cs.CoreV1().Pods(ns).Get(ctx, "sleeper", metav1.GetOptions{})
		if err != nil || len(before.Status.ContainerStatuses) != 1 || before.Status.ContainerStatuses[0].State.Running == nil {
			t.Fatalf("sleeper not running before the outage: %v %+v", err, before.Status)
		}
		h.Kill()
		// The agent outlives the hub (it retries with backoff).
		outage := time.Now()
		select {
		case <-a.exited:
			t.Fatalf("agent exited when the hub went away: %v\n%s", a.err, a.tail())
		case <-time.After(3 * time.Second):
		}
		if err := h.Start(); err != nil {
			t.Fatal(err)
		}
		cs, err := kubernetes.NewForConfig(h.configNoT())
		if err != nil {
			t.Fatal(err)
		}
		// Recovered: the Lease is renewed after the restart and the node is
		// Ready; the pod kept running (same process, no restart).
		deadline := time.Now().Add(readyTimeout)
		for {
			lease, lerr := cs.CoordinationV1().Leases("kube-node-lease").Get(ctx, a.Name, metav1.GetOptions{})
			n, nerr := cs.CoreV1().Nodes().Get(ctx, a.Name, metav1.GetOptions{})
			if lerr == nil && nerr == nil && lease.Spec.RenewTime != nil && lease.Spec.RenewTime.After(outage) && nodeReady(n) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node did not recover after the hub restart: lease %v / %v, node %v\n%s", lease, lerr, nerr, a.tail())
			}
			time.Sleep(200 * time.Millisecond)
		}
		after, err := cs.CoreV1().Pods(ns).Get(ctx, "sleeper", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b, c := before.Status.ContainerStatuses[0], after.Status.ContainerStatuses[0]
		if c.State.Running == nil || c.RestartCount != 0 || c.ContainerID != b.ContainerID {
			t.Fatalf("sleeper did not keep running: before %+v, after %+v", b, c)
		}
		// And pods reach the restarted hub through the VIP again.
		curlPod(t, "curl-after")
	})

	// Agent exit: the bridge, veths, namespaces, routes and the nftables
	// table are all gone.
	a.stop()
	stopped = true
	prefix := podnet.Prefix(a.Name, a.Dir)
	links, _ := exec.Command("ip", "-o", "link").Output()
	if strings.Contains(string(links), prefix) {
		t.Errorf("links with prefix %s left after the agent stopped:\n%s", prefix, links)
	}
	if ents, err := os.ReadDir(podnet.NetnsDir); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), prefix) {
				t.Errorf("network namespace %s left after the agent stopped", e.Name())
			}
		}
	}
	for _, c := range []netip.Prefix{clusterCIDR, serviceCIDR} {
		if out, _ := exec.Command("ip", "route", "show", "exact", c.String()).Output(); len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("route for %s left after the agent stopped: %s", c, out)
		}
	}
}

// freeRanges picks a cluster and a service range for this run that no
// route of the machine uses yet (other runs may be using theirs).
func freeRanges(t *testing.T) (netip.Prefix, netip.Prefix) {
	t.Helper()
	pick := func(lo int) netip.Prefix {
		for range 50 {
			p := netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", lo+rand.IntN(50)))
			out, err := exec.Command("ip", "route", "show", "table", "all", "root", p.String()).Output()
			if err != nil {
				t.Fatalf("ip route: %v (the e2e tests need iproute2)", err)
			}
			if strings.TrimSpace(string(out)) == "" {
				return p
			}
		}
		t.Fatal("no free 10.x.0.0/16 range")
		return netip.Prefix{}
	}
	return pick(200), pick(140)
}

func buildInCluster(t *testing.T, dir string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, "incluster")
	cmd := exec.Command(goTool, "build", "-o", out, "./testdata/incluster")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the in-cluster program: %v\n%s", err, b)
	}
	return out
}

func podOn(node, name string, restart corev1.RestartPolicy, command ...string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{NodeName: node, RestartPolicy: restart, TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{Name: "c", Image: "process", Command: command}}},
	}
}

// runToCompletion creates p and waits until it Succeeded or Failed.
func runToCompletion(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns string, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(readyTimeout)
	for {
		pod, err := cs.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
		if err == nil && (pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed) {
			return pod
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s did not finish: %v %+v", p.Name, err, pod)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func lastOf(s []string) string { return s[len(s)-1] }

package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tether-dev/tether/internal/pki"
)

// isoCluster is one `tether up --nodes 2 --isolate-nodes` child process:
// the hub in a control-plane network namespace, each node agent in a node
// network namespace, a router that lets only nodes open connections.
type isoCluster struct {
	mode, cidr string
	dir        string
	port       int
	kubeconfig string
	hubNS      string
	netns      []string
	prefix     string
	routeAdded bool // the root-namespace unreachable route was not there before
	isolated   bool
	stopped    bool
	readyAfter time.Duration // from start to up.ready

	cmd    *exec.Cmd
	exited chan struct{}
	cs     *kubernetes.Clientset
}

// isoNodeIP is the address `tether up` gives node i (1-based) in cidr.
func isoNodeIP(cidr string, i int) string {
	ip := net.ParseIP(strings.Split(cidr, "/")[0]).To4()
	return fmt.Sprintf("%d.%d.%d.2", ip[0], ip[1], i)
}

// routeExists reports whether the root namespace has a route for exactly cidr.
func routeExists(t testing.TB, cidr string) bool {
	out, err := exec.Command("ip", "route", "show", "table", "all", "exact", cidr).Output()
	if err != nil {
		t.Fatalf("ip route show: %v", err)
	}
	return len(bytes.TrimSpace(out)) > 0
}

// startIsolated runs the cluster until t (a subtest) ends; the stop is
// checked: SIGTERM, a clean exit, and the data dir removed.
func startIsolated(t testing.TB, mode, cidr string, extra ...string) *isoCluster {
	t.Helper()
	return startUpCluster(t, true, 2, mode, cidr, extra...)
}

// startUpCluster runs `tether up --nodes n --egress=mode`, isolated (in
// cidr) or on loopback, until t ends.
func startUpCluster(t testing.TB, isolate bool, n int, mode, cidr string, extra ...string) *isoCluster {
	t.Helper()
	if isolate && os.Geteuid() != 0 {
		t.Fatal("the isolated-topology e2e tests need root (network namespaces, veths, nftables); CI runs them as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("the isolated-topology e2e tests need ip(8): apt-get install iproute2")
	}
	c := &isoCluster{mode: mode, cidr: cidr, isolated: isolate}
	var err error
	if c.dir, err = os.MkdirTemp("", "tether-e2e-iso-"); err != nil {
		t.Fatal(err)
	}
	c.kubeconfig = filepath.Join(c.dir, "admin.kubeconfig")
	if c.port, err = freePort(); err != nil {
		t.Fatal(err)
	}
	c.routeAdded = isolate && !routeExists(t, cidr)
	logf, err := os.Create(filepath.Join(c.dir, "up.out"))
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"up", "--nodes", strconv.Itoa(n), "--egress=" + mode, "--data-dir", c.dir, "--secure-port", strconv.Itoa(c.port)}
	if isolate {
		args = append(args, "--isolate-nodes", "--isolate-cidr", cidr)
	}
	args = append(args, extra...)
	c.cmd = exec.Command(tetherBin, args...)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	c.cmd.Env = append(os.Environ(), "HOME="+c.dir)
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.exited = make(chan struct{})
	go func() { _ = c.cmd.Wait(); logf.Close(); close(c.exited) }()
	t.Cleanup(func() { c.stop(t) })
	deadline := time.Now().Add(readyTimeout)
	for {
		if _, err := os.Stat(filepath.Join(c.dir, "up.ready")); err == nil {
			break
		}
		select {
		case <-c.exited:
			t.Fatalf("tether up %s exited before it was ready:\n%s", strings.Join(args, " "), c.output())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("tether up not ready within %s:\n%s", readyTimeout, c.output())
		}
	}
	c.readyAfter = time.Since(start)
	cfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Timeout = 30 * time.Second
	if c.cs, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if !isolate {
		return c
	}
	b, err := os.ReadFile(filepath.Join(c.dir, "isolation.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Prefix string   `json:"prefix"`
		NetNS  []string `json:"netns"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	c.prefix, c.netns = st.Prefix, st.NetNS
	c.hubNS = "tether-" + c.prefix + "-hub"
	t.Logf("tether up --egress=%s:\n%s", mode, c.output())
	return c
}

func (c *isoCluster) output() string {
	b, _ := os.ReadFile(filepath.Join(c.dir, "up.out"))
	return string(b)
}

// stop ends tether up with SIGTERM (as Ctrl-C would) and checks it leaves
// nothing behind: no process, namespace, veth, route or data dir.
func (c *isoCluster) stop(t testing.TB) {
	if c.stopped {
		return
	}
	c.stopped = true
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(60 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
		t.Errorf("tether up did not stop within 60s of SIGTERM:\n%s", c.output())
	}
	out := c.output()
	if c.cmd.ProcessState != nil && !c.cmd.ProcessState.Success() {
		t.Errorf("tether up exited with %v:\n%s", c.cmd.ProcessState, out)
	}
	if c.isolated && !strings.Contains(out, "network namespaces, veths, rules and routes removed") {
		t.Errorf("tether up did not report its cleanup:\n%s", out)
	}
	if err := os.RemoveAll(c.dir); err != nil {
		t.Error(err)
	}
	c.assertNoLeftovers(t)
}

// assertNoLeftovers: nothing of this cluster is left on the machine.
func (c *isoCluster) assertNoLeftovers(t testing.TB) {
	t.Helper()
	if c.isolated && c.prefix == "" {
		t.Error("no isolation prefix recorded")
		return
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Errorf("ip netns list: %v %s", err, out)
	}
	if c.isolated && strings.Contains(string(out), "tether-"+c.prefix+"-") {
		t.Errorf("network namespaces left behind:\n%s", out)
	}
	links, err := exec.Command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Errorf("ip link: %v", err)
	}
	if c.isolated && regexp.MustCompile(`(?m)^\d+: `+regexp.QuoteMeta(c.prefix)+`[hn]`).Match(links) {
		t.Errorf("veths left behind in the root namespace:\n%s", links)
	}
	if c.isolated && c.routeAdded && routeExists(t, c.cidr) {
		t.Errorf("the unreachable route for %s was left behind", c.cidr)
	}
	// Processes: the hub and agents carry the data dir on their command
	// line, pods in their environment (ISO_RUN).
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		for _, f := range []string{"cmdline", "environ"} {
			b, _ := os.ReadFile("/proc/" + p.Name() + "/" + f)
			if bytes.Contains(b, []byte(c.dir)) {
				t.Errorf("process %s (%s) of the stopped cluster still runs", p.Name(), bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
				break
			}
		}
	}
	if _, err := os.Stat(c.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data dir %s left behind: %v", c.dir, err)
	}
}

// hubCannotDial: from the control-plane network, a direct connection to
// the node's kubelet fails (curl: couldn't connect or timed out).
func (c *isoCluster) hubCannotDial(t *testing.T, nodeIP string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", c.hubNS, "curl", "-sSk", "--max-time", "2",
		"https://"+net.JoinHostPort(nodeIP, "10250")+"/healthz").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || (ee.ExitCode() != 7 && ee.ExitCode() != 28) {
		t.Fatalf("direct hub → kubelet %s: %v %s, want curl's couldn't-connect (7) or timeout (28)", nodeIP, err, out)
	}
	t.Logf("direct hub → kubelet %s from %s: %s", nodeIP, c.hubNS, bytes.TrimSpace(out))
}

// TestIsolated is the seed end to end on the isolated topology: every
// communication path with real processes and real kubectl, with
// Konnectivity egress, then SSH egress, then direct egress failing because
// the hub has no route to nodes. Each cluster's stop asserts that nothing
// is left behind.
func TestIsolated(t *testing.T) {
	paths := installedKubectls(t)
	newest := paths[len(paths)-1]
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("the isolated-topology e2e tests need curl (pods use it as an in-cluster client): apt-get install curl")
	}

	t.Run("konnectivity", func(t *testing.T) {
		// Node certificates live 40s: the agents rotate them (client and
		// serving) while the paths below run, and the last subtest checks
		// the paths still work once the first certificates have expired.
		c := startIsolated(t, "konnectivity", "100.81.0.0/16", "--cluster-signing-duration=40s")
		wantContains(t, "tether up output", c.output(), "node-1 reachable through konnectivity", "isolation verified", "network is unreachable")
		first := isoNodeCerts(t, c, "node-1")
		n1 := isoNodeIP(c.cidr, 1)
		c.hubCannotDial(t, n1)
		// Pod CIDRs come from the topology's upper half; the hub has no
		// route there either.
		node, err := c.cs.CoreV1().Nodes().Get(testContext(t, time.Minute), "node-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		podCIDR, err := netip.ParsePrefix(node.Spec.PodCIDR)
		if err != nil || !netip.MustParsePrefix("100.81.128.0/17").Contains(podCIDR.Addr()) {
			t.Fatalf("node-1 podCIDR %q (%v), want inside 100.81.128.0/17", node.Spec.PodCIDR, err)
		}
		c.hubCannotDial(t, podCIDR.Addr().Next().String())
		e := isoWorkload(t, c, newest)
		t.Run("node-to-hub", func(t *testing.T) { isoNodeToHub(t, c, newest) })
		t.Run("pod-to-hub", func(t *testing.T) { isoPodToHub(t, c, e, newest) })
		for _, p := range []string{paths[0], newest} {
			k := newKubectl(t, p, e.c.Hub)
			t.Run("hub-to-node-"+k.version, func(t *testing.T) { nodePathsMatrix(t, k, e) })
		}
		t.Run("cert-rotation", func(t *testing.T) { isoRotation(t, c, e, newest, first) })
	})

	t.Run("ssh", func(t *testing.T) {
		c := startIsolated(t, "ssh", "100.82.0.0/16")
		wantContains(t, "tether up output", c.output(), "node-2 reachable through ssh", "isolation verified", "dropped")
		c.hubCannotDial(t, isoNodeIP(c.cidr, 1))
		e := isoWorkload(t, c, newest)
		k := newKubectl(t, newest, e.c.Hub)
		t.Run("hub-to-node-"+k.version, func(t *testing.T) { isoSSHPaths(t, k, e) })
	})

	t.Run("direct", func(t *testing.T) {
		c := startIsolated(t, "direct", "100.83.0.0/16")
		wantContains(t, "tether up output", c.output(), "isolation verified", "--egress=direct: the hub has no route to the node networks")
		k := newKubectl(t, newest, &hub{Kubeconfig: c.kubeconfig})
		// Node → hub works: both nodes joined and run a pod.
		k.ok(t, "run", "sleeper", "--image=none", "--overrides", `{"spec":{"nodeName":"node-1"}}`, "--env=ISO_RUN="+c.dir, "--command", "--", "sleep", "3600")
		k.ok(t, "wait", "--for=condition=Ready", "pod/sleeper", "--timeout=60s")
		// Hub → node does not: every path names the egress and the reason.
		for _, args := range [][]string{
			{"logs", "sleeper"},
			{"exec", "sleeper", "--", "true"},
			{"get", "--raw", "/api/v1/nodes/node-1/proxy/healthz"},
		} {
			out := k.fails(t, args...)
			wantContains(t, "kubectl "+strings.Join(args, " "), out, `egress "cluster" via direct`, isoNodeIP(c.cidr, 1), "network is unreachable")
		}
	})
}

// isoWorkload creates the node-path workload on the isolated cluster:
// "feed" on node-1 prints what the test appends to a file, "web" on node-2
// is the pod server (HTTP and HTTPS), Service "web" points at it.
func isoWorkload(t *testing.T, c *isoCluster, kubectlPath string) *nodePaths {
	t.Helper()
	ctx := testContext(t, 2*time.Minute)
	e := &nodePaths{
		c: &cluster{Hub: &hub{Dir: filepath.Join(c.dir, "hub"), Port: c.port, Kubeconfig: c.kubeconfig}, dir: c.dir,
			Agents: []*agent{{Name: "node-1", IP: isoNodeIP(c.cidr, 1)}, {Name: "node-2", IP: isoNodeIP(c.cidr, 2)}}},
		cs: c.cs, ns: "iso", feedFile: filepath.Join(c.dir, "feed.txt"), webIP: isoNodeIP(c.cidr, 2),
		// The pods have node-2's network namespace to themselves.
		httpPort: 8080, httpsPort: 8443,
	}
	if err := os.WriteFile(e.feedFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	listen := func(port int) string {
		return net.JoinHostPort(e.webIP, strconv.Itoa(port)) + "," + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
	mark := corev1.EnvVar{Name: "ISO_RUN", Value: c.dir}
	for _, p := range []*corev1.Pod{
		{
			ObjectMeta: metav1.ObjectMeta{Name: "feed"},
			Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{
				Name: "feed", Image: "none",
				Command: []string{"sh", "-c", `echo feed-ready; exec tail -n0 -F "$FEED"`},
				Env:     []corev1.EnvVar{{Name: "FEED", Value: e.feedFile}, mark},
			}}},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{NodeName: "node-2", Containers: []corev1.Container{{
				Name: "web", Image: "none", Command: []string{self},
				Env: []corev1.EnvVar{
					{Name: "TETHER_E2E_PODSERVER", Value: "1"}, {Name: "POD_NAME", Value: "web"},
					{Name: "PODSERVER_HTTP", Value: listen(e.httpPort)}, {Name: "PODSERVER_HTTPS", Value: listen(e.httpsPort)},
					{Name: "PODSERVER_REDIRECT", Value: "http://127.0.0.1:1/unused"}, mark,
				},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: int32(e.httpPort)}, {Name: "https", ContainerPort: int32(e.httpsPort)}},
			}}},
		},
	} {
		if _, err := c.cs.CoreV1().Pods(e.ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.cs.CoreV1().Services(e.ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(int32(e.httpPort))},
			{Name: "https", Port: 443, TargetPort: intstr.FromInt32(int32(e.httpsPort))},
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	node := "node-2"
	if _, err := c.cs.CoreV1().Endpoints(e.ns).Create(ctx, &corev1.Endpoints{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Subsets: []corev1.EndpointSubset{{
			Addresses: []corev1.EndpointAddress{{IP: e.webIP, NodeName: &node}},
			Ports:     []corev1.EndpointPort{{Name: "http", Port: int32(e.httpPort)}, {Name: "https", Port: int32(e.httpsPort)}},
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Ready when both pods run and the web server answers inside node-2's
	// network (kubectl exec: the only way in from outside).
	k := newKubectl(t, kubectlPath, e.c.Hub)
	deadline := time.Now().Add(readyTimeout)
	var last error
	for ; time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		last = nil
		for _, name := range []string{"feed", "web"} {
			p, err := c.cs.CoreV1().Pods(e.ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				last = err
			} else if p.Status.Phase != corev1.PodRunning {
				last = fmt.Errorf("pod %s: phase %q", name, p.Status.Phase)
			}
		}
		if last == nil {
			var out, errOut string
			out, errOut, last = k.run(t, "", "exec", "-n", e.ns, "web", "--", "curl", "-sS", "--max-time", "5", "http://127.0.0.1:"+strconv.Itoa(e.httpPort)+"/")
			if last == nil && !strings.Contains(out, "hello from web") {
				last = fmt.Errorf("web server: %q %s", out, errOut)
			}
		}
		if last == nil {
			return e
		}
	}
	t.Fatalf("isolated workload not ready within %s: %v", readyTimeout, last)
	return nil
}

// isoNodeToHub: TLS bootstrap produced CA-signed node client and serving
// certificates through approved CSRs; the node's client certificate
// authenticates it (and the Node authorizer confines it); Lease
// heartbeats advance.
func isoNodeToHub(t *testing.T, c *isoCluster, kubectlPath string) {
	ctx := testContext(t, 2*time.Minute)
	caPEM, err := os.ReadFile(filepath.Join(c.dir, "hub", "pki", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	leaf := func(path string) *x509.Certificate {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for {
			var blk *pem.Block
			if blk, b = pem.Decode(b); blk == nil {
				t.Fatalf("%s: no certificate", path)
			}
			if blk.Type == "CERTIFICATE" {
				cert, err := x509.ParseCertificate(blk.Bytes)
				if err != nil {
					t.Fatal(err)
				}
				return cert
			}
		}
	}

	t.Run("tls-bootstrap", func(t *testing.T) {
		csrs, err := c.cs.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		issued := map[string]bool{}
		for _, csr := range csrs.Items {
			approved := false
			for _, cond := range csr.Status.Conditions {
				approved = approved || cond.Type == certificatesv1.CertificateApproved
			}
			if approved && len(csr.Status.Certificate) > 0 {
				issued[csr.Spec.SignerName+" "+csr.Spec.Username] = true
			}
		}
		for _, n := range []string{"node-1", "node-2"} {
			found := false
			for k := range issued {
				found = found || (strings.HasPrefix(k, certificatesv1.KubeAPIServerClientKubeletSignerName+" system:bootstrap:"))
			}
			if !found {
				t.Errorf("no approved %s CSR from a bootstrap token: %v", certificatesv1.KubeAPIServerClientKubeletSignerName, issued)
			}
			if !issued[certificatesv1.KubeletServingSignerName+" system:node:"+n] {
				t.Errorf("%s: no approved kubelet-serving CSR: %v", n, issued)
			}
			client := leaf(filepath.Join(c.dir, "nodes", n, "pki", "kubelet-client-current.pem"))
			if _, err := client.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("%s client certificate: %v", n, err)
			}
			if client.Subject.CommonName != "system:node:"+n || strings.Join(client.Subject.Organization, ",") != "system:nodes" {
				t.Errorf("%s client certificate subject %s", n, client.Subject)
			}
			serving := leaf(filepath.Join(c.dir, "nodes", n, "pki", "kubelet-server-current.pem"))
			if _, err := serving.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				t.Errorf("%s serving certificate: %v", n, err)
			}
			ipOK := false
			for _, ip := range serving.IPAddresses {
				ipOK = ipOK || ip.String() == isoNodeIP(c.cidr, map[string]int{"node-1": 1, "node-2": 2}[n])
			}
			if !ipOK {
				t.Errorf("%s serving certificate SANs %v lack the node address", n, serving.IPAddresses)
			}
		}
	})

	t.Run("client-cert-auth", func(t *testing.T) {
		pair := filepath.Join(c.dir, "nodes", "node-1", "pki", "kubelet-client-current.pem")
		kc := filepath.Join(t.TempDir(), "node-1.kubeconfig")
		b, err := os.ReadFile(pair)
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteKubeconfig(kc, pki.Kubeconfig{Server: "https://127.0.0.1:" + strconv.Itoa(c.port), CAPEM: caPEM, UserName: "node-1", CertPEM: b, KeyPEM: b}); err != nil {
			t.Fatal(err)
		}
		k := newKubectl(t, kubectlPath, &hub{Kubeconfig: kc})
		wantEqual(t, "node-1 reads its Node", k.ok(t, "get", "node", "node-1", "-o", "jsonpath={.metadata.name}"), "node-1")
		out := k.fails(t, "get", "secrets", "-n", "kube-system")
		wantContains(t, "node-1 lists kube-system secrets", out, "Forbidden", "system:node:node-1")
	})

	t.Run("lease-heartbeat", func(t *testing.T) {
		get := func() time.Time {
			l, err := c.cs.CoordinationV1().Leases("kube-node-lease").Get(ctx, "node-1", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if l.Spec.RenewTime == nil || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != "node-1" {
				t.Fatalf("lease %+v", l.Spec)
			}
			return l.Spec.RenewTime.Time
		}
		first := get()
		deadline := time.Now().Add(45 * time.Second) // renew interval 10s
		for !get().After(first) {
			if time.Now().After(deadline) {
				t.Fatalf("node-1 lease not renewed since %s", first)
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
}

// isoPodToHub: a pod on node-1 (inside node-1's network namespace) calls
// the API with its service-account token and the mounted CA through the
// `kubernetes` Service VIP; a forged token is rejected.
func isoPodToHub(t *testing.T, c *isoCluster, e *nodePaths, kubectlPath string) {
	ctx := testContext(t, 2*time.Minute)
	// A token with a valid shape but a tampered payload (another
	// service account); the signature no longer matches.
	tr, err := c.cs.CoreV1().ServiceAccounts(e.ns).CreateToken(ctx, "default", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tr.Status.Token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	forgedPayload := strings.ReplaceAll(string(payload), "system:serviceaccount:"+e.ns+":default", "system:serviceaccount:kube-system:default")
	if forgedPayload == string(payload) {
		t.Fatalf("token payload lacks the subject: %s", payload)
	}
	forged := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(forgedPayload)) + "." + parts[2]
	rbac := c.cs.RbacV1()
	if _, err := rbac.Roles(e.ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.RoleBindings(e.ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pod-reader"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default", Namespace: e.ns}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	script := `d=/var/run/secrets/kubernetes.io/serviceaccount; u=https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/$(cat $d/namespace)/pods
echo "host=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
echo "own=$(curl -sS -o /dev/null -w '%{http_code}' --cacert $d/ca.crt -H "Authorization: Bearer $(cat $d/token)" $u)"
echo "forged=$(curl -sS -o /dev/null -w '%{http_code}' --cacert $d/ca.crt -H "Authorization: Bearer $FORGED" $u)"
curl -sS -o /dev/null --max-time 10 $u 2>/dev/null; echo "system-ca-exit=$?"`
	if _, err := c.cs.CoreV1().Pods(e.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "in-cluster"},
		Spec: corev1.PodSpec{NodeName: "node-1", RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{
			Name: "c", Image: "curl", Command: []string{"/bin/sh", "-c", script},
			Env: []corev1.EnvVar{{Name: "FORGED", Value: forged}, {Name: "ISO_RUN", Value: c.dir}},
		}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		p, err := c.cs.CoreV1().Pods(e.ns).Get(ctx, "in-cluster", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("in-cluster pod still %s", p.Status.Phase)
		}
		time.Sleep(200 * time.Millisecond)
	}
	svc, err := c.cs.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The output comes back through Konnectivity too.
	k := newKubectl(t, kubectlPath, e.c.Hub)
	out := k.ok(t, "logs", "-n", e.ns, "in-cluster")
	t.Logf("in-cluster pod:\n%s", out)
	wantContains(t, "in-cluster pod", out,
		"host="+svc.Spec.ClusterIP+":443", // the Service VIP, served by node-1's service proxy
		"own=200", "forged=401")
	// Without the mounted CA the hub's certificate is not trusted (curl:
	// 60 verification failed, or 77 no system bundle at all).
	if !regexp.MustCompile(`system-ca-exit=(60|77)\b`).MatchString(out) {
		t.Errorf("in-cluster call without the mounted CA: %s", out)
	}
}

// isoSSHPaths is the hub → node set through SSH tunnels to the nodes'
// restricted SSH endpoints. Those forward only to the kubelet port on node
// addresses and to pod CIDRs; these process pods use the node address, so
// the pod proxy is refused by the node, and the test says so.
func isoSSHPaths(t *testing.T, k *kubectl, e *nodePaths) {
	ns := e.ns
	t.Run("logs-f", func(t *testing.T) {
		s := startLines(t, k, "logs", "-f", "-n", ns, "feed")
		s.waitLine(t, regexp.MustCompile(`feed-ready`), 30*time.Second, nil)
		marker := "ssh-follow-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		if err := e.appendFeed(marker); err != nil {
			t.Fatal(err)
		}
		s.waitLine(t, regexp.MustCompile(regexp.QuoteMeta(marker)), 30*time.Second, nil)
	})
	t.Run("exec", func(t *testing.T) {
		_, _, err := k.run(t, "", "exec", "-n", ns, "feed", "--", "sh", "-c", "exit 3")
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("exec exit 3: %v", err)
		}
		if out := k.okIn(t, "through ssh\n", "exec", "-i", "-n", ns, "feed", "--", "cat"); out != "through ssh\n" {
			t.Errorf("exec -i cat = %q", out)
		}
	})
	t.Run("attach", func(t *testing.T) {
		s := startLines(t, k, "attach", "-n", ns, "feed")
		marker := "ssh-attach-"
		s.waitLine(t, regexp.MustCompile(regexp.QuoteMeta(marker)), 30*time.Second, func(i int) {
			_ = e.appendFeed(marker + strconv.Itoa(i))
		})
	})
	t.Run("cp", func(t *testing.T) {
		dir := t.TempDir()
		local := filepath.Join(dir, "in.txt")
		if err := os.WriteFile(local, []byte("copied through ssh\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		inPod := filepath.Join(dir, "in-pod.txt")
		k.ok(t, "cp", local, ns+"/feed:"+inPod)
		if got, err := os.ReadFile(inPod); err != nil || string(got) != "copied through ssh\n" {
			t.Fatalf("cp to pod: %q %v", got, err)
		}
	})
	t.Run("port-forward", func(t *testing.T) {
		s := startLines(t, k, "port-forward", "-n", ns, "pod/web", "--address", "127.0.0.1", ":"+strconv.Itoa(e.httpPort))
		m := s.waitLine(t, regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) ->`), 30*time.Second, nil)
		if out, err := httpGet(plainClient, "http://127.0.0.1:"+m[1]+"/pf"); err != nil || !strings.Contains(out, "hello from web over http path /pf") {
			t.Fatalf("GET through port-forward: %q, %v\n%s", out, err, s.output())
		}
	})
	t.Run("node-proxy", func(t *testing.T) {
		for _, a := range e.c.Agents {
			wantEqual(t, "nodes/"+a.Name+"/proxy/healthz", k.ok(t, "get", "--raw", "/api/v1/nodes/"+a.Name+"/proxy/healthz"), "ok")
			wantEqual(t, "nodes/https:"+a.Name+":10250/proxy/healthz", k.ok(t, "get", "--raw", "/api/v1/nodes/https:"+a.Name+":10250/proxy/healthz"), "ok")
		}
	})
	t.Run("pod-proxy-refused-by-node", func(t *testing.T) {
		out := k.fails(t, "get", "--raw", "/api/v1/namespaces/"+ns+"/pods/web:"+strconv.Itoa(e.httpPort)+"/proxy/")
		wantContains(t, "pod proxy to a node-address pod through the restricted SSH endpoint", out, "not allowed")
	})
}

// isoNodeCerts returns the node's current client and serving certificates.
func isoNodeCerts(t *testing.T, c *isoCluster, node string) [2]*x509.Certificate {
	t.Helper()
	var out [2]*x509.Certificate
	for i, f := range []string{"kubelet-client-current.pem", "kubelet-server-current.pem"} {
		b, err := os.ReadFile(filepath.Join(c.dir, "nodes", node, "pki", f))
		if err != nil {
			t.Fatal(err)
		}
		for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
			if blk.Type == "CERTIFICATE" {
				if out[i], err = x509.ParseCertificate(blk.Bytes); err != nil {
					t.Fatal(err)
				}
				break
			}
		}
		if out[i] == nil {
			t.Fatalf("%s: no certificate", f)
		}
	}
	return out
}

// isoRotation: both node certificates were replaced before they expired,
// and after the first ones expired the node is still Ready and the hub
// still reaches its kubelet (verifying the new serving certificate)
// through Konnectivity.
func isoRotation(t *testing.T, c *isoCluster, e *nodePaths, kubectlPath string, first [2]*x509.Certificate) {
	ctx := testContext(t, 2*time.Minute)
	expiry := first[0].NotAfter
	if first[1].NotAfter.After(expiry) {
		expiry = first[1].NotAfter
	}
	if d := first[0].NotAfter.Sub(first[0].NotBefore); d > time.Minute {
		t.Fatalf("client certificate lives %s; --cluster-signing-duration=40s not applied", d)
	}
	deadline := expiry.Add(30 * time.Second)
	for {
		now := isoNodeCerts(t, c, "node-1")
		rotated := now[0].SerialNumber.Cmp(first[0].SerialNumber) != 0 && now[1].SerialNumber.Cmp(first[1].SerialNumber) != 0
		if rotated && time.Now().After(expiry.Add(time.Second)) {
			t.Logf("client cert %s → %s, serving cert %s → %s; first ones expired at %s",
				first[0].SerialNumber, now[0].SerialNumber, first[1].SerialNumber, now[1].SerialNumber, expiry.Format(time.RFC3339))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node-1 certificates not rotated by %s (client %v, serving %v)", deadline.Format(time.RFC3339),
				now[0].SerialNumber.Cmp(first[0].SerialNumber) != 0, now[1].SerialNumber.Cmp(first[1].SerialNumber) != 0)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// A heartbeat after the old client certificate expired.
	since := time.Now()
	deadline = time.Now().Add(45 * time.Second)
	for {
		l, err := c.cs.CoordinationV1().Leases("kube-node-lease").Get(ctx, "node-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if l.Spec.RenewTime != nil && l.Spec.RenewTime.After(since.Add(-time.Second)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node-1 lease not renewed with the rotated client certificate")
		}
		time.Sleep(500 * time.Millisecond)
	}
	k := newKubectl(t, kubectlPath, e.c.Hub)
	wantContains(t, "logs after rotation", k.ok(t, "logs", "-n", e.ns, "feed", "--tail=50"), "feed-ready")
	wantEqual(t, "exec after rotation", k.ok(t, "exec", "-n", e.ns, "feed", "--", "echo", "rotated"), "rotated")
	wantEqual(t, "node proxy after rotation", k.ok(t, "get", "--raw", "/api/v1/nodes/node-1/proxy/healthz"), "ok")
}

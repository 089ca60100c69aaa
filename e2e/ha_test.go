package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tether-dev/tether/internal/bootstraptoken"
	"github.com/tether-dev/tether/internal/pki"
	"github.com/tether-dev/tether/internal/storage"
	"github.com/tether-dev/tether/internal/tcplb"
)

// haCluster is a replicated control plane for the fault-injection tests:
// three etcd members as `tether etcd` child processes (mutual TLS, each on
// its own loopback address; killed with SIGKILL), three `tether server`
// child processes sharing one PKI (killed with SIGKILL), a tcplb load
// balancer in this process, and `tether agent` children that know every
// hub replica.
type haCluster struct {
	dir        string
	prefix     string
	port       int
	etcd       *storage.Cluster
	members    []*storage.Process
	hubs       []*haHub
	lb         *tcplb.LB
	lbURL      string
	kubeconfig string // admin, through the load balancer
	token      string
	shared     *pki.Cluster
	chain      string
	agents     []*agent
	serverArgs []string // extra `tether server` flags for every replica
}

type haHub struct {
	ip, dir string
	cmd     *exec.Cmd
	exited  chan struct{}
	logf    *os.File
}

func (h *haHub) url(port int) string { return "https://" + net.JoinHostPort(h.ip, strconv.Itoa(port)) }

// haPrefix is a 127.A.B /24 unique to this test process.
func haPrefix() string {
	pid := os.Getpid()
	return fmt.Sprintf("127.%d.%d", 192+(pid>>8)%32, pid%256)
}

func startHACluster(t testing.TB, nodes int, serverArgs ...string) *haCluster {
	t.Helper()
	c := &haCluster{dir: t.TempDir(), prefix: haPrefix(), port: 6443, serverArgs: serverArgs}
	t.Cleanup(c.stop)
	var err error
	var ips []net.IP
	for i := range 3 {
		ips = append(ips, net.ParseIP(fmt.Sprintf("%s.%d", c.prefix, 101+i)).To4())
	}
	if c.etcd, err = storage.NewCluster(storage.ClusterConfig{Dir: filepath.Join(c.dir, "etcd"), IPs: ips}); err != nil {
		t.Fatal(err)
	}
	c.members = make([]*storage.Process, 3)
	for i := range 3 {
		c.startMember(t, i)
	}
	for i := range 3 {
		c.waitMemberReady(t, i)
	}
	sans := []string{c.prefix + ".200"}
	for i := range 3 {
		sans = append(sans, fmt.Sprintf("%s.%d", c.prefix, i+1))
	}
	if c.shared, err = pki.EnsureCluster(pki.Options{Dir: filepath.Join(c.dir, "pki"), ServingHosts: sans}); err != nil {
		t.Fatal(err)
	}
	leaf, err := os.ReadFile(c.shared.ServingCertFile)
	if err != nil {
		t.Fatal(err)
	}
	c.chain = filepath.Join(c.dir, "pki", "apiserver-chain.crt")
	if err := os.WriteFile(c.chain, append(append(leaf, '\n'), c.shared.CA.CertPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	if c.token, err = bootstraptoken.Generate(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		c.hubs = append(c.hubs, &haHub{ip: fmt.Sprintf("%s.%d", c.prefix, i+1), dir: filepath.Join(c.dir, fmt.Sprintf("hub-%d", i+1))})
	}
	for i := range c.hubs {
		c.startHub(t, i)
	}
	for i := range c.hubs {
		c.waitHub(t, i)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(c.prefix+".200", strconv.Itoa(c.port)))
	if err != nil {
		t.Fatal(err)
	}
	var backends []string
	for _, h := range c.hubs {
		backends = append(backends, net.JoinHostPort(h.ip, strconv.Itoa(c.port)))
	}
	lb, err := tcplb.New(tcplb.Config{Listener: ln, Backends: backends})
	if err != nil {
		t.Fatal(err)
	}
	c.lb = lb
	ctx, cancel := context.WithCancel(context.Background())
	lbDone := make(chan error, 1)
	go func() { lbDone <- lb.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-lbDone })
	c.lbURL = "https://" + ln.Addr().String()
	c.kubeconfig = filepath.Join(c.dir, "admin.kubeconfig")
	if err := pki.WriteKubeconfig(c.kubeconfig, pki.Kubeconfig{Server: c.lbURL, CAPEM: c.shared.CA.CertPEM, UserName: "tether-admin",
		CertPEM: c.shared.AdminCertPEM, KeyPEM: c.shared.AdminKeyPEM}); err != nil {
		t.Fatal(err)
	}
	var servers []string
	for _, h := range c.hubs {
		servers = append(servers, h.url(c.port))
	}
	cs := c.client(t)
	for i := 1; i <= nodes; i++ {
		a := &agent{Name: "ha" + strconv.Itoa(i), Dir: filepath.Join(c.dir, "ha"+strconv.Itoa(i)), IP: fmt.Sprintf("%s.%d", c.prefix, 50+i)}
		if a.KubeletPort, err = freePortOn(a.IP); err != nil {
			t.Fatal(err)
		}
		if err := c.startAgent(a, strings.Join(servers, ",")); err != nil {
			t.Fatal(err)
		}
		c.agents = append(c.agents, a)
	}
	for _, a := range c.agents {
		if err := a.waitReady(cs); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func (c *haCluster) startAgent(a *agent, servers string) error {
	if err := os.MkdirAll(a.Dir, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(a.Dir, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	netFlags := a.NetFlags
	if netFlags == nil {
		// Host-network pods and the userspace proxy, as in the other node
		// tests: root-namespace agents would otherwise build netns pod
		// networks from the default cluster CIDR, which concurrent runs share.
		netFlags = []string{"--pod-network=host", "--service-proxy=userspace"}
	}
	args := append([]string{"agent", "--server", servers, "--token", c.token, "--ca-cert", c.shared.CACertFile,
		"--node-name", a.Name, "--data-dir", a.Dir, "--node-ip", a.IP, "--kubelet-address", a.IP,
		"--kubelet-port", strconv.Itoa(a.KubeletPort), "--stop-pods-on-exit"}, netFlags...)
	cmd := exec.Command(tetherBin, args...)
	if len(a.Wrap) > 0 { // e.g. ip netns exec NS (it execs, so the pid stays the agent's)
		cmd = exec.Command(a.Wrap[0], append(append(slices.Clone(a.Wrap[1:]), tetherBin), args...)...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "HOME="+a.Dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start agent %s: %w", a.Name, err)
	}
	a.cmd, a.logf, a.exited = cmd, logf, make(chan struct{})
	go func() {
		a.err = cmd.Wait()
		close(a.exited)
	}()
	return nil
}

// startMember starts etcd member i as a `tether etcd` child process (from
// its data dir: a restarted member rejoins); its output is appended to
// etcd/etcd-<i+1>.out.
func (c *haCluster) startMember(t testing.TB, i int) {
	t.Helper()
	out, err := os.OpenFile(filepath.Join(c.dir, "etcd", fmt.Sprintf("etcd-%d.out", i+1)), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.etcd.StartProcess(tetherBin, i, out)
	if err != nil {
		out.Close()
		t.Fatal(err)
	}
	go func() { <-p.Exited(); out.Close() }()
	c.members[i] = p
}

// waitMemberReady waits until member i serves (it has joined a quorum).
func (c *haCluster) waitMemberReady(t testing.TB, i int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := c.members[i].WaitReady(ctx); err != nil {
		b, _ := os.ReadFile(filepath.Join(c.dir, "etcd", fmt.Sprintf("etcd-%d.out", i+1)))
		t.Fatalf("etcd member %d: %v\n%s", i+1, err, b)
	}
}

// killMember SIGKILLs etcd member i: a crash, no graceful leader hand-over.
func (c *haCluster) killMember(i int) {
	if m := c.members[i]; m != nil {
		m.Kill()
		c.members[i] = nil
	}
}

// stopMember stops etcd member i with SIGTERM (killed after 20s).
func (c *haCluster) stopMember(i int) {
	if m := c.members[i]; m != nil {
		_ = m.Stop(20 * time.Second)
		c.members[i] = nil
	}
}

func (c *haCluster) startHub(t testing.TB, i int) {
	t.Helper()
	h := c.hubs[i]
	if err := os.MkdirAll(h.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	logf, err := os.OpenFile(filepath.Join(h.dir, "server.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"server", "--data-dir", h.dir, "--bind-address", h.ip, "--advertise-address", h.ip,
		"--secure-port", strconv.Itoa(c.port), "--etcd-servers", strings.Join(c.etcd.ClientURLs(), ","),
		"--etcd-cafile", c.etcd.CAFile, "--etcd-certfile", c.etcd.CertFile, "--etcd-keyfile", c.etcd.KeyFile,
		"--ca-cert-file", c.shared.CACertFile, "--ca-key-file", filepath.Join(c.dir, "pki", "ca.key"),
		"--tls-cert-file", c.chain, "--tls-private-key-file", c.shared.ServingKeyFile,
		"--service-account-key-file", c.shared.ServiceAccountKeyFile, "--service-cluster-ip-range", testServiceCIDR}
	if i == 0 {
		args = append(args, "--bootstrap-token", c.token)
	}
	args = append(args, c.serverArgs...)
	cmd := exec.Command(tetherBin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "HOME="+h.dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	h.cmd, h.logf, h.exited = cmd, logf, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(h.exited)
	}()
}

// waitHub polls hub i's /readyz with the admin certificate.
func (c *haCluster) waitHub(t testing.TB, i int) {
	t.Helper()
	h := c.hubs[i]
	cfg := c.config(h.url(c.port))
	cfg.Timeout = 5 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-h.exited:
			t.Fatalf("hub %d exited before it was ready\n%s", i+1, h.tail())
		case <-time.After(100 * time.Millisecond):
		}
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background())
		if err == nil && string(body) == "ok" {
			// Ready also means the controllers' identities work: the
			// RBAC policy is in place.
			if _, err = cs.CoreV1().Namespaces().Get(context.Background(), "kube-system", metav1.GetOptions{}); err == nil {
				return
			}
		}
		last = err
	}
	t.Fatalf("hub %d not ready within %s: %v\n%s", i+1, readyTimeout, last, h.tail())
}

func (h *haHub) tail() string {
	b, _ := os.ReadFile(filepath.Join(h.dir, "server.log"))
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}

// killHub SIGKILLs hub i (no graceful shutdown: its Leases stay behind).
func (c *haCluster) killHub(i int) {
	h := c.hubs[i]
	if h.cmd == nil {
		return
	}
	_ = h.cmd.Process.Kill()
	<-h.exited
	h.logf.Close()
	h.cmd = nil
}

func (c *haCluster) stop() {
	stopAgents(c.agents)
	for i := range c.hubs {
		if h := c.hubs[i]; h.cmd != nil {
			_ = h.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-h.exited:
			case <-time.After(20 * time.Second):
				_ = h.cmd.Process.Kill()
				<-h.exited
			}
			h.logf.Close()
			h.cmd = nil
		}
	}
	for i := range c.members {
		c.stopMember(i)
	}
}

func (c *haCluster) config(server string) *rest.Config {
	return &rest.Config{Host: server, TLSClientConfig: rest.TLSClientConfig{CAData: c.shared.CA.CertPEM,
		CertData: c.shared.AdminCertPEM, KeyData: c.shared.AdminKeyPEM}, Timeout: 10 * time.Second}
}

// client talks to the load balancer.
func (c *haCluster) client(t testing.TB) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(c.config(c.lbURL))
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// leader returns the index of the hub holding the controllers' Lease.
func (c *haCluster) leader(t testing.TB, cs kubernetes.Interface) int {
	t.Helper()
	var holder string
	eventually(t, 30*time.Second, "a controller leader", func() error {
		l, err := cs.CoordinationV1().Leases("kube-system").Get(context.Background(), "tether-controller-manager", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
			return errors.New("no holder")
		}
		holder = *l.Spec.HolderIdentity
		return nil
	})
	for i, h := range c.hubs {
		if strings.HasSuffix(holder, "_"+net.JoinHostPort(h.ip, strconv.Itoa(c.port))) {
			return i
		}
	}
	t.Fatalf("lease holder %q is none of the hubs", holder)
	return -1
}

// endpoints returns the addresses of the `kubernetes` Endpoints.
func endpointIPs(cs kubernetes.Interface) ([]string, error) {
	ep, err := cs.CoreV1().Endpoints("default").Get(context.Background(), "kubernetes", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var ips []string
	for _, s := range ep.Subsets {
		for _, a := range s.Addresses {
			ips = append(ips, a.IP)
		}
	}
	slices.Sort(ips)
	return ips, nil
}

// eventually polls f until it succeeds or d passes.
func eventually(t testing.TB, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(200 * time.Millisecond) // poll interval
	}
}

func (c *haCluster) wantEndpoints(t testing.TB, cs kubernetes.Interface, d time.Duration, hubs ...int) {
	t.Helper()
	var want []string
	for _, i := range hubs {
		want = append(want, c.hubs[i].ip)
	}
	slices.Sort(want)
	eventually(t, d, fmt.Sprintf("kubernetes Endpoints = %v", want), func() error {
		got, err := endpointIPs(cs)
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("endpoints %v", got)
		}
		return nil
	})
}

// signedCSR creates and approves a kube-apiserver-client CSR and waits until
// the signer has issued it.
func signedCSR(t testing.TB, cs kubernetes.Interface, name string, within time.Duration) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	csr := &certificatesv1.CertificateSigningRequest{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: certificatesv1.CertificateSigningRequestSpec{Request: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
			SignerName: certificatesv1.KubeAPIServerClientSignerName, Usages: []certificatesv1.KeyUsage{certificatesv1.UsageClientAuth}}}
	eventually(t, 10*time.Second, "create CSR", func() error {
		_, err := cs.CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{})
		if err != nil && !strings.Contains(err.Error(), "already exists") {
			return err
		}
		return nil
	})
	eventually(t, 10*time.Second, "approve CSR", func() error {
		cur, err := cs.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Status.Conditions = append(cur.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
			Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: "E2E", Message: "approved by the HA test"})
		_, err = cs.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, name, cur, metav1.UpdateOptions{})
		return err
	})
	eventually(t, within, "CSR "+name+" signed", func() error {
		cur, err := cs.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(cur.Status.Certificate) == 0 {
			return errors.New("no certificate yet")
		}
		return nil
	})
}

// TestHAFaultInjection: three etcd members, three hub replicas, three
// nodes; each fault is injected and healed here.
func TestHAFaultInjection(t *testing.T) {
	kubectls := installedKubectls(t)
	kubectlBin := kubectls[len(kubectls)-1]
	c := startHACluster(t, 3)
	cs := c.client(t)
	ctx := context.Background()
	c.wantEndpoints(t, cs, 30*time.Second, 0, 1, 2)

	// Every replica accepts a service-account token another one issued.
	t.Run("service-account token verifies on every replica", func(t *testing.T) {
		var tok string
		eventually(t, 30*time.Second, "default service account", func() error {
			tr, err := kubernetes.NewForConfigOrDie(c.config(c.hubs[0].url(c.port))).CoreV1().ServiceAccounts("default").CreateToken(ctx, "default",
				&authenticationv1.TokenRequest{}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			tok = tr.Status.Token
			return nil
		})
		for i, h := range c.hubs {
			cfg := &rest.Config{Host: h.url(c.port), BearerToken: tok, TLSClientConfig: rest.TLSClientConfig{CAData: c.shared.CA.CertPEM}, Timeout: 10 * time.Second}
			ssr, err := kubernetes.NewForConfigOrDie(cfg).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("hub %d rejected a token issued by hub 1: %v", i+1, err)
			}
			if got := ssr.Status.UserInfo.Username; got != "system:serviceaccount:default:default" {
				t.Fatalf("hub %d: token authenticated as %q", i+1, got)
			}
		}
	})

	t.Run("etcd leader SIGKILLed: writes continue, none lost", func(t *testing.T) {
		c.etcdLeaderCrashTest(t, cs)
	})

	t.Run("hub carrying kubectl logs -f SIGKILLed: re-run resumes", func(t *testing.T) {
		c.logsFollowFailoverTest(t, cs, kubectlBin)
	})

	t.Run("hub replica down: kubectl through the LB, nodes stay Ready", func(t *testing.T) {
		// Hub 1 is the nodes' first address: they must fail over.
		killed := time.Now()
		c.killHub(0)
		for i := range 6 {
			out, err := exec.Command(kubectlBin, "--kubeconfig", c.kubeconfig, "get", "nodes", "-o", "name").CombinedOutput()
			if err != nil {
				t.Fatalf("kubectl get nodes #%d through the LB with hub 1 dead: %v\n%s", i, err, out)
			}
			if !strings.Contains(string(out), "node/ha1") || !strings.Contains(string(out), "node/ha2") || !strings.Contains(string(out), "node/ha3") {
				t.Fatalf("kubectl get nodes: %s", out)
			}
		}
		// The nodes renew their Leases through the surviving replicas.
		for _, a := range c.agents {
			eventually(t, 30*time.Second, a.Name+" lease renewed after the kill", func() error {
				l, err := cs.CoordinationV1().Leases("kube-node-lease").Get(ctx, a.Name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				if l.Spec.RenewTime == nil || l.Spec.RenewTime.Time.Before(killed) {
					return errors.New("not renewed since the kill")
				}
				return nil
			})
			n, err := cs.CoreV1().Nodes().Get(ctx, a.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status != corev1.ConditionTrue {
					t.Fatalf("%s is %s after hub 1 died", a.Name, cond.Status)
				}
			}
		}
		// The dead replica's Lease expires and it leaves the Endpoints.
		c.wantEndpoints(t, cs, 40*time.Second, 1, 2)
		t.Logf("hub 1 dropped from the kubernetes Endpoints %s after SIGKILL", time.Since(killed).Round(time.Millisecond))
		c.startHub(t, 0)
		c.waitHub(t, 0)
		c.wantEndpoints(t, cs, 30*time.Second, 0, 1, 2)
	})

	t.Run("controller leader down: CSRs signed within 15s", func(t *testing.T) {
		t.Cleanup(func() {
			if t.Failed() {
				for i, h := range c.hubs {
					t.Logf("hub %d log tail:\n%s", i+1, h.tail())
				}
			}
		})
		signedCSR(t, cs, "ha-before", 30*time.Second)
		l := c.leader(t, cs)
		killed := time.Now()
		c.killHub(l)
		signedCSR(t, cs, "ha-after", 15*time.Second)
		took := time.Since(killed)
		t.Logf("leader hub %d SIGKILLed: next CSR signed %s later", l+1, took.Round(time.Millisecond))
		if took > 15*time.Second {
			t.Errorf("CSR signed %s after the leader died, want ≤ 15s", took)
		}
		if nl := c.leader(t, cs); nl == l {
			t.Errorf("lease still names the dead hub %d", l+1)
		}
		c.startHub(t, l)
		c.waitHub(t, l)
	})
}

// etcdLeader returns the index of the member that leads the etcd cluster.
func (c *haCluster) etcdLeader(t testing.TB) int {
	t.Helper()
	cli := c.etcdClient(t, c.etcd.ClientURLs())
	defer cli.Close()
	for i, u := range c.etcd.ClientURLs() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := cli.Status(ctx, u)
		cancel()
		if err == nil && st.Leader == st.Header.MemberId {
			return i
		}
	}
	t.Fatal("no etcd leader")
	return -1
}

func (c *haCluster) etcdClient(t testing.TB, eps []string) *clientv3.Client {
	t.Helper()
	tc, err := (&transport.TLSInfo{CertFile: c.etcd.CertFile, KeyFile: c.etcd.KeyFile, TrustedCAFile: c.etcd.CAFile}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

// waitMember waits until member i serves and has caught up with the leader.
func (c *haCluster) waitMember(t testing.TB, i int) {
	t.Helper()
	u := c.etcd.ClientURLs()[i]
	cli := c.etcdClient(t, []string{u})
	defer cli.Close()
	eventually(t, 60*time.Second, "etcd member "+strconv.Itoa(i+1)+" back", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		st, err := cli.Status(ctx, u)
		if err != nil {
			return err
		}
		if st.Leader == 0 {
			return errors.New("no leader seen yet")
		}
		return nil
	})
}

// TestUpHA: `tether up --hubs 3 --etcd-members 3 --nodes 1` comes up with
// every replica in the `kubernetes` Endpoints, one controller leader and a
// Ready node, all through the load balancer's kubeconfig.
func TestUpHA(t *testing.T) {
	dir := t.TempDir()
	logf, err := os.Create(filepath.Join(dir, "up.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	// The data dir's address prefix is chosen by the child from its pid;
	// pin one unique to this test process instead.
	pid := os.Getpid()
	prefix := fmt.Sprintf("127.%d.%d", 224+(pid>>8)%16, pid%256)
	if err := os.WriteFile(filepath.Join(dir, "ha.prefix"), []byte(prefix+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tetherBin, "up", "--hubs", "3", "--etcd-members", "3", "--nodes", "1", "--egress", "konnectivity", "--data-dir", dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		pids := upEtcdPids(dir)
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Error("tether up did not stop within 60s of SIGINT")
		}
		// No orphans: every etcd member process is gone, stopped cleanly.
		for i, pid := range pids {
			if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("etcd member %d (pid %d) outlived tether up: %v", i+1, pid, err)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if left := upEtcdPids(dir); len(left) > 0 {
			t.Errorf("ready files of members that did not stop cleanly remain: pids %v", left)
		}
	})
	tail := func() string { b, _ := os.ReadFile(filepath.Join(dir, "up.log")); return string(b) }
	eventually(t, readyTimeout, "tether up ready", func() error {
		select {
		case <-exited:
			t.Fatalf("tether up exited:\n%s", tail())
		default:
		}
		_, err := os.Stat(filepath.Join(dir, "up.ready"))
		return err
	})
	rc, err := clientcmd.BuildConfigFromFlags("", filepath.Join(dir, "admin.kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "https://" + prefix + ".200:6443"; rc.Host != want {
		t.Fatalf("kubeconfig server %s, want the load balancer %s", rc.Host, want)
	}
	cs := kubernetes.NewForConfigOrDie(rc)
	eventually(t, 30*time.Second, "three replicas in the kubernetes Endpoints", func() error {
		ips, err := endpointIPs(cs)
		if err != nil {
			return err
		}
		if want := []string{prefix + ".1", prefix + ".2", prefix + ".3"}; !slices.Equal(ips, want) {
			return fmt.Errorf("endpoints %v, want %v", ips, want)
		}
		return nil
	})
	n, err := cs.CoreV1().Nodes().Get(context.Background(), "node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("node-1: %v\n%s", err, tail())
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
			t.Fatalf("node-1 is %s", c.Status)
		}
	}
	l, err := cs.CoordinationV1().Leases("kube-system").Get(context.Background(), "tether-controller-manager", metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		t.Fatalf("controller lease: %v", err)
	}
	upEtcdKill(t, dir, cs)
	// Konnectivity egress with three replicas: the node's agent connects to
	// every replica's server, so the node proxy works on each hub (asked
	// directly, not through the load balancer).
	for _, ip := range []string{prefix + ".1", prefix + ".2", prefix + ".3"} {
		rc2 := rest.CopyConfig(rc)
		rc2.Host = "https://" + ip + ":6443"
		cs2 := kubernetes.NewForConfigOrDie(rc2)
		eventually(t, 60*time.Second, "node proxy through the Konnectivity server of hub "+ip, func() error {
			body, err := cs2.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes/node-1/proxy/healthz").DoRaw(context.Background())
			if err != nil {
				return err
			}
			if string(body) != "ok" {
				return fmt.Errorf("healthz: %q", body)
			}
			return nil
		})
	}
}

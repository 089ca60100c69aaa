package nodeagent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tether-dev/tether/internal/bootstraptoken"
	"github.com/tether-dev/tether/internal/hub"
	"github.com/tether-dev/tether/internal/pki"
)

// testHub starts an in-process hub on loopback and returns an admin client,
// the hub's CA and data dir.
func testHub(t *testing.T, ctx context.Context) (*hub.Hub, kubernetes.Interface, *pki.CA, string) {
	return testHubWith(t, ctx, nil)
}

// testHubWith uses serviceRange for ClusterIPs when not nil.
func testHubWith(t *testing.T, ctx context.Context, serviceRange *net.IPNet) (*hub.Hub, kubernetes.Interface, *pki.CA, string) {
	t.Helper()
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h, err := hub.New(hub.Config{DataDir: dir, Listener: ln, BindAddress: net.IPv4(127, 0, 0, 1), AdvertiseAddress: net.IPv4(127, 0, 0, 1),
		ServiceClusterIPRange: serviceRange,
		Logger:                slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- h.Run(hctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("hub did not stop")
		}
	})
	select {
	case <-h.Ready():
	case err := <-done:
		t.Fatalf("hub stopped: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("hub not ready")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", h.AdminKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	admin := kubernetes.NewForConfigOrDie(cfg)
	certPEM, err := os.ReadFile(filepath.Join(dir, "pki", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "pki", "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return h, admin, ca, dir
}

// nodeAuthorized reports whether the hub authorizes node identities on
// their own (the Node authorizer of issue 4). Until it does, test node
// certificates also carry system:masters.
func nodeAuthorized(t *testing.T, ctx context.Context, admin kubernetes.Interface) bool {
	sar, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: "system:node:probe", Groups: []string{"system:nodes", "system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: "update", Resource: "leases", Group: "coordination.k8s.io", Namespace: "kube-node-lease", Name: "probe"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SAR: %v", err)
	}
	return sar.Status.Allowed
}

// testSigner approves and signs node CSRs with the hub CA until the hub's own
// signer exists (test code only). extraOrgs are added to client certs.
func testSigner(ctx context.Context, t *testing.T, admin kubernetes.Interface, ca *pki.CA, extraOrgs []string) {
	testSignerAfter(ctx, t, admin, ca, extraOrgs, 0)
}

// testSignerAfter signs only CSRs pending for longer than minAge, as a
// fallback behind the hub's own approver and signer.
func testSignerAfter(ctx context.Context, t *testing.T, admin kubernetes.Interface, ca *pki.CA, extraOrgs []string, minAge time.Duration) {
	var wg sync.WaitGroup
	wg.Add(1)
	sctx, cancel := context.WithCancel(ctx)
	t.Cleanup(func() { cancel(); wg.Wait() })
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
			}
			list, err := admin.CertificatesV1().CertificateSigningRequests().List(sctx, metav1.ListOptions{})
			if err != nil {
				continue
			}
			for i := range list.Items {
				csr := &list.Items[i]
				if len(csr.Status.Certificate) > 0 || time.Since(csr.CreationTimestamp.Time) < minAge {
					continue
				}
				if minAge > 0 {
					t.Logf("test signer: CSR %s (user %q) still pending after %s, signing it", csr.Name, csr.Spec.Username, minAge)
				}
				signCSR(sctx, admin, ca, csr, extraOrgs)
			}
		}
	}()
}

func signCSR(ctx context.Context, admin kubernetes.Interface, ca *pki.CA, csr *certificatesv1.CertificateSigningRequest, extraOrgs []string) {
	req, err := pki.ParseCSR(csr.Spec.Request)
	if err != nil {
		return
	}
	approved := false
	for _, c := range csr.Status.Conditions {
		approved = approved || c.Type == certificatesv1.CertificateApproved
	}
	if !approved {
		csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
			Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: "TestApprove", Message: "approved by the test signer",
		})
		var err error
		if csr, err = admin.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, csr.Name, csr, metav1.UpdateOptions{}); err != nil {
			return
		}
	}
	spec := pki.CertSpec{CommonName: req.Subject.CommonName, Organization: req.Subject.Organization, DNSNames: req.DNSNames, IPs: req.IPAddresses, Validity: time.Hour}
	if csr.Spec.ExpirationSeconds != nil {
		spec.Validity = time.Duration(*csr.Spec.ExpirationSeconds) * time.Second
	}
	switch csr.Spec.SignerName {
	case certificatesv1.KubeAPIServerClientKubeletSignerName:
		spec.Usages = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		spec.Organization = append(append([]string{}, spec.Organization...), extraOrgs...)
	case certificatesv1.KubeletServingSignerName:
		spec.Usages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	default:
		return
	}
	certPEM, err := ca.SignCSR(csr.Spec.Request, spec)
	if err != nil {
		return
	}
	csr.Status.Certificate = certPEM
	_, _ = admin.CertificatesV1().CertificateSigningRequests().UpdateStatus(ctx, csr, metav1.UpdateOptions{})
}

func nodeKubeconfig(t *testing.T, ca *pki.CA, server, node, path string, orgs ...string) {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(pki.CertSpec{CommonName: "system:node:" + node, Organization: append([]string{"system:nodes"}, orgs...),
		Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Validity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteKubeconfig(path, pki.Kubeconfig{Server: server, CAPEM: ca.CertPEM, UserName: node, CertPEM: certPEM, KeyPEM: keyPEM}); err != nil {
		t.Fatal(err)
	}
}

// eventually polls f every 50ms until it returns nil or d passes.
func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not done after %s: %v", what, d, err)
}

func tlsClient(t *testing.T, ca *pki.CA, certFile, keyFile string, certs ...tls.Certificate) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cfg := &tls.Config{RootCAs: pool, Certificates: certs, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 30 * time.Second}
}

func TestAgentEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// A loopback service range: its VIPs are local to this machine, so the
	// node's service proxy can serve them without touching host networking.
	_, svcRange, _ := net.ParseCIDR(fmt.Sprintf("127.%d.0.0/16", 100+rand.IntN(100)))
	h, admin, ca, hubDir := testHubWith(t, ctx, svcRange)
	vip := hub.ServiceIP(svcRange).String()
	var extra []string
	if !nodeAuthorized(t, ctx, admin) {
		t.Log("hub has no Node authorizer yet: test node certificates also carry system:masters")
		extra = []string{"system:masters"}
	}
	testSigner(ctx, t, admin, ca, extra)

	dir := t.TempDir()
	kc := filepath.Join(dir, "provisioned.kubeconfig")
	nodeKubeconfig(t, ca, h.Server(), "n1", kc, extra...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	agent, err := New(Config{
		Server: h.Server(), NodeName: "n1", DataDir: filepath.Join(dir, "agent"), Kubeconfig: kc,
		NodeIP: net.IPv4(127, 0, 0, 1), KubeletListener: ln, LeaseRenewInterval: time.Second,
		BackoffBase: 100 * time.Millisecond, StopPodsOnExit: true,
		// Host-network pods and the userspace proxy on loopback VIPs (a
		// pod in its own network namespace has its own 127/8).
		PodNetwork: PodNetworkHost, ServiceProxy: ServiceProxyUserspace,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	if err != nil {
		t.Fatal(err)
	}
	actx, stopAgent := context.WithCancel(ctx)
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Run(actx) }()
	defer func() {
		stopAgent()
		select {
		case err := <-agentDone:
			if err != nil {
				t.Errorf("agent: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("agent did not stop")
		}
	}()
	select {
	case <-agent.Ready():
	case err := <-agentDone:
		t.Fatalf("agent stopped: %v", err)
	case <-ctx.Done():
		t.Fatal("agent not ready")
	}

	// Node registered and Ready, lease renewed.
	eventually(t, 30*time.Second, "node Ready", func() error {
		n, err := admin.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				if n.Status.DaemonEndpoints.KubeletEndpoint.Port != int32(ln.Addr().(*net.TCPAddr).Port) {
					return fmt.Errorf("kubelet port %d", n.Status.DaemonEndpoints.KubeletEndpoint.Port)
				}
				if n.Status.NodeInfo.KubeletVersion == "" {
					return errors.New("no kubeletVersion")
				}
				return nil
			}
		}
		return errors.New("not Ready")
	})
	eventually(t, 30*time.Second, "lease", func() error {
		_, err := admin.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, "n1", metav1.GetOptions{})
		return err
	})
	if st, err := os.Stat(agent.NodeKubeconfig()); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("node kubeconfig: %v %v", st, err)
	}

	// A process pod runs.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p1", Namespace: "default"},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{
			Name: "c", Image: "busybox", Command: []string{"/bin/sh", "-c", `echo "hello from $POD_NAME"; echo oops >&2; exec sleep 300`},
			Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
		}}},
	}
	start := time.Now()
	if _, err := admin.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "pod Running", func() error {
		p, err := admin.CoreV1().Pods("default").Get(ctx, "p1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning || len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].State.Running == nil {
			return fmt.Errorf("phase %s %+v", p.Status.Phase, p.Status.ContainerStatuses)
		}
		return nil
	})
	t.Logf("pod create → Running: %s", time.Since(start))

	// Kubelet API with the hub's kubelet-client identity.
	base := "https://" + ln.Addr().String()
	hubClient := tlsClient(t, ca, filepath.Join(hubDir, "pki", "kubelet-client.crt"), filepath.Join(hubDir, "pki", "kubelet-client.key"))
	eventually(t, 60*time.Second, "logs via kubelet API", func() error {
		resp, err := hubClient.Get(base + "/containerLogs/default/p1/c?timestamps=false")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(body), "hello from p1") || !strings.Contains(string(body), "oops") {
			return fmt.Errorf("%d %q", resp.StatusCode, body)
		}
		return nil
	})
	for _, tc := range []struct {
		path string
		code int
	}{
		{"/healthz", 200},
		{"/pods", 200},
		{"/containerLogs/default/p1/c?tailLines=1", 200},
		{"/containerLogs/default/p1/c?tailLines=x", 400},
		{"/containerLogs/default/p1/c?limitBytes=-1", 400},
		{"/containerLogs/default/p1/nope", 404},
		{"/containerLogs/default/nope/c", 404},
		{"/metrics", 200},
		{"/nonsense", 404},
	} {
		resp, err := hubClient.Get(base + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("GET %s: %d, want %d: %s", tc.path, resp.StatusCode, tc.code, body)
		}
	}

	// No client certificate: 401; another node's certificate: 403.
	anon := tlsClient(t, ca, "", "")
	resp, err := anon.Get(base + "/containerLogs/default/p1/c")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("no cert: %d, want 401", resp.StatusCode)
	}
	otherPEM, otherKey, err := ca.Issue(pki.CertSpec{CommonName: "system:node:n2", Organization: []string{"system:nodes"}, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(otherPEM, otherKey)
	if err != nil {
		t.Fatal(err)
	}
	other := tlsClient(t, ca, "", "", pair)
	for _, p := range []string{"/containerLogs/default/p1/c", "/pods", "/metrics", "/healthz"} {
		resp, err = other.Get(base + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("other node %s: %d, want 403", p, resp.StatusCode)
		}
	}

	// Service-account credentials: mounted at the standard path when root,
	// and usable against the API (through KUBERNETES_SERVICE_HOST/PORT).
	if os.Geteuid() == 0 {
		if _, err := os.Stat("/usr/bin/curl"); err == nil {
			eventually(t, 30*time.Second, "kubernetes Service VIP served", func() error {
				c, err := net.DialTimeout("tcp", net.JoinHostPort(vip, "443"), time.Second)
				if err != nil {
					return err
				}
				return c.Close()
			})
			sa := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "sa", Namespace: "default"},
				Spec: corev1.PodSpec{NodeName: "n1", RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{
					Name: "c", Image: "curl", Command: []string{"/bin/sh", "-c", `d=/var/run/secrets/kubernetes.io/serviceaccount; echo "ns=$(cat $d/namespace) host=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"; ` +
						`curl -sS -o /dev/null -w "code=%{http_code}\n" --cacert $d/ca.crt -H "Authorization: Bearer $(cat $d/token)" https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/default/pods`},
				}}},
			}
			if _, err := admin.CoreV1().Pods("default").Create(ctx, sa, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			eventually(t, 60*time.Second, "service-account pod", func() error {
				p, err := admin.CoreV1().Pods("default").Get(ctx, "sa", metav1.GetOptions{})
				if err != nil {
					return err
				}
				if p.Status.Phase != corev1.PodSucceeded {
					return fmt.Errorf("phase %s %+v", p.Status.Phase, p.Status.ContainerStatuses)
				}
				return nil
			})
			resp, err := hubClient.Get(base + "/containerLogs/default/sa/c")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			// 403 is fine too: the token authenticated, RBAC decided.
			if !strings.Contains(string(body), "ns=default host="+vip+":443") || !(strings.Contains(string(body), "code=200") || strings.Contains(string(body), "code=403")) {
				t.Fatalf("service-account pod output: %q", body)
			}
			t.Logf("service-account pod: %q", body)
		}
	}

	// Graceful deletion ends with the agent's grace-0 delete.
	if err := admin.CoreV1().Pods("default").Delete(ctx, "p1", metav1.DeleteOptions{GracePeriodSeconds: ptrInt64(5)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "pod deleted", func() error {
		_, err := admin.CoreV1().Pods("default").Get(ctx, "p1", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there: %v", err)
	})
}

func ptrInt64(v int64) *int64 { return &v }

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startAgent runs an agent until the test ends.
func startAgent(t *testing.T, ctx context.Context, cfg Config) (*Agent, func()) {
	t.Helper()
	return startAgentOr(t, ctx, cfg, func() {})
}

// startAgentOr calls onTimeout if the agent is not ready within 60s.
func startAgentOr(t *testing.T, ctx context.Context, cfg Config, onTimeout func()) (*Agent, func()) {
	t.Helper()
	if cfg.KubeletListener == nil {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cfg.KubeletListener = ln
	}
	if cfg.NodeIP == nil {
		cfg.NodeIP = net.IPv4(127, 0, 0, 1)
	}
	// These tests are about joining and credentials: host-network pods and
	// the userspace proxy, so that no bridge or namespace outlives a test
	// (pods, and with them their networks, outlive an agent by design).
	if cfg.PodNetwork == "" {
		cfg.PodNetwork, cfg.ServiceProxy = PodNetworkHost, ServiceProxyUserspace
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	cfg.StopPodsOnExit = true
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("agent: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("agent did not stop")
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-a.Ready():
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	case <-time.After(60 * time.Second):
		onTimeout()
		t.Fatal("agent not ready")
	}
	return a, stop
}

func TestAgentJoinsWithBootstrapToken(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h, admin, ca, _ := testHub(t, ctx)
	tok := "abcdef.0123456789abcdef"
	if _, err := bootstraptoken.Create(ctx, admin, bootstraptoken.Options{Token: tok, TTL: time.Hour}); err != nil {
		t.Fatalf("create bootstrap token: %v", err)
	}
	dir := t.TempDir()
	// A wrong pin never gets as far as sending the token.
	bad, err := New(Config{Server: h.Server(), NodeName: "n1", DataDir: filepath.Join(dir, "bad"), Token: tok,
		CACertHash: "sha256:" + strings.Repeat("0", 64), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithTimeout(ctx, 20*time.Second)
	err = bad.Run(bctx)
	bcancel()
	if err == nil || !strings.Contains(err.Error(), "CA") {
		t.Fatalf("wrong CA hash: err = %v, want a CA pin failure", err)
	}

	cfg := Config{Server: h.Server(), NodeName: "n1", DataDir: filepath.Join(dir, "agent"), Token: tok, CACertHash: pki.CAHash(ca.Cert)}
	// Fallback until the hub's approver handles this CSR by itself.
	testSignerAfter(ctx, t, admin, ca, nil, 5*time.Second)
	a, stopAgent := startAgentOr(t, ctx, cfg, func() {
		list, _ := admin.CertificatesV1().CertificateSigningRequests().List(context.Background(), metav1.ListOptions{})
		for _, c := range list.Items {
			t.Logf("CSR %s signer=%s user=%s groups=%v usages=%v conditions=%+v cert=%d", c.Name, c.Spec.SignerName, c.Spec.Username, c.Spec.Groups, c.Spec.Usages, c.Status.Conditions, len(c.Status.Certificate))
		}
	})
	eventually(t, 60*time.Second, "node Ready", func() error { return nodeReady(ctx, admin, "n1") })
	// The node now authenticates as itself with its own certificate.
	pair, err := tls.LoadX509KeyPair(filepath.Join(cfg.DataDir, "pki", "kubelet-client-current.pem"), filepath.Join(cfg.DataDir, "pki", "kubelet-client-current.pem"))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "system:node:n1" {
		t.Fatalf("client cert CN %q", leaf.Subject.CommonName)
	}
	// Serving certificate issued through a kubelet-serving CSR.
	hubClient := tlsClient(t, ca, "", "")
	eventually(t, 60*time.Second, "serving cert", func() error {
		resp, err := hubClient.Get("https://" + a.KubeletAddr().String() + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	st, err := os.Stat(a.NodeKubeconfig())
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("node kubeconfig: %v %v", st, err)
	}

	// A restart reuses the node certificate: no token, no new CSR.
	stopAgent()
	csrs, err := admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before := len(csrs.Items)
	startAgent(t, ctx, Config{Server: h.Server(), NodeName: "n1", DataDir: cfg.DataDir})
	eventually(t, 30*time.Second, "node Ready after restart", func() error { return nodeReady(ctx, admin, "n1") })
	csrs, err = admin.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(csrs.Items) != before {
		t.Fatalf("restart made %d new CSRs", len(csrs.Items)-before)
	}
}

func nodeReady(ctx context.Context, admin kubernetes.Interface, name string) error {
	n, err := admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			return nil
		}
	}
	return errors.New("not Ready")
}

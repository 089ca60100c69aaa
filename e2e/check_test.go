package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tether-dev/tether/internal/check"
	"github.com/tether-dev/tether/internal/pki"
)

// upProc is one `tether up --nodes 2` process on a fixed data dir and port,
// restarted with different flags by the check test.
type upProc struct {
	dir, svcCIDR string
	port         int
	cmd          *exec.Cmd
	exited       chan struct{}
	logf         *os.File
}

func (u *upProc) kubeconfig() string { return filepath.Join(u.dir, "admin.kubeconfig") }

// start runs `tether up` with extra flags and waits for up.ready.
func (u *upProc) start(t *testing.T, extra ...string) {
	t.Helper()
	if err := os.Remove(filepath.Join(u.dir, "up.ready")); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	logf, err := os.OpenFile(filepath.Join(u.dir, "process.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"up", "--nodes", "2", "--data-dir", u.dir, "--bind-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(u.port), "--service-cluster-ip-range", u.svcCIDR}, extra...)
	cmd := exec.Command(tetherBin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "HOME="+u.dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	u.cmd, u.logf, u.exited = cmd, logf, make(chan struct{})
	go func() { _ = cmd.Wait(); close(u.exited) }()
	deadline := time.Now().Add(readyTimeout)
	for {
		if _, err := os.Stat(filepath.Join(u.dir, "up.ready")); err == nil {
			return
		}
		select {
		case <-u.exited:
			t.Fatalf("tether up %v exited:\n%s", extra, u.tail())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("tether up %v not ready:\n%s", extra, u.tail())
		}
	}
}

func (u *upProc) stop() {
	if u.cmd == nil {
		return
	}
	_ = u.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-u.exited:
	case <-time.After(30 * time.Second):
		_ = u.cmd.Process.Kill()
		<-u.exited
	}
	u.logf.Close()
	u.cmd = nil
}

func (u *upProc) tail() string {
	b, _ := os.ReadFile(filepath.Join(u.dir, "process.log"))
	l, _ := os.ReadFile(filepath.Join(u.dir, "tether.log"))
	b = append(b, l...)
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}

// runCheck runs `tether check -o json` and returns the report and exit code.
func runCheck(t *testing.T, kubeconfig string) (*check.Report, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tetherBin, "check", "--kubeconfig", kubeconfig, "-o", "json", "--timeout", "5s")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("tether check: %v\n%s", err, stderr.String())
	}
	var r check.Report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("tether check (exit %d) printed no JSON report: %v\nstdout: %s\nstderr: %s", code, err, stdout.String(), stderr.String())
	}
	if strings.Contains(stderr.String(), "panic") {
		t.Fatalf("tether check panicked:\n%s", stderr.String())
	}
	return &r, code
}

// notGreen lists "path|check|target" of every finding that is not pass or
// info, with its state.
func notGreen(r *check.Report) []string {
	var out []string
	for _, f := range r.Findings {
		if f.State != check.Pass && f.State != check.Info {
			out = append(out, fmt.Sprintf("%s|%s|%s=%s", f.Path, f.Check, f.Target, f.State))
		}
	}
	sort.Strings(out)
	return out
}

func dumpFindings(r *check.Report) string {
	var b strings.Builder
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "  %-7s %s | %s | %s: %s\n", f.State, f.Path, f.Check, f.Target, f.Evidence)
	}
	return b.String()
}

// wantOnlyRed asserts exactly the listed findings fail with high risk and
// everything else is green, and the exit code is 1 (or 0 with none).
func wantOnlyRed(t *testing.T, what string, r *check.Report, code int, red ...string) {
	t.Helper()
	var want []string
	for _, x := range red {
		want = append(want, x+"=fail")
	}
	sort.Strings(want)
	got := notGreen(r)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("%s: not-green findings\n got: %q\nwant: %q\nreport:\n%s", what, got, want, dumpFindings(r))
	}
	wantCode := 0
	if len(red) > 0 {
		wantCode = 1
		for _, f := range r.Findings {
			if f.State == check.Fail && f.Risk != check.RiskHigh {
				t.Fatalf("%s: %s|%s is red but rated %s", what, f.Path, f.Check, f.Risk)
			}
		}
	}
	if code != wantCode {
		t.Fatalf("%s: exit code %d, want %d", what, code, wantCode)
	}
}

// TestCheck: `tether check` on a secure `tether up` cluster is all green;
// each insecure switch turns exactly its finding red; unreachable hubs,
// expired and under-privileged credentials are "could not verify", never
// green and never a crash.
func TestCheck(t *testing.T) {
	dir := t.TempDir()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	// A loopback service range of this run (127/8 is local; nothing leaves).
	u := &upProc{dir: dir, port: port, svcCIDR: fmt.Sprintf("127.213.%d.0/24", os.Getpid()%250)}
	t.Cleanup(u.stop)
	u.start(t)

	r, code := runCheck(t, u.kubeconfig())
	wantOnlyRed(t, "secure cluster", r, code)
	if len(r.Nodes) != 2 || r.Egress != "direct" {
		t.Fatalf("report: nodes %v egress %q", r.Nodes, r.Egress)
	}
	t.Logf("secure cluster: %d findings, all green", len(r.Findings))

	t.Run("bad input", func(t *testing.T) { checkBadInput(t, u) })

	cs := kubeClient(t, u.kubeconfig())
	t.Run("non-expiring bootstrap token", func(t *testing.T) {
		out, err := exec.Command(tetherBin, "token", "create", "--kubeconfig", u.kubeconfig(), "--ttl", "0").CombinedOutput()
		if err != nil {
			t.Fatalf("tether token create --ttl 0: %v\n%s", err, out)
		}
		m := regexp.MustCompile(`--token ([a-z0-9]{6})\.`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("no token in %s", out)
		}
		id := string(m[1])
		r, code := runCheck(t, u.kubeconfig())
		wantOnlyRed(t, "--ttl 0", r, code, "node-to-hub|bootstrap tokens expire|bootstrap-token-"+id)
		if out, err := exec.Command(tetherBin, "token", "delete", "--kubeconfig", u.kubeconfig(), id).CombinedOutput(); err != nil {
			t.Fatalf("token delete: %v\n%s", err, out)
		}
	})

	t.Run("self-signed kubelet serving cert", func(t *testing.T) {
		stop := startSelfSignedAgent(t, u, cs, "node-x")
		r, code := runCheck(t, u.kubeconfig())
		stop()
		wantOnlyRed(t, "self-signed agent", r, code, "hub-to-kubelet|kubelet serving certificate issued by the cluster CA|node-x")
	})

	t.Run("--insecure-kubelet-tls", func(t *testing.T) {
		u.stop()
		u.start(t, "--insecure-kubelet-tls")
		r, code := runCheck(t, u.kubeconfig())
		wantOnlyRed(t, "--insecure-kubelet-tls", r, code, "hub-to-kubelet|hub verifies kubelet serving certificates|hub")
	})

	t.Run("--anonymous-auth=true", func(t *testing.T) {
		u.stop()
		u.start(t, "--anonymous-auth=true")
		r, code := runCheck(t, u.kubeconfig())
		wantOnlyRed(t, "--anonymous-auth=true", r, code, "apiserver|anonymous requests rejected|hub")
	})

	// --egress=direct on the isolated topology (hub and nodes in their own
	// network namespaces, only nodes may open connections): the egress
	// finding is red. The kubelets and the hub's advertised address are
	// unreachable from here too (only the admin port is forwarded), so those
	// checks say "could not verify" (not red).
	t.Run("--egress=direct isolated", func(t *testing.T) {
		c := startIsolated(t, "direct", "100.86.0.0/16")
		r, code := runCheck(t, c.kubeconfig)
		var red []string
		for _, f := range r.Findings {
			switch {
			case f.State == check.Fail:
				red = append(red, f.Path+"|"+f.Check+"|"+f.Target)
			case f.State == check.Warn:
				t.Errorf("warn: %+v", f)
			case f.State == check.Unknown && f.Path != check.PathHubKubelet && f.Check != "kubernetes Service and Endpoints lead to the hub":
				t.Errorf("unverified outside hub-to-kubelet: %+v", f)
			}
		}
		sort.Strings(red)
		want := []string{"egress|hub reaches nodes directly|node-1", "egress|hub reaches nodes directly|node-2"}
		if strings.Join(red, ",") != strings.Join(want, ",") || code != 1 {
			t.Fatalf("red %q (exit %d), want %q\n%s", red, code, want, dumpFindings(r))
		}
	})
}

func kubeClient(t *testing.T, kubeconfig string) kubernetes.Interface {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// checkBadInput: an unreachable hub, expired admin credentials and an
// identity without permissions each make every dependent check "could not
// verify", never pass, and exit 2.
func checkBadInput(t *testing.T, u *upProc) {
	caPEM, err := os.ReadFile(filepath.Join(u.dir, "pki", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(u.dir, "pki", "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(caPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	closed, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	adminCert, err := os.ReadFile(filepath.Join(u.dir, "pki", "admin.crt"))
	if err != nil {
		t.Fatal(err)
	}
	adminKey, err := os.ReadFile(filepath.Join(u.dir, "pki", "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	expiredCert, expiredKey := clientCert(t, ca, "tether-admin", []string{"system:masters"}, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	nobodyCert, nobodyKey := clientCert(t, ca, "check-nobody", nil, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	for _, tc := range []struct {
		name, server string
		cert, key    []byte
		wantText     string
	}{
		{"unreachable hub", "https://127.0.0.1:" + strconv.Itoa(closed), adminCert, adminKey, "hub unreachable"},
		{"expired admin credentials", "https://127.0.0.1:" + strconv.Itoa(u.port), expiredCert, expiredKey, "401"},
		{"no permissions", "https://127.0.0.1:" + strconv.Itoa(u.port), nobodyCert, nobodyKey, "permission denied (403)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kc := filepath.Join(t.TempDir(), "kubeconfig")
			writeKubeconfig(t, kc, tc.server, caPEM, tc.cert, tc.key)
			r, code := runCheck(t, kc)
			if code != 2 {
				t.Fatalf("exit code %d, want 2 (unverified)\n%s", code, dumpFindings(r))
			}
			unknown := 0
			for _, f := range r.Findings {
				if f.State == check.Unknown {
					unknown++
					if !strings.HasPrefix(f.Evidence, "could not verify") {
						t.Errorf("unknown finding without 'could not verify': %+v", f)
					}
				}
				if strings.Contains(f.Evidence, tc.wantText) {
					continue
				}
				// Only probes that need no credentials may pass.
				if f.State == check.Pass && f.Path != check.PathAPIServer {
					t.Errorf("false green: %+v", f)
				}
			}
			if unknown < 10 {
				t.Fatalf("only %d checks unverified:\n%s", unknown, dumpFindings(r))
			}
			found := false
			for _, f := range r.Findings {
				found = found || strings.Contains(f.Evidence, tc.wantText)
			}
			if !found {
				t.Fatalf("no finding says %q:\n%s", tc.wantText, dumpFindings(r))
			}
			t.Logf("%s: %s", tc.name, r.Summarize())
		})
	}
}

// clientCert issues a client certificate with an explicit validity window
// (pki.Issue cannot make one that is already expired).
func clientCert(t *testing.T, ca *pki.CA, cn string, orgs []string, notBefore, notAfter time.Time) ([]byte, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM
}

func writeKubeconfig(t *testing.T, path, server string, caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	cfg.CurrentContext = "c"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
}

// startSelfSignedAgent joins a `tether agent` process whose kubelet serves a
// self-signed certificate (CN=system:node:<name>, SAN 127.0.0.1 and the
// name, so only its issuer is wrong), waits until its Node is Ready and
// returns a func that stops it and deletes the Node.
func startSelfSignedAgent(t *testing.T, u *upProc, cs kubernetes.Interface, name string) func() {
	t.Helper()
	adir := filepath.Join(u.dir, "extra", name)
	if err := os.MkdirAll(adir, 0o700); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}},
		DNSNames: []string{name}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(adir, "self.crt"), filepath.Join(adir, "self.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	token, err := os.ReadFile(filepath.Join(u.dir, "up.token"))
	if err != nil {
		t.Fatal(err)
	}
	kport, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(adir, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tetherBin, "agent", "--server", "https://127.0.0.1:"+strconv.Itoa(u.port),
		"--token", strings.TrimSpace(string(token)), "--ca-cert", filepath.Join(u.dir, "pki", "ca.crt"),
		"--node-name", name, "--data-dir", adir, "--node-ip", "127.0.0.1", "--kubelet-address", "127.0.0.1",
		"--kubelet-port", strconv.Itoa(kport), "--konnectivity", "off", "--stop-pods-on-exit",
		"--tls-cert-file", certFile, "--tls-private-key-file", keyFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "HOME="+adir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logf.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := cs.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete node %s: %v", name, err)
		}
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(readyTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		cancel()
		if err == nil && n.Status.DaemonEndpoints.KubeletEndpoint.Port != 0 {
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					return stop
				}
			}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(adir, "agent.log"))
			t.Fatalf("agent %s exited:\n%s", name, b)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(adir, "agent.log"))
			t.Fatalf("agent %s not Ready: %v\n%s", name, err, b)
		}
	}
}

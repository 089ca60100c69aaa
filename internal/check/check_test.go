package check

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/tether-dev/tether/internal/pki"
	"github.com/tether-dev/tether/internal/tlspolicy"
)

func TestClassifyTokens(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tok := func(id, exp string, withExp bool) corev1.Secret {
		s := corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-" + id, Namespace: "kube-system"},
			Type: corev1.SecretTypeBootstrapToken, Data: map[string][]byte{"token-id": []byte(id)}}
		if withExp {
			s.Data["expiration"] = []byte(exp)
		}
		return s
	}
	for _, tc := range []struct {
		name      string
		secret    corev1.Secret
		state     State
		risk      Risk
		evidence  string
		fixSubstr string
	}{
		{"never expires", tok("aaaaaa", "", false), Fail, RiskHigh, "never expires", "tether token delete aaaaaa"},
		{"empty expiration", tok("bbbbbb", "", true), Fail, RiskHigh, "never expires", "--ttl"},
		{"expired but stored", tok("cccccc", now.Add(-time.Hour).Format(time.RFC3339), true), Warn, RiskMedium, "expired", "tether token delete cccccc"},
		{"valid", tok("dddddd", now.Add(time.Hour).Format(time.RFC3339), true), Pass, RiskNone, "expires", ""},
		{"garbage expiration", tok("eeeeee", "tomorrow", true), Warn, RiskMedium, "unreadable", "delete"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := classifyTokens([]corev1.Secret{tc.secret}, now)
			if len(fs) != 1 {
				t.Fatalf("%d findings", len(fs))
			}
			f := fs[0]
			if f.State != tc.state || (tc.state != Pass && f.Risk != tc.risk) || !strings.Contains(f.Evidence, tc.evidence) || !strings.Contains(f.Fix, tc.fixSubstr) {
				t.Fatalf("got %+v", f)
			}
		})
	}
	if fs := classifyTokens(nil, now); len(fs) != 1 || fs[0].State != Pass {
		t.Fatalf("no tokens: %+v", fs)
	}
}

func TestRBACHolders(t *testing.T) {
	role := func(name string, rules ...rbacv1.PolicyRule) *rbacv1.ClusterRole {
		return &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}
	}
	s := &rbacState{
		clusterRoles: map[string]*rbacv1.ClusterRole{
			"cluster-admin": role("cluster-admin", rbacv1.PolicyRule{Verbs: []string{"*"}, APIGroups: []string{"*"}, Resources: []string{"*"}}),
			"debugger":      role("debugger", rbacv1.PolicyRule{Verbs: []string{"create"}, APIGroups: []string{""}, Resources: []string{"pods/exec"}}),
			"proxier":       role("proxier", rbacv1.PolicyRule{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"*/proxy"}}),
			"reader":        role("reader", rbacv1.PolicyRule{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"pods", "nodes"}}),
			"approver": role("approver", rbacv1.PolicyRule{Verbs: []string{"update"}, APIGroups: []string{"certificates.k8s.io"},
				Resources: []string{"certificatesigningrequests/approval"}}),
		},
		roles: map[string]*rbacv1.Role{"dev/exec": {ObjectMeta: metav1.ObjectMeta{Name: "exec", Namespace: "dev"},
			Rules: []rbacv1.PolicyRule{{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"pods/*"}}}}},
		crbs: []rbacv1.ClusterRoleBinding{
			{ObjectMeta: metav1.ObjectMeta{Name: "cluster-admin", Labels: map[string]string{"kubernetes.io/bootstrapping": "rbac-defaults"}},
				RoleRef: rbacv1.RoleRef{Kind: "ClusterRole", Name: "cluster-admin"}, Subjects: []rbacv1.Subject{{Kind: "Group", Name: "system:masters"}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "oncall"}, RoleRef: rbacv1.RoleRef{Kind: "ClusterRole", Name: "debugger"},
				Subjects: []rbacv1.Subject{{Kind: "User", Name: "alice"}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "ci"}, RoleRef: rbacv1.RoleRef{Kind: "ClusterRole", Name: "proxier"},
				Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "ci", Namespace: "build"}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "readers"}, RoleRef: rbacv1.RoleRef{Kind: "ClusterRole", Name: "reader"},
				Subjects: []rbacv1.Subject{{Kind: "Group", Name: "devs"}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "approvers"}, RoleRef: rbacv1.RoleRef{Kind: "ClusterRole", Name: "approver"},
				Subjects: []rbacv1.Subject{{Kind: "User", Name: "bob"}}},
		},
		rbs: []rbacv1.RoleBinding{{ObjectMeta: metav1.ObjectMeta{Name: "exec", Namespace: "dev"}, RoleRef: rbacv1.RoleRef{Kind: "Role", Name: "exec"},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "debug"}}}},
	}
	for _, tc := range []struct {
		perm permission
		want []string
	}{
		{permPodsExec, []string{"Group system:masters", "ServiceAccount dev/debug", "User alice"}},
		{permNodesProxy, []string{"Group system:masters", "ServiceAccount build/ci"}},
		{permPodsProxy, []string{"Group system:masters", "ServiceAccount build/ci", "ServiceAccount dev/debug"}},
		{permApproveCSR, []string{"Group system:masters", "User bob"}},
		{permSAToken, []string{"Group system:masters"}},
	} {
		t.Run(tc.perm.what, func(t *testing.T) {
			var got []string
			for _, h := range s.holders(tc.perm) {
				got = append(got, h.Subject)
				if h.BuiltIn != (h.Subject == "Group system:masters") {
					t.Errorf("%s built-in=%v", h, h.BuiltIn)
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("holders %q, want %q", got, tc.want)
			}
		})
	}
	if f := rbacFinding(PathRBAC, "x", s, []permission{permSAToken}); f.State != Pass {
		t.Fatalf("built-in only: %+v", f)
	}
	if f := rbacFinding(PathRBAC, "x", s, []permission{permPodsExec}); f.State != Warn || !strings.Contains(f.Evidence, "User alice") {
		t.Fatalf("extra holder: %+v", f)
	}
}

// tlsServer is a real HTTPS server with tlsCfg answering every request with
// status; the returned rest.Config trusts its certificate.
func tlsServer(t *testing.T, tlsCfg *tls.Config, status int) *rest.Config {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"kind":"Status","message":"probe answer"}`))
	}))
	srv.TLS = tlsCfg
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the probes' refused handshakes
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{CAData: caPEM}}
}

func findingsOf(c *Checker, path string) map[string]Finding {
	out := map[string]Finding{}
	for _, f := range c.report.Findings {
		if f.Path == path {
			out[f.Check] = f
		}
	}
	return out
}

// TestAPIServerProbes runs the API server probes against real TLS servers:
// a strict one and one configured the way old clusters were.
func TestAPIServerProbes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tls    *tls.Config
		status int
		want   map[string]State
	}{
		{"strict", &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: tlspolicy.Default()}, http.StatusUnauthorized, map[string]State{
			"plain HTTP refused": Pass, "anonymous requests rejected": Pass, "TLS versions offered": Pass,
			"weak TLS cipher suites refused": Pass, "serving certificate": Warn}},
		{"go defaults", &tls.Config{MinVersion: tls.VersionTLS12}, http.StatusUnauthorized, map[string]State{
			"weak TLS cipher suites refused": Warn}},
		{"legacy", &tls.Config{MinVersion: tls.VersionTLS10, CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}},
			http.StatusOK, map[string]State{
				"plain HTTP refused": Pass, "anonymous requests rejected": Fail, "TLS versions offered": Warn,
				"weak TLS cipher suites refused": Warn, "serving certificate": Warn}},
		{"anonymous forbidden", &tls.Config{MinVersion: tls.VersionTLS12}, http.StatusForbidden, map[string]State{
			"anonymous requests rejected": Fail}},
		{"client certificate required", &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: tlspolicy.Default(), ClientAuth: tls.RequireAnyClientCert}, http.StatusOK, map[string]State{
			"anonymous requests rejected": Pass, "TLS versions offered": Pass, "weak TLS cipher suites refused": Pass}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(Config{REST: tlsServer(t, tc.tls, tc.status), Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			e := &env{}
			e.serverURL, e.host = mustURL(t, c.cfg.REST.Host)
			e.caPool, e.caCerts, e.caErr = caFromConfig(c.cfg.REST)
			c.checkAPIServer(context.Background(), e)
			got := findingsOf(c, PathAPIServer)
			for check, want := range tc.want {
				if got[check].State != want {
					t.Errorf("%s: %s (%s), want %s", check, got[check].State, got[check].Evidence, want)
				}
			}
			if f := got["anonymous requests rejected"]; f.State == Fail && (f.Risk != RiskHigh || !strings.Contains(f.Fix, "--anonymous-auth=false")) {
				t.Errorf("anonymous finding: %+v", f)
			}
			// httptest's certificate names example.com, not the in-cluster names.
			if f := got["serving certificate"]; f.State == Warn && !strings.Contains(f.Evidence, "missing in-cluster names kubernetes") {
				t.Errorf("serving certificate evidence: %s", f.Evidence)
			}
			if f := got["weak TLS cipher suites refused"]; f.State == Warn && !strings.Contains(f.Evidence, "TLS_RSA_WITH_AES_128_CBC_SHA") && !strings.Contains(f.Evidence, "CBC-SHA1 suites") {
				t.Errorf("weak suites evidence: %s", f.Evidence)
			}
		})
	}
}

func mustURL(t *testing.T, s string) (*url.URL, string) {
	t.Helper()
	c, err := New(Config{REST: &rest.Config{Host: s}})
	if err != nil {
		t.Fatal(err)
	}
	e := c.gatherURL()
	return e.serverURL, e.host
}

// TestUnreachableHub: nothing is green when the hub cannot be reached; every
// check says why, and the exit code is 2.
func TestUnreachableHub(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ca, err := pki.NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{REST: &rest.Config{Host: "https://127.0.0.1:" + strconv.Itoa(port), TLSClientConfig: rest.TLSClientConfig{CAData: ca.CertPEM}}, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	unknown := 0
	for _, f := range r.Findings {
		switch f.State {
		case Unknown:
			unknown++
			if !strings.HasPrefix(f.Evidence, "could not verify") {
				t.Errorf("unknown without reason: %+v", f)
			}
		case Pass, Warn, Fail:
			t.Errorf("unreachable hub yet %s: %+v", f.State, f)
		}
	}
	if unknown < 10 || r.ExitCode() != 2 {
		t.Fatalf("%d unknown, exit %d", unknown, r.ExitCode())
	}
	if !strings.Contains(r.Findings[0].Evidence, "hub unreachable") {
		t.Fatalf("first finding does not say the hub is unreachable: %s", r.Findings[0].Evidence)
	}
}

func TestNodeClientCerts(t *testing.T) {
	now := time.Now()
	ca, err := pki.NewCA("cluster-ca", 10*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("other-ca", 10*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *pki.CA, validity time.Duration) *x509.Certificate {
		p, _, err := ca.Issue(pki.CertSpec{CommonName: "system:node:n1", Organization: []string{"system:nodes"}, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Validity: validity})
		if err != nil {
			t.Fatal(err)
		}
		c, err := pki.ParseCertPEM(p)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		name  string
		certs []issued
		clock time.Time
		state State
		text  string
	}{
		{"fresh", []issued{{"csr-1", issue(ca, 365*24*time.Hour)}}, now, Pass, "1 issued"},
		{"expiring soon", []issued{{"csr-1", issue(ca, 10*24*time.Hour)}}, now, Warn, "expires soon"},
		{"rotation overdue", []issued{{"csr-1", issue(ca, 365*24*time.Hour)}}, now.Add(330 * 24 * time.Hour), Warn, "rotation appears off"},
		{"expired", []issued{{"csr-1", issue(ca, 24*time.Hour)}}, now.Add(48 * time.Hour), Fail, "expired"},
		{"foreign issuer", []issued{{"csr-1", issue(other, 365*24*time.Hour)}}, now, Warn, "not issued by the cluster CA"},
		{"provisioned", nil, now, Unknown, "could not verify"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(Config{REST: &rest.Config{Host: "https://127.0.0.1:1"}, Now: func() time.Time { return tc.clock }})
			if err != nil {
				t.Fatal(err)
			}
			e := &env{nodes: []corev1.Node{{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}}}
			e.caPool, e.caCerts, e.caErr = caFromConfig(&rest.Config{TLSClientConfig: rest.TLSClientConfig{CAData: ca.CertPEM}})
			c.nodeClientCerts(e, map[string][]issued{"n1": tc.certs})
			f := c.report.Findings[0]
			if f.State != tc.state || !strings.Contains(f.Evidence, tc.text) || f.Node != "n1" {
				t.Fatalf("got %s: %s", f.State, f.Evidence)
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		states []State
		risk   Risk
		want   int
	}{
		{[]State{Pass, Info}, RiskNone, 0},
		{[]State{Pass, Warn}, RiskMedium, 0},
		{[]State{Pass, Unknown}, RiskMedium, 2},
		{[]State{Fail, Unknown}, RiskHigh, 1},
	} {
		r := &Report{}
		for _, s := range tc.states {
			r.Findings = append(r.Findings, Finding{State: s, Risk: tc.risk})
		}
		if got := r.ExitCode(); got != tc.want {
			t.Errorf("%v: exit %d, want %d", tc.states, got, tc.want)
		}
	}
}

func FuzzJWTClaims(f *testing.F) {
	f.Add("eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjEsImlhdCI6MH0.sig")
	f.Add("a.b")
	f.Add("..")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := jwtClaims(s)
		if err == nil && m == nil && !strings.Contains(s, "null") {
			t.Fatalf("nil claims without error for %q", s)
		}
	})
}

func FuzzParseCertsPEM(f *testing.F) {
	ca, err := pki.NewCA("fuzz", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ca.CertPEM)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := parseCertsPEM(b)
		if err == nil && len(certs) == 0 {
			t.Fatal("no certificates and no error")
		}
	})
}

func TestStatusMessage(t *testing.T) {
	for in, want := range map[string]string{
		`{"kind":"Status","message":"namespaces is forbidden: User \"system:anonymous\" cannot list"}`: `namespaces is forbidden: User "system:anonymous" cannot list`,
		"Unauthorized\n": "Unauthorized",
		"":               "",
	} {
		if got := statusMessage([]byte(in)); got != want {
			t.Errorf("statusMessage(%q) = %q, want %q", in, got, want)
		}
	}
}

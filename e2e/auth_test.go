package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// authKubectl is the newest versioned kubectl if installed, else the one on
// PATH.
func authKubectl(t *testing.T, h *hub) *kubectl {
	t.Helper()
	if paths, _ := filepath.Glob(kubectlGlob); len(paths) > 0 {
		ps := installedKubectls(t)
		return newKubectl(t, ps[len(ps)-1], h)
	}
	p, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("no kubectl: %v", err)
	}
	k := newKubectl(t, p, h)
	k.version = "PATH"
	return k
}

// jwtClaims decodes a JWT's payload without verifying it.
func jwtClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(strings.TrimSpace(tok), ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", tok)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func lifetime(t *testing.T, c map[string]any) time.Duration {
	t.Helper()
	exp, _ := c["exp"].(float64)
	iat, _ := c["iat"].(float64)
	return time.Duration(exp-iat) * time.Second
}

// tokenOnlyKubeconfig writes a kubeconfig with the hub's server and CA and
// only a bearer token (no client certificate that would win).
func tokenOnlyKubeconfig(t *testing.T, h *hub, token string) string {
	t.Helper()
	admin, err := clientcmd.LoadFromFile(h.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	var server string
	var ca []byte
	for _, c := range admin.Clusters {
		server, ca = c.Server, c.CertificateAuthorityData
		if len(ca) == 0 && c.CertificateAuthority != "" {
			if ca, err = os.ReadFile(c.CertificateAuthority); err != nil {
				t.Fatal(err)
			}
		}
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["x"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "x"
	path := filepath.Join(t.TempDir(), "token.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestKubectlAuth: kubectl create token (+ --duration, --bound-object-*),
// auth whoami with that token, auth can-i (admin, --as a service account,
// --list), certificate approve/deny.
func TestKubectlAuth(t *testing.T) {
	h := sharedHub(t)
	k := authKubectl(t, h)
	cs := h.Client(t)
	ctx := testContext(t, 90*time.Second)
	ns := testNamespace(t, cs)
	sa := "system:serviceaccount:" + ns + ":default"

	// The default ServiceAccount is created by a controller.
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		t.Fatal("no default service account")
	}

	t.Run("create-token", func(t *testing.T) {
		tok := strings.TrimSpace(k.ok(t, "create", "token", "default", "-n", ns))
		c := jwtClaims(t, tok)
		if c["sub"] != sa {
			t.Errorf("sub = %v, want %s", c["sub"], sa)
		}
		if d := lifetime(t, c); d != time.Hour {
			t.Errorf("default lifetime %v, want 1h", d)
		}
		c = jwtClaims(t, k.ok(t, "create", "token", "default", "-n", ns, "--duration", "15m"))
		if d := lifetime(t, c); d != 15*time.Minute {
			t.Errorf("--duration 15m gave %v", d)
		}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "bound"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		c = jwtClaims(t, k.ok(t, "create", "token", "default", "-n", ns, "--bound-object-kind", "Pod", "--bound-object-name", "bound"))
		kube, _ := c["kubernetes.io"].(map[string]any)
		pod, _ := kube["pod"].(map[string]any)
		if pod["name"] != "bound" || pod["uid"] == "" {
			t.Errorf("bound pod claim = %v", kube)
		}
		k.fails(t, "create", "token", "default", "-n", ns, "--bound-object-kind", "Pod", "--bound-object-name", "no-such-pod")
	})

	t.Run("whoami", func(t *testing.T) {
		tok := strings.TrimSpace(k.ok(t, "create", "token", "default", "-n", ns))
		kc := tokenOnlyKubeconfig(t, h, tok)
		var out string
		// SA tokens are checked against informer caches: poll briefly.
		deadline := time.Now().Add(30 * time.Second)
		for {
			o, e, err := k.run(t, "", "--kubeconfig", kc, "auth", "whoami", "-o", "json")
			if err == nil {
				out = o
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("whoami with token: %v\n%s%s", err, o, e)
			}
			time.Sleep(100 * time.Millisecond) // poll interval, bounded by deadline
		}
		var ssr struct {
			Status struct {
				UserInfo struct {
					Username string   `json:"username"`
					Groups   []string `json:"groups"`
				} `json:"userInfo"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(out), &ssr); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if ssr.Status.UserInfo.Username != sa {
			t.Errorf("whoami = %q, want %q", ssr.Status.UserInfo.Username, sa)
		}
		wantContains(t, "groups", strings.Join(ssr.Status.UserInfo.Groups, ","), "system:serviceaccounts", "system:serviceaccounts:"+ns, "system:authenticated")
		// And the --token flag on its own.
		wantContains(t, "whoami --token", k.ok(t, "--kubeconfig", kc, "--token", tok, "auth", "whoami"), sa)
		// A tampered token is refused.
		bad := tok[:len(tok)-4] + "AAAA"
		wantContains(t, "whoami with tampered token", k.fails(t, "--kubeconfig", tokenOnlyKubeconfig(t, h, bad), "auth", "whoami"), "Unauthorized")
	})

	t.Run("can-i", func(t *testing.T) {
		wantEqual(t, "admin can-i create pods", k.ok(t, "auth", "can-i", "create", "pods", "-n", ns), "yes")
		wantEqual(t, "admin can-i * *", k.ok(t, "auth", "can-i", "*", "*"), "yes")
		wantEqual(t, "sa can-i get secrets", k.fails(t, "auth", "can-i", "get", "secrets", "-n", ns, "--as", sa), "no")
		if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "sa-view"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: "default"}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, _, _ := k.run(t, "", "auth", "can-i", "list", "pods", "-n", ns, "--as", sa)
			if strings.TrimSpace(out) == "yes" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sa never allowed to list pods after binding view: %q", out)
			}
			time.Sleep(100 * time.Millisecond) // poll interval, bounded by deadline
		}
		wantEqual(t, "sa can-i get secrets (view)", k.fails(t, "auth", "can-i", "get", "secrets", "-n", ns, "--as", sa), "no")
		wantEqual(t, "sa can-i list pods other ns", k.fails(t, "auth", "can-i", "list", "pods", "-n", "kube-system", "--as", sa), "no")
		list := k.ok(t, "auth", "can-i", "--list", "-n", ns, "--as", sa)
		wantContains(t, "can-i --list", list, "pods", "configmaps", "selfsubjectaccessreviews.authorization.k8s.io")
		for _, line := range strings.Split(list, "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == "secrets" {
				t.Errorf("can-i --list shows secrets for a view SA: %q", line)
			}
		}
		// A user who may not impersonate cannot use --as.
		wantContains(t, "can-i --as as the SA", k.fails(t, "--kubeconfig", tokenOnlyKubeconfig(t, h, strings.TrimSpace(k.ok(t, "create", "token", "default", "-n", ns))),
			"auth", "can-i", "get", "pods", "-n", ns, "--as", "system:admin"), "impersonate")
	})

	t.Run("certificate-approve-deny", func(t *testing.T) {
		mk := func(name string) {
			t.Helper()
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name, Organization: []string{"e2e"}}}, key)
			if err != nil {
				t.Fatal(err)
			}
			_, err = cs.CertificatesV1().CertificateSigningRequests().Create(ctx, &certificatesv1.CertificateSigningRequest{
				ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: certificatesv1.CertificateSigningRequestSpec{Request: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
					SignerName: certificatesv1.KubeAPIServerClientSignerName,
					Usages:     []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				_ = cs.CertificatesV1().CertificateSigningRequests().Delete(context.Background(), name, metav1.DeleteOptions{})
			})
		}
		pending, denied, approved := ns+"-pending", ns+"-denied", ns+"-approved"
		for _, n := range []string{pending, denied, approved} {
			mk(n)
		}
		wantContains(t, "get csr", k.ok(t, "get", "csr", pending), "Pending")
		k.ok(t, "certificate", "deny", denied)
		k.ok(t, "certificate", "approve", approved)
		var issued *certificatesv1.CertificateSigningRequest
		if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			c, err := cs.CertificatesV1().CertificateSigningRequests().Get(ctx, approved, metav1.GetOptions{})
			issued = c
			return err == nil && len(c.Status.Certificate) > 0, nil
		}); err != nil {
			t.Fatalf("approved CSR never issued: %+v", issued)
		}
		blk, _ := pem.Decode(issued.Status.Certificate)
		if blk == nil {
			t.Fatal("issued certificate is not PEM")
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if cert.Subject.CommonName != approved {
			t.Errorf("issued CN %q", cert.Subject.CommonName)
		}
		// The other two were created before the approved one was issued: the
		// signer has seen them, and neither has a certificate.
		for _, n := range []string{pending, denied} {
			c, err := cs.CertificatesV1().CertificateSigningRequests().Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Status.Certificate) > 0 {
				t.Errorf("%s has a certificate without approval", n)
			}
		}
		wantContains(t, "get csr", k.ok(t, "get", "csr", denied, approved, pending), "Denied", "Approved,Issued", "Pending")
	})
}

// TestTokenCreateJoinHash: `tether token create` prints a join line whose
// --ca-cert-hash is sha256 of the CA's SubjectPublicKeyInfo, as computed by
// Go and by openssl; list and delete see the token.
func TestTokenCreateJoinHash(t *testing.T) {
	h := sharedHub(t)
	tether := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, tetherBin, append(args, "--kubeconfig", h.Kubeconfig)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("tether %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	line := tether("token", "create", "--ttl", "10m", "--description", "e2e")
	m := regexp.MustCompile(`--token ([a-z0-9]{6}\.[a-z0-9]{16}) --ca-cert-hash sha256:([0-9a-f]{64})`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("join line: %q", line)
	}
	token, hash := m[1], m[2]
	wantContains(t, "join line", line, "tether agent --server https://127.0.0.1:")

	caFile := filepath.Join(h.Dir, "pki", "ca.crt")
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(caPEM)
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(ca.RawSubjectPublicKeyInfo)
	if got := hex.EncodeToString(sum[:]); got != hash {
		t.Errorf("Go: sha256(SPKI) = %s, join line says %s", got, hash)
	}
	if _, err := exec.LookPath("openssl"); err == nil {
		pub, err := exec.Command("openssl", "x509", "-pubkey", "-noout", "-in", caFile).Output()
		if err != nil {
			t.Fatal(err)
		}
		der := exec.Command("openssl", "pkey", "-pubin", "-outform", "der")
		der.Stdin = strings.NewReader(string(pub))
		derOut, err := der.Output()
		if err != nil {
			t.Fatal(err)
		}
		dgst := exec.Command("openssl", "dgst", "-sha256", "-hex")
		dgst.Stdin = strings.NewReader(string(derOut))
		out, err := dgst.Output()
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(out))
		if len(f) == 0 || f[len(f)-1] != hash {
			t.Errorf("openssl: %q, join line says %s", out, hash)
		}
	} else {
		t.Log("openssl not installed; Go computation only")
	}

	wantContains(t, "token list", tether("token", "list"), token, "e2e")
	wantContains(t, "token delete", tether("token", "delete", token[:6]), "deleted")
	if strings.Contains(tether("token", "list"), token) {
		t.Error("deleted token still listed")
	}
}

package hub

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	restclient "k8s.io/client-go/rest"

	"github.com/tether-dev/tether/internal/apiserver/authn"
	"github.com/tether-dev/tether/internal/bootstraptoken"
	"github.com/tether-dev/tether/internal/pki"
)

// Outcomes of one matrix cell. "allow" means the request got past
// authentication and authorization (any status but 401/403: the handler may
// still answer 404, 400 or 503, e.g. exec with no kubelet behind it).
const (
	allow = "allow"
	deny  = "403"
	unath = "401"
)

// matrixReq is one column of the matrix: a raw HTTP request.
type matrixReq struct {
	name        string
	method      string
	path        string
	contentType string
	body        func(t *testing.T) []byte
}

func jsonBody(v any) func(*testing.T) []byte {
	return func(t *testing.T) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
}

// clientCertConfig returns a config that authenticates with a client cert
// issued by the cluster CA for cn/orgs (and nothing else).
func (h *testHub) clientCertConfig(t *testing.T, ca *pki.CA, cn string, orgs ...string) *restclient.Config {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(pki.CertSpec{CommonName: cn, Organization: orgs, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c := h.anonymousConfig()
	c.CertData, c.KeyData = certPEM, keyPEM
	return c
}

func (h *testHub) tokenConfig(token string) *restclient.Config {
	c := h.anonymousConfig()
	c.BearerToken = token
	return c
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// jwtPart decodes one base64url segment of a compact JWT.
func jwtPart(t *testing.T, tok string, i int) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[i])
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAuthorizationMatrix(t *testing.T) {
	h := startHub(t, nil)
	ctx := context.Background()
	admin := h.client(t, h.Admin)
	ca, err := pki.LoadCA(readFile(t, filepath.Join(h.Dir, "pki", "ca.crt")), readFile(t, filepath.Join(h.Dir, "pki", "ca.key")))
	if err != nil {
		t.Fatal(err)
	}
	saKey, err := pki.ParseKey(readFile(t, filepath.Join(h.Dir, "pki", "sa.key")))
	if err != nil {
		t.Fatal(err)
	}
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// --- the world: namespaces A (own) and B (other), a secret in each,
	// nodes N1 and N2, pod p1 on N1 mounting secret s1, service account
	// "app" in A with edit there, users with view / admin in A.
	const nsA, nsB = "matrix-a", "matrix-b"
	for _, ns := range []string{nsA, nsB} {
		must(admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
	}
	must(admin.CoreV1().Secrets(nsA).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s1"}, StringData: map[string]string{"k": "v"}}, metav1.CreateOptions{}))
	must(admin.CoreV1().Secrets(nsB).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s2"}, StringData: map[string]string{"k": "v"}}, metav1.CreateOptions{}))
	for _, n := range []string{"n1", "n2"} {
		must(admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}))
	}
	must(admin.CoreV1().ServiceAccounts(nsA).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}))
	container := []corev1.Container{{Name: "c", Image: "busybox"}}
	must(admin.CoreV1().Pods(nsA).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p1"}, Spec: corev1.PodSpec{
		NodeName: "n1", Containers: container, ServiceAccountName: "app",
		Volumes: []corev1.Volume{{Name: "s", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "s1"}}}},
	}}, metav1.CreateOptions{}))
	must(admin.CoreV1().Pods(nsA).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "doomed"}, Spec: corev1.PodSpec{Containers: container, ServiceAccountName: "app"}}, metav1.CreateOptions{}))
	bind := func(name, ns, clusterRole string, subject rbacv1.Subject) {
		must(admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: clusterRole}, Subjects: []rbacv1.Subject{subject}}, metav1.CreateOptions{}))
	}
	bind("bob-view", nsA, "view", rbacv1.Subject{Kind: "User", APIGroup: rbacv1.GroupName, Name: "bob"})
	bind("carol-admin", nsA, "admin", rbacv1.Subject{Kind: "User", APIGroup: rbacv1.GroupName, Name: "carol"})
	bind("app-edit", nsA, "edit", rbacv1.Subject{Kind: "ServiceAccount", Namespace: nsA, Name: "app"})
	// The binding everyone tries to add themselves to.
	bind("to-cluster-admin", nsA, "cluster-admin", rbacv1.Subject{Kind: "User", APIGroup: rbacv1.GroupName, Name: "nobody"})
	// A CSR only an approver may approve (kube-apiserver-client is never auto-approved).
	approvePEM, _ := newCSR(t, "someone", nil)
	must(admin.CertificatesV1().CertificateSigningRequests().Create(ctx, &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: "matrix-approve"},
		Spec: certificatesv1.CertificateSigningRequestSpec{Request: approvePEM, SignerName: certificatesv1.KubeAPIServerClientSignerName,
			Usages: []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}},
	}, metav1.CreateOptions{}))

	// --- tokens.
	tokenFor := func(sa string, ref *authenticationv1.BoundObjectReference) string {
		t.Helper()
		exp := int64(3600)
		tr, err := admin.CoreV1().ServiceAccounts(nsA).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: &exp, BoundObjectRef: ref}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("token request for %s: %v", sa, err)
		}
		return tr.Status.Token
	}
	// SA tokens are checked against informer caches: wait until "app" is seen.
	appToken := tokenFor("app", nil)
	if err := waitStatus(ctx, h, h.tokenConfig(appToken), 201); err != nil {
		t.Fatalf("app token never authenticated: %v", err)
	}
	pod, err := admin.CoreV1().Pods(nsA).Get(ctx, "doomed", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	doomedToken := tokenFor("app", &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: "doomed", UID: pod.UID})
	if err := waitStatus(ctx, h, h.tokenConfig(doomedToken), 201); err != nil {
		t.Fatalf("pod-bound token never authenticated: %v", err)
	}
	zero := int64(0)
	if err := admin.CoreV1().Pods(nsA).Delete(ctx, "doomed", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	if err := waitStatus(ctx, h, h.tokenConfig(doomedToken), 401); err != nil {
		t.Fatalf("token bound to a deleted pod still authenticates: %v", err)
	}

	appSA, err := admin.CoreV1().ServiceAccounts(nsA).Get(ctx, "app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	aud := jwtPart(t, appToken, 1)["aud"]
	var audiences []string
	for _, a := range aud.([]any) {
		audiences = append(audiences, a.(string))
	}
	sign := func(key *ecdsa.PrivateKey, now time.Time, auds []string) string {
		t.Helper()
		var signer = saKey
		if key != nil {
			signer = key
		}
		iss, err := authn.NewIssuer(Issuer, signer, func() time.Time { return now })
		if err != nil {
			t.Fatal(err)
		}
		tok, _, err := iss.Issue(appSA, auds, time.Hour, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	// Sanity: our own signing with the real key is accepted, so the bad
	// variants below fail for the one reason each is built to have.
	if err := waitStatus(ctx, h, h.tokenConfig(sign(nil, time.Now(), audiences)), 201); err != nil {
		t.Fatalf("self-signed control token rejected: %v", err)
	}
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	expiredToken := sign(nil, time.Now().Add(-2*time.Hour), audiences)
	forgedToken := sign(otherKey, time.Now(), audiences)
	wrongAudToken := sign(nil, time.Now(), []string{"https://not-this-cluster.example"})
	parts := strings.Split(sign(nil, time.Now(), audiences), ".")
	noneHeader := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	algNoneToken := noneHeader + "." + parts[1] + "."
	// Same claims and a valid signature, but the header says kid of our key
	// and alg HS256 keyed with the public key bytes (algorithm confusion).
	hsHeader := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	hsToken := hsHeader + "." + parts[1] + "." + parts[2]

	bootToken, err := bootstraptoken.Create(ctx, admin, bootstraptoken.Options{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// An already expired bootstrap token, written as the Secret directly.
	must(admin.CoreV1().Secrets("kube-system").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: authn.BootstrapTokenSecretPrefix + "xpired"}, Type: authn.BootstrapTokenSecretType,
		StringData: map[string]string{"token-id": "xpired", "token-secret": "0123456789abcdef", "usage-bootstrap-authentication": "true",
			"usage-bootstrap-signing": "true", "expiration": time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)},
	}, metav1.CreateOptions{}))
	expiredBoot := "xpired.0123456789abcdef"
	wrongSecretBoot := bootToken[:7] + "0000000000000000"
	if wrongSecretBoot == bootToken {
		wrongSecretBoot = bootToken[:7] + "1111111111111111"
	}
	if err := waitStatus(ctx, h, h.tokenConfig(bootToken), 201); err != nil {
		t.Fatalf("bootstrap token never authenticated: %v", err)
	}

	// --- the requests (columns).
	csrPEM, _ := newCSR(t, "system:node:n1", []string{"system:nodes"})
	current := "" // the identity being tried, for request bodies that must differ
	reqs := []matrixReq{
		{name: "list-pods-own-ns", method: "GET", path: "/api/v1/namespaces/" + nsA + "/pods"},
		{name: "list-pods-other-ns", method: "GET", path: "/api/v1/namespaces/" + nsB + "/pods"},
		{name: "list-pods-on-n1", method: "GET", path: "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1"},
		{name: "get-secret-own-ns", method: "GET", path: "/api/v1/namespaces/" + nsA + "/secrets/s1"},
		{name: "get-secret-other-ns", method: "GET", path: "/api/v1/namespaces/" + nsB + "/secrets/s2"},
		{name: "create-secret-own-ns", method: "POST", path: "/api/v1/namespaces/" + nsA + "/secrets",
			body: jsonBody(corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"}, ObjectMeta: metav1.ObjectMeta{GenerateName: "m-"}})},
		{name: "create-secret-other-ns", method: "POST", path: "/api/v1/namespaces/" + nsB + "/secrets",
			body: jsonBody(corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"}, ObjectMeta: metav1.ObjectMeta{GenerateName: "m-"}})},
		{name: "patch-n1-status", method: "PATCH", path: "/api/v1/nodes/n1/status", contentType: "application/merge-patch+json",
			body: jsonBody(map[string]any{"status": map[string]any{"capacity": map[string]string{"pods": "110"}}})},
		{name: "patch-n2-status", method: "PATCH", path: "/api/v1/nodes/n2/status", contentType: "application/merge-patch+json",
			body: jsonBody(map[string]any{"status": map[string]any{"capacity": map[string]string{"pods": "110"}}})},
		{name: "create-csr", method: "POST", path: "/apis/certificates.k8s.io/v1/certificatesigningrequests",
			body: jsonBody(certificatesv1.CertificateSigningRequest{TypeMeta: metav1.TypeMeta{APIVersion: "certificates.k8s.io/v1", Kind: "CertificateSigningRequest"},
				ObjectMeta: metav1.ObjectMeta{GenerateName: "m-"},
				Spec: certificatesv1.CertificateSigningRequestSpec{Request: csrPEM, SignerName: certificatesv1.KubeAPIServerClientKubeletSignerName,
					Usages: []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}}})},
		{name: "approve-csr", method: "PUT", path: "/apis/certificates.k8s.io/v1/certificatesigningrequests/matrix-approve/approval",
			body: func(t *testing.T) []byte {
				csr, err := admin.CertificatesV1().CertificateSigningRequests().Get(ctx, "matrix-approve", metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				csr.TypeMeta = metav1.TypeMeta{APIVersion: "certificates.k8s.io/v1", Kind: "CertificateSigningRequest"}
				csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
					Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: "Matrix", Message: "approved by the matrix"})
				return jsonBody(csr)(t)
			}},
		{name: "pods-exec", method: "POST", path: "/api/v1/namespaces/" + nsA + "/pods/p1/exec?command=true&stdout=true"},
		{name: "nodes-proxy-n1", method: "GET", path: "/api/v1/nodes/n1/proxy/healthz"},
		{name: "create-role-escalating", method: "POST", path: "/apis/rbac.authorization.k8s.io/v1/namespaces/" + nsA + "/roles",
			body: jsonBody(rbacv1.Role{TypeMeta: metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"}, ObjectMeta: metav1.ObjectMeta{GenerateName: "m-"},
				Rules: []rbacv1.PolicyRule{{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"*"}}}})},
		{name: "create-role-within-own-rights", method: "POST", path: "/apis/rbac.authorization.k8s.io/v1/namespaces/" + nsA + "/roles",
			body: jsonBody(rbacv1.Role{TypeMeta: metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"}, ObjectMeta: metav1.ObjectMeta{GenerateName: "m-"},
				Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get"}}}})},
		{name: "bind-self-to-cluster-admin", method: "PATCH", path: "/apis/rbac.authorization.k8s.io/v1/namespaces/" + nsA + "/rolebindings/to-cluster-admin",
			contentType: "application/merge-patch+json",
			// A different subject per identity: an unchanged binding is a no-op
			// that (as in Kubernetes) needs no escalation check.
			body: func(t *testing.T) []byte {
				return jsonBody(map[string]any{"subjects": []map[string]string{{"kind": "User", "apiGroup": rbacv1.GroupName, "name": "mallory-" + current}}})(t)
			}},
	}
	cols := map[string]int{}
	for i, r := range reqs {
		cols[r.name] = i
	}

	// row builds the expected outcomes: def for every column, except the
	// listed name=outcome overrides.
	row := func(def string, except map[string]string) []string {
		out := make([]string, len(reqs))
		for i := range out {
			out[i] = def
		}
		for name, o := range except {
			i, ok := cols[name]
			if !ok {
				t.Fatalf("unknown column %q", name)
			}
			out[i] = o
		}
		return out
	}

	type identity struct {
		name string
		cfg  *restclient.Config
		want []string
	}
	ids := []identity{
		// system:masters: everything passes authn+authz.
		{"admin", h.Admin, row(allow, nil)},
		// Authenticated, no bindings: only system:basic-user etc., none of the columns.
		{"user-no-bindings", h.clientCertConfig(t, ca, "alice"), row(deny, nil)},
		// view in A: may list pods there, never read secrets (view excludes them).
		{"user-view-in-A", h.clientCertConfig(t, ca, "bob"), row(deny, map[string]string{"list-pods-own-ns": allow})},
		// admin in A: everything namespaced in A, exec included, a Role within
		// its rights — but not a Role granting */* (escalation) nor a binding to
		// cluster-admin (no bind verb, does not hold cluster-admin's rules).
		{"user-admin-in-A", h.clientCertConfig(t, ca, "carol"), row(deny, map[string]string{
			"list-pods-own-ns": allow, "get-secret-own-ns": allow, "create-secret-own-ns": allow, "pods-exec": allow,
			"create-role-within-own-rights": allow})},
		// SA app with edit in A (token via TokenRequest): A's secrets and exec,
		// no RBAC writes at all (edit has no roles/rolebindings).
		{"sa-token-edit-in-A", h.tokenConfig(appToken), row(deny, map[string]string{
			"list-pods-own-ns": allow, "get-secret-own-ns": allow, "create-secret-own-ns": allow, "pods-exec": allow})},
		// Token bound to a pod that has been deleted.
		{"sa-token-deleted-pod", h.tokenConfig(doomedToken), row(unath, nil)},
		// Real key, real SA, expired an hour ago.
		{"jwt-expired", h.tokenConfig(expiredToken), row(unath, nil)},
		// Signed by a key the hub does not know.
		{"jwt-forged", h.tokenConfig(forgedToken), row(unath, nil)},
		// Real key, audience of another cluster.
		{"jwt-wrong-audience", h.tokenConfig(wrongAudToken), row(unath, nil)},
		// alg=none, empty signature, otherwise valid claims.
		{"jwt-alg-none", h.tokenConfig(algNoneToken), row(unath, nil)},
		// alg switched to HS256 with the ES256 signature left in place.
		{"jwt-alg-hs256", h.tokenConfig(hsToken), row(unath, nil)},
		// Not a JWT, not a bootstrap token.
		{"garbage-token", h.tokenConfig("garbage"), row(unath, nil)},
		{"garbage-jwt-shape", h.tokenConfig("eyJhbGciOiJFUzI1NiJ9.e30.AAAA"), row(unath, nil)},
		// Bootstrap token: system:node-bootstrapper lets it create CSRs, nothing else.
		{"bootstrap-valid", h.tokenConfig(bootToken), row(deny, map[string]string{"create-csr": allow})},
		{"bootstrap-expired", h.tokenConfig(expiredBoot), row(unath, nil)},
		{"bootstrap-wrong-secret", h.tokenConfig(wrongSecretBoot), row(unath, nil)},
		// Node n1: lists its own pods (stricter than Kubernetes: only with
		// fieldSelector spec.nodeName=n1), reads the secret its pod mounts,
		// updates its own status, creates CSRs; no exec, no nodes/proxy, nothing
		// of other nodes.
		{"node-n1", h.clientCertConfig(t, ca, "system:node:n1", "system:nodes"), row(deny, map[string]string{
			"list-pods-on-n1": allow, "get-secret-own-ns": allow, "patch-n1-status": allow, "create-csr": allow})},
		// Node n2: no pod of it mounts s1; n1's pods are not its business.
		{"node-n2", h.clientCertConfig(t, ca, "system:node:n2", "system:nodes"), row(deny, map[string]string{
			"patch-n2-status": allow, "create-csr": allow})},
		// A node name without the system:nodes group is just a user.
		{"node-name-without-group", h.clientCertConfig(t, ca, "system:node:n1"), row(deny, nil)},
		// No credentials: anonymous is off.
		{"anonymous", h.anonymousConfig(), row(unath, nil)},
	}

	unexpectedAllows := 0
	for _, id := range ids {
		hc, err := restclient.HTTPClientFor(id.cfg)
		if err != nil {
			t.Fatal(err)
		}
		current = id.name
		t.Run(id.name, func(t *testing.T) {
			for i, r := range reqs {
				want := id.want[i]
				t.Run(r.name, func(t *testing.T) {
					var body []byte
					if r.body != nil {
						body = r.body(t)
					}
					code, msg := rawRequest(t, hc, h.Admin.Host, r.method, r.path, r.contentType, body)
					got := allow
					switch code {
					case http.StatusUnauthorized:
						got = unath
					case http.StatusForbidden:
						got = deny
					}
					if got != want {
						if got == allow {
							unexpectedAllows++
						}
						t.Errorf("%s %s %s: got %s (HTTP %d: %s), want %s", id.name, r.method, r.path, got, code, msg, want)
					}
				})
			}
		})
	}
	if unexpectedAllows > 0 {
		t.Errorf("%d unexpected allows", unexpectedAllows)
	}
}

// waitStatus polls a SelfSubjectReview as cfg until it returns code.
func waitStatus(ctx context.Context, h *testHub, cfg *restclient.Config, code int) error {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	var last error
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		last = err
		switch code {
		case 201:
			return err == nil, nil
		default:
			var se interface{ Status() metav1.Status }
			if err != nil && asStatus(err, &se) {
				return int(se.Status().Code) == code, nil
			}
			return false, nil
		}
	})
	if err != nil {
		return fmt.Errorf("%w (last: %v)", err, last)
	}
	return nil
}

func asStatus(err error, target *interface{ Status() metav1.Status }) bool {
	s, ok := err.(interface{ Status() metav1.Status })
	if ok {
		*target = s
	}
	return ok
}

func rawRequest(t *testing.T, hc *http.Client, host, method, path, contentType string, body []byte) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, host+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		if contentType == "" {
			contentType = "application/json"
		}
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return resp.StatusCode, strings.TrimSpace(string(b))
}

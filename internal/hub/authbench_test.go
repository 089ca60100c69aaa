package hub

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/group"
	"k8s.io/apiserver/pkg/authentication/request/bearertoken"
	"k8s.io/apiserver/pkg/authentication/request/union"
	x509request "k8s.io/apiserver/pkg/authentication/request/x509"
	tokenunion "k8s.io/apiserver/pkg/authentication/token/union"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	authzunion "k8s.io/apiserver/pkg/authorization/union"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	restclient "k8s.io/client-go/rest"

	"github.com/tether-dev/tether/internal/apiserver/authn"
	"github.com/tether-dev/tether/internal/apiserver/authz"
	"github.com/tether-dev/tether/internal/pki"
)

func mustRead(tb testing.TB, path string) []byte {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// BenchmarkAuthPerRequest measures what authentication + authorization cost
// per request, each as a fraction of a plain authenticated GET (x509 user
// with view, one ConfigMap, keep-alive HTTPS to an in-process hub) measured
// in the same run: metric "auth/get".
//
// The decision benchmarks use the hub's own pieces built the way the server
// builds them: x509 authenticator over the cluster CA, bearer tokens through
// the SA + bootstrap token union, and the authorizer chain system:masters →
// Node → RBAC, with 1000 RBAC bindings (500 cluster-wide, 500 namespaced).
func BenchmarkAuthPerRequest(b *testing.B) {
	th := startHubTB(b, nil)
	adminCfg, dir := th.Admin, th.Dir
	ctx := context.Background()
	ca, err := pki.LoadCA(mustRead(b, filepath.Join(dir, "pki", "ca.crt")), mustRead(b, filepath.Join(dir, "pki", "ca.key")))
	if err != nil {
		b.Fatal(err)
	}
	saKey, err := pki.ParseKey(mustRead(b, filepath.Join(dir, "pki", "sa.key")))
	if err != nil {
		b.Fatal(err)
	}

	// --- the plain GET, over the wire.
	admin, err := kubernetes.NewForConfig(adminCfg)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "bench-view"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
		Subjects: []rbacv1.Subject{{Kind: "User", APIGroup: rbacv1.GroupName, Name: "bench-user"}}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	if _, err := admin.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "bench"}, Data: map[string]string{"k": "v"}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	userCert, userKey, err := ca.Issue(pki.CertSpec{CommonName: "bench-user", Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		b.Fatal(err)
	}
	userCfg := restclient.AnonymousClientConfig(adminCfg)
	userCfg.CertData, userCfg.KeyData = userCert, userKey
	hc, err := restclient.HTTPClientFor(userCfg)
	if err != nil {
		b.Fatal(err)
	}
	url := adminCfg.Host + "/api/v1/namespaces/default/configmaps/bench"
	get := func() error {
		resp, err := hc.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET: HTTP %d", resp.StatusCode)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	// RBAC is informer-backed: wait until the binding is seen.
	deadline := time.Now().Add(30 * time.Second)
	for get() != nil {
		if time.Now().After(deadline) {
			b.Fatal("bench-user never allowed")
		}
		time.Sleep(20 * time.Millisecond) // polling interval, bounded by the deadline
	}
	// Baseline: mean of a fixed number of GETs after warm-up.
	getNs := func() float64 {
		const n = 300
		for range 30 {
			_ = get()
		}
		start := time.Now()
		for range n {
			if err := get(); err != nil {
				b.Fatal(err)
			}
		}
		return float64(time.Since(start).Nanoseconds()) / n
	}
	var baseline float64
	b.Run("get", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := get(); err != nil {
				b.Fatal(err)
			}
		}
		baseline = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	if baseline == 0 {
		baseline = getNs()
	}

	// --- the decision pieces.
	objs := []runtime.Object{
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "ns-20", Name: "app", UID: types.UID("sa-uid")}},
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "reader"}, Rules: []rbacv1.PolicyRule{{Verbs: []string{"get", "list", "watch"}, APIGroups: []string{""}, Resources: []string{"pods", "services", "configmaps"}}}},
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "writer"}, Rules: []rbacv1.PolicyRule{{Verbs: []string{"create", "update"}, APIGroups: []string{"apps"}, Resources: []string{"deployments"}}}},
	}
	for i := range 500 {
		subj := []rbacv1.Subject{{Kind: "User", APIGroup: rbacv1.GroupName, Name: fmt.Sprintf("user-%d", i)}, {Kind: "Group", APIGroup: rbacv1.GroupName, Name: fmt.Sprintf("group-%d", i)}}
		objs = append(objs, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("crb-%d", i)},
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "writer"}, Subjects: subj})
		ns := fmt.Sprintf("ns-%d", i%50)
		objs = append(objs, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("rb-%d", i)},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "reader"},
			Subjects: []rbacv1.Subject{subj[0], {Kind: "ServiceAccount", Namespace: ns, Name: "app"}}})
	}
	client := fake.NewClientset(objs...)
	factory := informers.NewSharedInformerFactory(client, 0)
	rbac := authz.NewRBAC(factory)
	node := authz.NewNode(factory)
	objects := authn.NewInformerObjects(factory, client)
	fctx, cancel := context.WithCancel(ctx)
	b.Cleanup(func() { cancel(); factory.Shutdown() })
	factory.Start(fctx.Done())
	for typ, ok := range factory.WaitForCacheSync(fctx.Done()) {
		if !ok {
			b.Fatalf("cache %v did not sync", typ)
		}
	}
	chain, err := authzunion.New(
		authzunion.NamedAuthorizer{AuthorizerName: "system:masters", Authorizer: authorizerfactory.NewPrivilegedGroups(user.SystemPrivilegedGroup)},
		authzunion.NamedAuthorizer{AuthorizerName: "Node", Authorizer: node},
		authzunion.NamedAuthorizer{AuthorizerName: "RBAC", Authorizer: rbac})
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	x509Authn := x509request.NewDynamic(func() (x509.VerifyOptions, bool) {
		return x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, true
	}, x509request.CommonNameUserConversion)
	sa, err := authn.NewSATokenAuthenticator([]string{Issuer}, []crypto.PublicKey{saKey.Public()}, []string{"https://kubernetes.default.svc"}, objects, nil)
	if err != nil {
		b.Fatal(err)
	}
	reqAuthn := group.NewAuthenticatedGroupAdder(union.New(x509Authn, bearertoken.New(tokenunion.New(sa, authn.NewBootstrapTokenAuthenticator(objects, nil)))))
	issuer, err := authn.NewIssuer(Issuer, saKey, nil)
	if err != nil {
		b.Fatal(err)
	}
	token, _, err := issuer.Issue(objs[0].(*corev1.ServiceAccount), []string{"https://kubernetes.default.svc"}, time.Hour, nil, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	certPEM, _, err := ca.Issue(pki.CertSpec{CommonName: "user-420", Organization: []string{"group-7"}, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		b.Fatal(err)
	}
	cert, err := pki.ParseCertPEM(certPEM)
	if err != nil {
		b.Fatal(err)
	}

	decide := func(b *testing.B, req *http.Request, attrs func(user.Info) authorizer.Attributes, wantUser string) {
		resp, ok, err := reqAuthn.AuthenticateRequest(req)
		if !ok || err != nil || resp.User.GetName() != wantUser {
			b.Fatalf("authn: ok=%v err=%v", ok, err)
		}
		if d, why, _ := chain.Authorize(req.Context(), attrs(resp.User)); d != authorizer.DecisionAllow {
			b.Fatalf("authz: %v %s", d, why)
		}
	}
	getCM := func(u user.Info) authorizer.Attributes {
		return authorizer.AttributesRecord{User: u, Verb: "get", Namespace: "ns-20", Resource: "configmaps", Name: "cm", APIVersion: "v1", ResourceRequest: true}
	}
	report := func(b *testing.B) {
		ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		b.ReportMetric(ns/baseline, "auth/get")
		b.ReportMetric(baseline, "get-ns")
	}
	b.Run("x509", func(b *testing.B) {
		req, _ := http.NewRequest("GET", url, nil)
		req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
		b.ReportAllocs()
		for b.Loop() {
			decide(b, req, getCM, "user-420")
		}
		report(b)
	})
	b.Run("sa-jwt", func(b *testing.B) {
		audCtx := authenticator.WithAudiences(ctx, authenticator.Audiences{"https://kubernetes.default.svc"})
		b.ReportAllocs()
		for b.Loop() {
			req, _ := http.NewRequestWithContext(audCtx, "GET", url, nil)
			req.Header.Set("Authorization", "Bearer "+token)
			decide(b, req, getCM, "system:serviceaccount:ns-20:app")
		}
		report(b)
	})
	b.Run("rbac-1000-bindings", func(b *testing.B) {
		var a authorizer.Attributes = getCM(&user.DefaultInfo{Name: "user-420", Groups: []string{"group-7", "system:authenticated"}})
		b.ReportAllocs()
		for b.Loop() {
			if d, _, _ := chain.Authorize(ctx, a); d != authorizer.DecisionAllow {
				b.Fatal("not allowed")
			}
		}
		report(b)
	})
}

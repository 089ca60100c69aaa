package authz

import (
	"context"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/authorization/authorizer"
)

func TestRBACTable(t *testing.T) {
	objs := []runtime.Object{
		cr("pod-reader", rule(vs("get", "list"), vs(""), "pods")),
		cr("star-verbs", rule(vs("*"), vs(""), "services")),
		cr("star-all", rule(vs("*"), vs("*"), "*")),
		cr("scale-any", rule(vs("update"), vs("apps"), "*/scale")),
		cr("pods-subs", rule(vs("get"), vs(""), "pods/*")),
		cr("pod-logs", rule(vs("get"), vs(""), "pods/log")),
		cr("one-cm", named(rule(vs("get", "update"), vs(""), "configmaps"), "cm1")),
		cr("secret-reader", rule(vs("get"), vs(""), "secrets")),
		cr("deploy-apps", rule(vs("get"), vs("apps"), "deployments")),
		cr("urls", urls(vs("get"), "/healthz", "/logs/*", "/apis*")),
		cr("url-star", urls(vs("get", "post"), "*")),
		role("ns1", "cm-writer", rule(vs("create"), vs(""), "configmaps")),
		crb("alice-pods", "pod-reader", userSubj("alice")),
		crb("devs-services", "star-verbs", groupSubj("devs")),
		crb("root", "star-all", userSubj("root")),
		crb("scaler", "scale-any", userSubj("scaler")),
		crb("subs", "pods-subs", userSubj("subs")),
		crb("logs", "pod-logs", userSubj("logs")),
		crb("cm1", "one-cm", userSubj("cm")),
		crb("deploy", "deploy-apps", userSubj("deployer")),
		crb("urls", "urls", userSubj("urls")),
		crb("urlstar", "url-star", userSubj("urlstar")),
		crb("sa", "pod-reader", saSubj("ns1", "sa1")),
		crb("dangling", "no-such-role", userSubj("dangling")),
		&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "badref"}, RoleRef: rbacv1.RoleRef{APIGroup: "example.com", Kind: "Thing", Name: "x"}, Subjects: []rbacv1.Subject{userSubj("badref")}},
		&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "badsubjects"}, RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "star-all"},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "x"}, {Kind: "Robot", Name: "badsubj"}, {Kind: "User", APIGroup: "example.com", Name: "badsubj"}}},
		rb("ns1", "secrets", "ClusterRole", "secret-reader", userSubj("carol")),
		rb("ns1", "cmw", "Role", "cm-writer", userSubj("carol"), rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: "builder"}),
	}
	fx := newFixture(t, objs...)
	alice, bob := usr("alice"), usr("bob")
	cases := []struct {
		name  string
		attrs authorizer.AttributesRecord
		allow bool
	}{
		{"user binding: listed verb", res(alice, "get", "", "pods", "", "ns1", "p"), true},
		{"user binding: list cluster-wide", res(alice, "list", "", "pods", "", "", ""), true},
		{"user binding: other verb", res(alice, "delete", "", "pods", "", "ns1", "p"), false},
		{"user binding: subresource not implied", res(alice, "get", "", "pods", "log", "ns1", "p"), false},
		{"user binding: other group", res(alice, "get", "apps", "pods", "", "ns1", "p"), false},
		{"other user", res(bob, "get", "", "pods", "", "ns1", "p"), false},
		{"group subject", res(usr("dave", "devs"), "delete", "", "services", "", "ns9", "s"), true},
		{"group subject: other resource", res(usr("dave", "devs"), "delete", "", "pods", "", "ns9", "s"), false},
		{"star all", res(usr("root"), "escalate", "rbac.authorization.k8s.io", "roles", "", "x", "y"), true},
		{"star all: subresource", res(usr("root"), "create", "", "pods", "exec", "x", "y"), true},
		{"star all: no non-resource", nonRes(usr("root"), "get", "/healthz"), false},
		{"*/scale", res(usr("scaler"), "update", "apps", "deployments", "scale", "n", "d"), true},
		{"*/scale not the resource", res(usr("scaler"), "update", "apps", "deployments", "", "n", "d"), false},
		{"*/scale not other subresource", res(usr("scaler"), "update", "apps", "deployments", "status", "n", "d"), false},
		{"pods/* any subresource", res(usr("subs"), "get", "", "pods", "log", "n", "p"), true},
		{"pods/* not pods", res(usr("subs"), "get", "", "pods", "", "n", "p"), false},
		{"pods/* not nodes/log", res(usr("subs"), "get", "", "nodes", "log", "", "n"), false},
		{"pods/log exact", res(usr("logs"), "get", "", "pods", "log", "n", "p"), true},
		{"pods/log not exec", res(usr("logs"), "get", "", "pods", "exec", "n", "p"), false},
		{"resourceNames match", res(usr("cm"), "update", "", "configmaps", "", "n", "cm1"), true},
		{"resourceNames other name", res(usr("cm"), "get", "", "configmaps", "", "n", "cm2"), false},
		{"resourceNames no name", res(usr("cm"), "get", "", "configmaps", "", "n", ""), false},
		{"apiGroup exact", res(usr("deployer"), "get", "apps", "deployments", "", "n", "d"), true},
		{"apiGroup other", res(usr("deployer"), "get", "extensions", "deployments", "", "n", "d"), false},
		{"url exact", nonRes(usr("urls"), "get", "/healthz"), true},
		{"url exact no prefix", nonRes(usr("urls"), "get", "/healthz/etcd"), false},
		{"url prefix star", nonRes(usr("urls"), "get", "/logs/kube.log"), true},
		{"url prefix star bare", nonRes(usr("urls"), "get", "/logs"), false},
		{"url prefix no slash", nonRes(usr("urls"), "get", "/apisx"), true},
		{"url verb", nonRes(usr("urls"), "post", "/healthz"), false},
		{"url star", nonRes(usr("urlstar"), "post", "/anything/at/all"), true},
		{"url rule not resources", res(usr("urlstar"), "get", "", "pods", "", "n", "p"), false},
		{"serviceaccount subject", res(usr("system:serviceaccount:ns1:sa1", "system:serviceaccounts"), "get", "", "pods", "", "x", "p"), true},
		{"serviceaccount other ns", res(usr("system:serviceaccount:ns2:sa1"), "get", "", "pods", "", "x", "p"), false},
		{"serviceaccount subject defaults to binding ns", res(usr("system:serviceaccount:ns1:builder"), "create", "", "configmaps", "", "ns1", ""), true},
		{"rolebinding to clusterrole: own ns", res(usr("carol"), "get", "", "secrets", "", "ns1", "s"), true},
		{"rolebinding to clusterrole: other ns", res(usr("carol"), "get", "", "secrets", "", "ns2", "s"), false},
		{"rolebinding to clusterrole: not cluster-wide", res(usr("carol"), "get", "", "secrets", "", "", "s"), false},
		{"rolebinding to role", res(usr("carol"), "create", "", "configmaps", "", "ns1", ""), true},
		{"rolebinding to role: other ns", res(usr("carol"), "create", "", "configmaps", "", "ns2", ""), false},
		{"dangling roleRef", res(usr("dangling"), "get", "", "pods", "", "n", "p"), false},
		{"bad roleRef", res(usr("badref"), "get", "", "pods", "", "n", "p"), false},
		{"bad subjects match nobody", res(usr("badsubj"), "get", "", "pods", "", "n", "p"), false},
		{"SA subject without namespace in a ClusterRoleBinding", res(usr("system:serviceaccount::x"), "get", "", "pods", "", "n", "p"), false},
		{"nil user", res(nil, "get", "", "pods", "", "n", "p"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, reason, err := fx.rbac.Authorize(context.Background(), tc.attrs)
			if d == authorizer.DecisionDeny {
				t.Fatalf("RBAC must never deny")
			}
			if got := d == authorizer.DecisionAllow; got != tc.allow {
				t.Fatalf("allowed=%v want %v (reason %q, err %v)", got, tc.allow, reason, err)
			}
			if tc.allow && !strings.Contains(reason, "Binding") {
				t.Fatalf("reason %q does not name the binding", reason)
			}
		})
	}
}

func TestRBACFollowsInformers(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	a := res(usr("erin"), "get", "", "pods", "", "n", "p")
	if d, _, _ := fx.rbac.Authorize(ctx, a); d == authorizer.DecisionAllow {
		t.Fatal("allowed before any binding")
	}
	if _, err := fx.client.RbacV1().ClusterRoles().Create(ctx, cr("r", rule(vs("get"), vs(""), "pods")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := fx.client.RbacV1().ClusterRoleBindings().Create(ctx, crb("b", "r", userSubj("erin")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "binding to take effect", func() bool {
		d, _, _ := fx.rbac.Authorize(ctx, a)
		return d == authorizer.DecisionAllow
	})
	if err := fx.client.RbacV1().ClusterRoleBindings().Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "binding removal to take effect", func() bool {
		d, _, _ := fx.rbac.Authorize(ctx, a)
		return d != authorizer.DecisionAllow
	})
}

func TestRulesFor(t *testing.T) {
	fx := newFixture(t,
		cr("pod-reader", rule(vs("get"), vs(""), "pods"), urls(vs("get"), "/healthz")),
		role("ns1", "cm", rule(vs("create"), vs(""), "configmaps")),
		crb("a", "pod-reader", userSubj("alice")),
		rb("ns1", "b", "Role", "cm", groupSubj("g")),
		rb("ns1", "c", "Role", "missing", userSubj("alice")),
	)
	resRules, nonResRules, incomplete, err := fx.rbac.RulesFor(context.Background(), usr("alice", "g"), "ns1")
	if !incomplete || err == nil {
		t.Fatalf("dangling role must make the answer incomplete: %v %v", incomplete, err)
	}
	if len(resRules) != 2 || len(nonResRules) != 1 {
		t.Fatalf("rules: %d resource, %d non-resource", len(resRules), len(nonResRules))
	}
	resRules, _, incomplete, err = fx.rbac.RulesFor(context.Background(), usr("alice", "g"), "ns2")
	if incomplete || err != nil || len(resRules) != 1 {
		t.Fatalf("ns2: %d rules, incomplete=%v err=%v", len(resRules), incomplete, err)
	}
	// The result is a copy: mutating it does not change the cache.
	resRules[0].GetVerbs()[0] = "delete"
	if d, _, _ := fx.rbac.Authorize(context.Background(), res(usr("alice"), "get", "", "pods", "", "", "")); d != authorizer.DecisionAllow {
		t.Fatal("RulesFor result aliases the informer cache")
	}
}

func TestBootstrapPolicy(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	if err := ReconcilePolicy(ctx, fx.client); err != nil {
		t.Fatal(err)
	}
	// Idempotent.
	if err := ReconcilePolicy(ctx, fx.client); err != nil {
		t.Fatal(err)
	}
	eventually(t, "policy in informers", func() bool {
		d, _, _ := fx.rbac.Authorize(ctx, nonRes(usr("x", "system:authenticated"), "get", "/api/v1"))
		return d == authorizer.DecisionAllow && len(fx.factory.Rbac().V1().ClusterRoleBindings().Informer().GetStore().List()) == len(BootstrapClusterRoleBindings())
	})
	anon := usr("system:anonymous", "system:unauthenticated")
	boot := usr("system:bootstrap:abcdef", "system:bootstrappers", "system:authenticated")
	kcm := usr("system:kube-controller-manager", "system:authenticated")
	sched := usr("system:kube-scheduler", "system:authenticated")
	plain := usr("plain", "system:authenticated")
	sa := usr("system:serviceaccount:default:default", "system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated")
	node := usr("system:node:n1", "system:nodes", "system:authenticated")
	admin := usr("admin", "system:masters", "system:authenticated")
	cases := []struct {
		name  string
		attrs authorizer.AttributesRecord
		allow bool
	}{
		{"anonymous healthz", nonRes(anon, "get", "/healthz"), true},
		{"anonymous version", nonRes(anon, "get", "/version"), true},
		{"anonymous no discovery", nonRes(anon, "get", "/api"), false},
		{"anonymous no pods", res(anon, "list", "", "pods", "", "", ""), false},
		{"authenticated discovery", nonRes(plain, "get", "/apis/apps/v1"), true},
		{"authenticated SSAR", res(plain, "create", "authorization.k8s.io", "selfsubjectaccessreviews", "", "", ""), true},
		{"authenticated whoami", res(plain, "create", "authentication.k8s.io", "selfsubjectreviews", "", "", ""), true},
		{"plain user no secrets", res(plain, "get", "", "secrets", "", "default", "s"), false},
		{"bootstrapper creates CSR", res(boot, "create", "certificates.k8s.io", "certificatesigningrequests", "", "", ""), true},
		{"bootstrapper nodeclient", res(boot, "create", "certificates.k8s.io", "certificatesigningrequests", "nodeclient", "", ""), true},
		{"bootstrapper no selfnodeclient", res(boot, "create", "certificates.k8s.io", "certificatesigningrequests", "selfnodeclient", "", ""), false},
		{"bootstrapper no approve", res(boot, "update", "certificates.k8s.io", "certificatesigningrequests", "approval", "", "c"), false},
		{"node selfnodeclient", res(node, "create", "certificates.k8s.io", "certificatesigningrequests", "selfnodeclient", "", ""), true},
		{"node: system:node has no subjects", res(node, "get", "", "secrets", "", "default", "s"), false},
		{"kcm approves", res(kcm, "update", "certificates.k8s.io", "certificatesigningrequests", "approval", "", "c"), true},
		{"kcm signer approve", res(kcm, "approve", "certificates.k8s.io", "signers", "", "", "kubernetes.io/kube-apiserver-client-kubelet"), true},
		{"kcm signer wildcard", res(kcm, "sign", "certificates.k8s.io", "signers", "", "", "kubernetes.io/*"), true},
		{"kcm other signer", res(kcm, "sign", "certificates.k8s.io", "signers", "", "", "example.com/x"), false},
		{"kcm deletes in namespaces", res(kcm, "deletecollection", "apps", "deployments", "", "ns", ""), true},
		{"kcm creates SA", res(kcm, "create", "", "serviceaccounts", "", "ns", ""), true},
		{"kcm no escalate", res(kcm, "escalate", "rbac.authorization.k8s.io", "clusterroles", "", "", "x"), false},
		{"scheduler binds", res(sched, "create", "", "pods", "binding", "ns", "p"), true},
		{"scheduler no secrets", res(sched, "get", "", "secrets", "", "ns", "s"), false},
		{"kubelet client proxies", res(usr("tether-apiserver-kubelet-client"), "create", "", "nodes", "proxy", "", "n1"), true},
		{"plain no nodes/proxy", res(plain, "get", "", "nodes", "proxy", "", "n1"), false},
		{"SA issuer discovery", nonRes(sa, "get", "/openid/v1/jwks"), true},
		{"plain no issuer discovery", nonRes(plain, "get", "/openid/v1/jwks"), false},
		{"konnectivity tokenreview", res(usr("system:konnectivity-server"), "create", "authentication.k8s.io", "tokenreviews", "", "", ""), true},
		{"masters via cluster-admin", res(admin, "delete", "", "nodes", "", "", "n1"), true},
		{"masters non-resource", nonRes(admin, "get", "/metrics"), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, reason, err := fx.rbac.Authorize(ctx, tc.attrs)
			if got := d == authorizer.DecisionAllow; got != tc.allow {
				t.Fatalf("allowed=%v want %v (%q, %v)", got, tc.allow, reason, err)
			}
		})
	}
	// view/edit/admin: admin ⊇ edit ⊇ view, view has no secrets.
	roles := map[string]rbacv1.ClusterRole{}
	for _, r := range BootstrapClusterRoles() {
		roles[r.Name] = r
	}
	if ok, missing := covers(roles["admin"].Rules, roles["edit"].Rules); !ok {
		t.Fatalf("admin does not cover edit: %v", missing)
	}
	if ok, missing := covers(roles["edit"].Rules, roles["view"].Rules); !ok {
		t.Fatalf("edit does not cover view: %v", missing)
	}
	if ok, _ := covers(roles["view"].Rules, []rbacv1.PolicyRule{rule(vs("get"), vs(""), "secrets")}); ok {
		t.Fatal("view grants secrets")
	}
	if roles["view"].Labels[aggregateToEdit] != "true" || roles["admin"].AggregationRule == nil {
		t.Fatal("aggregation labels/rules missing")
	}
}

func TestReconcileKeepsUserChanges(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	api := fx.client.RbacV1().ClusterRoles()
	// A default with autoupdate=true missing a rule and with a user rule;
	// a default the user opted out of.
	view := cr("view", rule(vs("get"), vs("example.com"), "widgets"))
	view.Annotations = map[string]string{autoUpdateAnnotation: "true"}
	edit := cr("edit", rule(vs("get"), vs(""), "pods"))
	edit.Annotations = map[string]string{autoUpdateAnnotation: "false"}
	for _, r := range []*rbacv1.ClusterRole{view, edit} {
		if _, err := api.Create(ctx, r, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	b := crb("system:discovery", "system:discovery", userSubj("someone"))
	b.Annotations = map[string]string{autoUpdateAnnotation: "true"}
	if _, err := fx.client.RbacV1().ClusterRoleBindings().Create(ctx, b, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := ReconcilePolicy(ctx, fx.client); err != nil {
		t.Fatal(err)
	}
	gotView, _ := api.Get(ctx, "view", metav1.GetOptions{})
	if ok, _ := covers(gotView.Rules, viewRules()); !ok {
		t.Fatal("missing rules not added to autoupdate role")
	}
	if ok, _ := covers(gotView.Rules, []rbacv1.PolicyRule{rule(vs("get"), vs("example.com"), "widgets")}); !ok {
		t.Fatal("user rule removed")
	}
	if gotView.AggregationRule == nil || gotView.Labels[aggregateToAdmin] != "true" {
		t.Fatal("aggregation rule/labels not added")
	}
	gotEdit, _ := api.Get(ctx, "edit", metav1.GetOptions{})
	if len(gotEdit.Rules) != 1 {
		t.Fatal("autoupdate=false role was changed")
	}
	gotB, _ := fx.client.RbacV1().ClusterRoleBindings().Get(ctx, "system:discovery", metav1.GetOptions{})
	if len(gotB.Subjects) != 2 {
		t.Fatalf("subjects: %v", gotB.Subjects)
	}
	if err := ReconcilePolicy(ctx, nil); err == nil {
		t.Fatal("nil client accepted")
	}
}

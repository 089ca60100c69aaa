package authz

import (
	"context"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
)

func rbacAttrs(obj, old runtime.Object, resource, ns, name string, u user.Info) admission.Attributes {
	op := admission.Create
	if old != nil {
		op = admission.Update
	}
	gvr := rbacv1.SchemeGroupVersion.WithResource(resource)
	return admission.NewAttributesRecord(obj, old, rbacv1.SchemeGroupVersion.WithKind("X"), ns, name, gvr, "", op, nil, false, u)
}

func TestEscalationCheck(t *testing.T) {
	fx := newFixture(t,
		cr("pod-reader", rule(vs("get", "list"), vs(""), "pods")),
		cr("role-writer", rule(vs("create", "update"), vs(rbacv1.GroupName), "roles", "rolebindings", "clusterroles", "clusterrolebindings")),
		cr("escalator", rule(vs("escalate"), vs(rbacv1.GroupName), "roles")),
		cr("admin-binder", named(rule(vs("bind"), vs(rbacv1.GroupName), "clusterroles"), "admin")),
		cr("admin", rule(vs("*"), vs("*"), "*")),
		cr("log-reader", rule(vs("get"), vs(""), "*/log")),
		role("ns1", "secret-reader", rule(vs("get"), vs(""), "secrets")),
		rb("ns1", "alice-pods", "ClusterRole", "pod-reader", userSubj("alice")),
		crb("alice-writes", "role-writer", userSubj("alice")),
		crb("alice-logs", "log-reader", userSubj("alice")),
		rb("ns2", "erin-escalate", "ClusterRole", "escalator", userSubj("erin")),
		crb("erin-writes", "role-writer", userSubj("erin")),
		rb("ns1", "bob-bind", "ClusterRole", "admin-binder", userSubj("bob")),
	)
	check := NewEscalationCheck(fx.rbac, fx.rbac)
	alice, erin, bob := usr("alice"), usr("erin"), usr("bob")
	master := usr("root", user.SystemPrivilegedGroup)
	newRole := func(ns string, rules ...rbacv1.PolicyRule) *rbacv1.Role { return role(ns, "new", rules...) }
	aggregating := cr("agg")
	aggregating.AggregationRule = &rbacv1.AggregationRule{ClusterRoleSelectors: []metav1.LabelSelector{{MatchLabels: map[string]string{"x": "y"}}}}
	oldBinding := rb("ns1", "b", "ClusterRole", "admin", userSubj("x"))
	gcOnly := oldBinding.DeepCopy()
	gcOnly.Finalizers = []string{"foregroundDeletion"}
	moreSubjects := oldBinding.DeepCopy()
	moreSubjects.Subjects = append(moreSubjects.Subjects, userSubj("y"))

	cases := []struct {
		name  string
		attrs admission.Attributes
		allow bool
	}{
		{"role within held rules", rbacAttrs(newRole("ns1", rule(vs("get"), vs(""), "pods")), nil, "roles", "ns1", "new", alice), true},
		{"role with fewer names", rbacAttrs(newRole("ns1", named(rule(vs("list"), vs(""), "pods"), "p1")), nil, "roles", "ns1", "new", alice), true},
		{"role with extra verb", rbacAttrs(newRole("ns1", rule(vs("delete"), vs(""), "pods")), nil, "roles", "ns1", "new", alice), false},
		{"role with * verb", rbacAttrs(newRole("ns1", rule(vs("*"), vs(""), "pods")), nil, "roles", "ns1", "new", alice), false},
		{"role in another namespace", rbacAttrs(newRole("ns2", rule(vs("get"), vs(""), "pods")), nil, "roles", "ns2", "new", alice), false},
		{"role with */sub held", rbacAttrs(newRole("ns2", rule(vs("get"), vs(""), "pods/log")), nil, "roles", "ns2", "new", alice), true},
		{"role with */sub not held sub", rbacAttrs(newRole("ns2", rule(vs("get"), vs(""), "pods/exec")), nil, "roles", "ns2", "new", alice), false},
		{"role with pods/* not held", rbacAttrs(newRole("ns2", rule(vs("get"), vs(""), "pods/*")), nil, "roles", "ns2", "new", alice), false},
		{"clusterrole beyond namespaced grant", rbacAttrs(cr("new", rule(vs("get"), vs(""), "pods")), nil, "clusterroles", "", "new", alice), false},
		{"escalate verb in ns2", rbacAttrs(newRole("ns2", rule(vs("*"), vs("*"), "*")), nil, "roles", "ns2", "new", erin), true},
		{"escalate verb not in ns1", rbacAttrs(newRole("ns1", rule(vs("get"), vs(""), "secrets")), nil, "roles", "ns1", "new", erin), false},
		{"aggregationRule needs cluster-admin", rbacAttrs(aggregating, nil, "clusterroles", "", "agg", alice), false},
		{"aggregationRule by master", rbacAttrs(aggregating, nil, "clusterroles", "", "agg", master), true},
		{"master any role", rbacAttrs(newRole("ns1", rule(vs("*"), vs("*"), "*")), nil, "roles", "ns1", "new", master), true},
		{"binding to covered clusterrole", rbacAttrs(rb("ns1", "b", "ClusterRole", "pod-reader", userSubj("x")), nil, "rolebindings", "ns1", "b", alice), true},
		{"binding to covered clusterrole, other ns", rbacAttrs(rb("ns2", "b", "ClusterRole", "pod-reader", userSubj("x")), nil, "rolebindings", "ns2", "b", alice), false},
		{"binding to admin", rbacAttrs(rb("ns1", "b", "ClusterRole", "admin", userSubj("x")), nil, "rolebindings", "ns1", "b", alice), false},
		{"binding to role not held", rbacAttrs(rb("ns1", "b", "Role", "secret-reader", userSubj("x")), nil, "rolebindings", "ns1", "b", alice), false},
		{"binding to missing role", rbacAttrs(rb("ns1", "b", "Role", "nope", userSubj("x")), nil, "rolebindings", "ns1", "b", alice), false},
		{"clusterrolebinding to admin", rbacAttrs(crb("b", "admin", userSubj("alice")), nil, "clusterrolebindings", "", "b", alice), false},
		{"bind verb on admin", rbacAttrs(rb("ns1", "b", "ClusterRole", "admin", userSubj("x")), nil, "rolebindings", "ns1", "b", bob), true},
		{"bind verb only that name", rbacAttrs(rb("ns1", "b", "ClusterRole", "pod-reader", userSubj("x")), nil, "rolebindings", "ns1", "b", bob), false},
		{"bind verb only that ns", rbacAttrs(rb("ns2", "b", "ClusterRole", "admin", userSubj("x")), nil, "rolebindings", "ns2", "b", bob), false},
		{"bind verb not cluster-wide", rbacAttrs(crb("b", "admin", userSubj("x")), nil, "clusterrolebindings", "", "b", bob), false},
		{"update only GC fields", rbacAttrs(gcOnly, oldBinding, "rolebindings", "ns1", "b", alice), true},
		{"update adds subject", rbacAttrs(moreSubjects, oldBinding, "rolebindings", "ns1", "b", alice), false},
		{"master binds anything", rbacAttrs(crb("b", "admin", userSubj("x")), nil, "clusterrolebindings", "", "b", master), true},
		{"not rbac", admission.NewAttributesRecord(nil, nil, rbacv1.SchemeGroupVersion.WithKind("Pod"), "ns1", "p",
			rbacv1.SchemeGroupVersion.WithResource("pods").GroupVersion().WithResource("pods"), "", admission.Create, nil, false, alice), true},
		{"nil object", rbacAttrs(nil, nil, "roles", "ns1", "x", alice), true},
		{"typed nil object", rbacAttrs((*rbacv1.Role)(nil), nil, "roles", "ns1", "x", alice), false},
		{"wrong object type", rbacAttrs(&rbacv1.RoleList{}, nil, "roles", "ns1", "x", alice), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := check.Validate(context.Background(), tc.attrs, nil)
			if (err == nil) != tc.allow {
				t.Fatalf("allowed=%v want %v: %v", err == nil, tc.allow, err)
			}
			if err != nil && !apierrors.IsForbidden(err) {
				t.Fatalf("want Forbidden, got %v", err)
			}
		})
	}
	if !check.Handles(admission.Create) || !check.Handles(admission.Update) || check.Handles(admission.Delete) {
		t.Fatal("Handles")
	}
	var _ authorizer.Authorizer = fx.rbac
}

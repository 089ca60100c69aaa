package authz

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/authorization/authorizer"
)

// BenchmarkRBACAuthorize1000Bindings: 1000 bindings (500 cluster-wide, 500
// in namespaces) for 1000 users and groups; the request is allowed by one
// of them. The decision walks only the requester's bindings.
func BenchmarkRBACAuthorize1000Bindings(b *testing.B) {
	objs := []runtime.Object{
		cr("reader", rule(vs("get", "list", "watch"), vs(""), "pods", "services", "configmaps")),
		cr("writer", rule(vs("create", "update"), vs("apps"), "deployments")),
	}
	for i := 0; i < 500; i++ {
		objs = append(objs, crb(fmt.Sprintf("crb-%d", i), "writer", userSubj(fmt.Sprintf("user-%d", i)), groupSubj(fmt.Sprintf("group-%d", i))))
		objs = append(objs, rb(fmt.Sprintf("ns-%d", i%50), fmt.Sprintf("rb-%d", i), "ClusterRole", "reader",
			userSubj(fmt.Sprintf("user-%d", i)), saSubj(fmt.Sprintf("ns-%d", i%50), "default")))
	}
	fx := newFixture(b, objs...)
	u := usr("user-420", "group-7", "group-9", "system:authenticated")
	allow := res(u, "get", "", "configmaps", "", "ns-20", "cm")
	deny := res(u, "delete", "", "secrets", "", "ns-20", "s")
	ctx := context.Background()
	if d, _, _ := fx.rbac.Authorize(ctx, allow); d != authorizer.DecisionAllow {
		b.Fatal("not allowed")
	}
	// Box the attributes once, as the server does per request.
	var allowA, denyA authorizer.Attributes = allow, deny
	b.Run("allow", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if d, _, _ := fx.rbac.Authorize(ctx, allowA); d != authorizer.DecisionAllow {
				b.Fatal("not allowed")
			}
		}
	})
	b.Run("noopinion", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if d, _, _ := fx.rbac.Authorize(ctx, denyA); d == authorizer.DecisionAllow {
				b.Fatal("allowed")
			}
		}
	})
}

// BenchmarkNodeAuthorize30kPods: 1000 nodes × 30 pods, each pod with a
// secret, a configmap and a service account.
func BenchmarkNodeAuthorize30kPods(b *testing.B) {
	n := newNodeGraph()
	for node := 0; node < 1000; node++ {
		for i := 0; i < 30; i++ {
			ns := fmt.Sprintf("ns-%d", (node*30+i)%100)
			name := fmt.Sprintf("pod-%d-%d", node, i)
			p := testPod(ns, name, fmt.Sprintf("node-%d", node), "sa-"+name, withSecretVolume("secret-"+name), func(p *corev1.Pod) {
				p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "cm", VolumeSource: corev1.VolumeSource{
					ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cm-" + name}}}})
			})
			n.setPod(p)
		}
	}
	u := usr("system:node:node-500", "system:nodes", "system:authenticated")
	ns := fmt.Sprintf("ns-%d", (500*30+7)%100)
	allow := res(u, "get", "", "secrets", "", ns, "secret-pod-500-7")
	other := res(u, "get", "", "secrets", "", ns, "secret-pod-501-7")
	status := res(u, "patch", "", "pods", "status", ns, "pod-500-7")
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		attrs authorizer.AttributesRecord
		allow bool
	}{{"secret-allow", allow, true}, {"secret-other-node", other, false}, {"pod-status", status, true}} {
		var attrs authorizer.Attributes = tc.attrs
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if d, _, _ := n.Authorize(ctx, attrs); (d == authorizer.DecisionAllow) != tc.allow {
					b.Fatal("wrong decision")
				}
			}
		})
	}
}

// BenchmarkCovers is the escalation check of the admin role against
// cluster-admin.
func BenchmarkCovers(b *testing.B) {
	var admin, root []rbacv1.PolicyRule
	for _, r := range BootstrapClusterRoles() {
		switch r.Name {
		case "admin":
			admin = r.Rules
		case "cluster-admin":
			root = r.Rules
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if ok, _ := covers(root, admin); !ok {
			b.Fatal("not covered")
		}
	}
}

package authz

import (
	"context"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/admission/initializer"
	"k8s.io/apiserver/pkg/authentication/user"
)

func admAttrs(obj, old runtime.Object, gvr schema.GroupVersionResource, sub, ns, name string, op admission.Operation, u user.Info) admission.Attributes {
	return admission.NewAttributesRecord(obj, old, schema.GroupVersionKind{}, ns, name, gvr, sub, op, nil, false, u)
}

func TestNodeRestriction(t *testing.T) {
	fx := newFixture(t, nodeFixturePods()...)
	plugin := NewNodeRestriction()
	if err := plugin.(admission.InitializationValidator).ValidateInitialization(); err == nil {
		t.Fatal("uninitialized plugin validated")
	}
	plugin.(initializer.WantsExternalKubeInformerFactory).SetExternalKubeInformerFactory(fx.factory)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fx.factory.Start(ctx.Done())
	fx.factory.WaitForCacheSync(ctx.Done())
	if err := plugin.(admission.InitializationValidator).ValidateInitialization(); err != nil {
		t.Fatal(err)
	}
	n1 := usr("system:node:n1", "system:nodes", "system:authenticated")
	alice := usr("alice")
	nodesR := corev1.SchemeGroupVersion.WithResource("nodes")
	podsR := corev1.SchemeGroupVersion.WithResource("pods")
	leasesR := coordinationv1.SchemeGroupVersion.WithResource("leases")
	saR := corev1.SchemeGroupVersion.WithResource("serviceaccounts")
	csrR := certificatesv1.SchemeGroupVersion.WithResource("certificatesigningrequests")

	node := func(name string, mutate ...func(*corev1.Node)) *corev1.Node {
		n := nodeObj(name)
		n.Labels = map[string]string{"kubernetes.io/hostname": name}
		for _, m := range mutate {
			m(n)
		}
		return n
	}
	label := func(k, v string) func(*corev1.Node) { return func(n *corev1.Node) { n.Labels[k] = v } }
	taint := func(n *corev1.Node) { n.Spec.Taints = []corev1.Taint{{Key: "k", Effect: corev1.TaintEffectNoSchedule}} }
	lease := func(ns, name string) *coordinationv1.Lease {
		return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	}
	mirror := func(mutate ...func(*corev1.Pod)) *corev1.Pod {
		p := testPod("ns1", "m", "n1", "", mutate...)
		p.Annotations = map[string]string{mirrorPodAnnotation: "x"}
		return p
	}
	tokenFor := func(pod string, uid string) *authenticationv1.TokenRequest {
		return &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod, UID: typesUID(uid)}}}
	}
	p1, p2 := testPod("ns1", "p1", "n1", "sa1"), testPod("ns1", "p2", "n2", "sa2")
	p1Status := p1.DeepCopy()
	p1Status.Status.Phase = corev1.PodRunning

	cases := []struct {
		name  string
		attrs admission.Attributes
		allow bool
	}{
		{"create own node", admAttrs(node("n1"), nil, nodesR, "", "", "n1", admission.Create, n1), true},
		{"create own node with taints", admAttrs(node("n1", taint), nil, nodesR, "", "", "n1", admission.Create, n1), true},
		{"create other node", admAttrs(node("n2"), nil, nodesR, "", "", "n2", admission.Create, n1), false},
		{"create own node, restricted label", admAttrs(node("n1", label("node-restriction.kubernetes.io/x", "y")), nil, nodesR, "", "", "n1", admission.Create, n1), false},
		{"create own node, kube label", admAttrs(node("n1", label("node-role.kubernetes.io/control-plane", "")), nil, nodesR, "", "", "n1", admission.Create, n1), false},
		{"create own node, kubelet labels", admAttrs(node("n1", label("kubernetes.io/os", "linux"), label("node.kubernetes.io/instance-type", "x"), label("example.com/x", "y")), nil, nodesR, "", "", "n1", admission.Create, n1), true},
		{"update own status", admAttrs(node("n1"), node("n1"), nodesR, "status", "", "n1", admission.Update, n1), true},
		{"update other status", admAttrs(node("n2"), node("n2"), nodesR, "status", "", "n2", admission.Update, n1), false},
		{"update own taints", admAttrs(node("n1", taint), node("n1"), nodesR, "", "", "n1", admission.Update, n1), false},
		{"keep own taints", admAttrs(node("n1", taint), node("n1", taint), nodesR, "", "", "n1", admission.Update, n1), true},
		{"add restricted label", admAttrs(node("n1", label("node-restriction.kubernetes.io/a", "b")), node("n1"), nodesR, "", "", "n1", admission.Update, n1), false},
		{"remove restricted label", admAttrs(node("n1"), node("n1", label("node-restriction.kubernetes.io/a", "b")), nodesR, "", "", "n1", admission.Update, n1), false},
		{"keep restricted label", admAttrs(node("n1", label("node-restriction.kubernetes.io/a", "b")), node("n1", label("node-restriction.kubernetes.io/a", "b")), nodesR, "", "", "n1", admission.Update, n1), true},
		{"change podCIDR", admAttrs(node("n1", func(n *corev1.Node) { n.Spec.PodCIDR = "10.0.0.0/24" }), node("n1"), nodesR, "", "", "n1", admission.Update, n1), false},
		{"delete own node", admAttrs(nil, node("n1"), nodesR, "", "", "n1", admission.Delete, n1), true},
		{"delete other node", admAttrs(nil, node("n2"), nodesR, "", "", "n2", admission.Delete, n1), false},
		{"admin changes taints", admAttrs(node("n1", taint), node("n1"), nodesR, "", "", "n1", admission.Update, alice), true},
		{"create own lease", admAttrs(lease("kube-node-lease", "n1"), nil, leasesR, "", "kube-node-lease", "n1", admission.Create, n1), true},
		{"create own lease, name only in object", admAttrs(lease("kube-node-lease", "n1"), nil, leasesR, "", "kube-node-lease", "", admission.Create, n1), true},
		{"create other lease", admAttrs(lease("kube-node-lease", "n2"), nil, leasesR, "", "kube-node-lease", "n2", admission.Create, n1), false},
		{"lease in other namespace", admAttrs(lease("kube-system", "n1"), nil, leasesR, "", "kube-system", "n1", admission.Create, n1), false},
		{"update own lease", admAttrs(lease("kube-node-lease", "n1"), lease("kube-node-lease", "n1"), leasesR, "", "kube-node-lease", "n1", admission.Update, n1), true},
		{"own pod status", admAttrs(p1Status, p1, podsR, "status", "ns1", "p1", admission.Update, n1), true},
		{"other node's pod status", admAttrs(p2, p2, podsR, "status", "ns1", "p2", admission.Update, n1), false},
		{"status moves pod", admAttrs(testPod("ns1", "p1", "n2", "sa1"), p1, podsR, "status", "ns1", "p1", admission.Update, n1), false},
		{"update own pod spec", admAttrs(p1Status, p1, podsR, "", "ns1", "p1", admission.Update, n1), false},
		{"create regular pod", admAttrs(testPod("ns1", "x", "n1", ""), nil, podsR, "", "ns1", "x", admission.Create, n1), false},
		{"create mirror pod", admAttrs(mirror(), nil, podsR, "", "ns1", "m", admission.Create, n1), true},
		{"mirror pod for other node", admAttrs(mirror(func(p *corev1.Pod) { p.Spec.NodeName = "n2" }), nil, podsR, "", "ns1", "m", admission.Create, n1), false},
		{"mirror pod with secret", admAttrs(mirror(withSecretVolume("s2")), nil, podsR, "", "ns1", "m", admission.Create, n1), false},
		{"mirror pod with SA", admAttrs(mirror(func(p *corev1.Pod) { p.Spec.ServiceAccountName = "sa2" }), nil, podsR, "", "ns1", "m", admission.Create, n1), false},
		{"delete own pod", admAttrs(nil, p1, podsR, "", "ns1", "p1", admission.Delete, n1), true},
		{"delete other pod", admAttrs(nil, p2, podsR, "", "ns1", "p2", admission.Delete, n1), false},
		{"delete other pod via lister", admAttrs(nil, nil, podsR, "", "ns1", "p2", admission.Delete, n1), false},
		{"evict own pod", admAttrs(&policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: "p1"}}, nil, podsR, "eviction", "ns1", "p1", admission.Create, n1), true},
		{"evict other pod", admAttrs(&policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: "p2"}}, nil, podsR, "eviction", "ns1", "p2", admission.Create, n1), false},
		{"pods/binding", admAttrs(nil, nil, podsR, "binding", "ns1", "p1", admission.Create, n1), false},
		{"token bound to own pod", admAttrs(tokenFor("p1", "uid-p1"), nil, saR, "token", "ns1", "sa1", admission.Create, n1), true},
		{"token bound to own pod, no uid", admAttrs(tokenFor("p1", ""), nil, saR, "token", "ns1", "sa1", admission.Create, n1), true},
		{"token with wrong uid", admAttrs(tokenFor("p1", "uid-other"), nil, saR, "token", "ns1", "sa1", admission.Create, n1), false},
		{"token for pod on other node", admAttrs(tokenFor("p2", "uid-p2"), nil, saR, "token", "ns1", "sa2", admission.Create, n1), false},
		{"token for SA the pod does not use", admAttrs(tokenFor("p1", "uid-p1"), nil, saR, "token", "ns1", "sa2", admission.Create, n1), false},
		{"unbound token", admAttrs(&authenticationv1.TokenRequest{}, nil, saR, "token", "ns1", "sa1", admission.Create, n1), false},
		{"token bound to secret", admAttrs(&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Secret", Name: "s1"}}}, nil, saR, "token", "ns1", "sa1", admission.Create, n1), false},
		{"token for missing pod", admAttrs(tokenFor("gone", ""), nil, saR, "token", "ns1", "sa1", admission.Create, n1), false},
		{"csr create", admAttrs(&certificatesv1.CertificateSigningRequest{}, nil, csrR, "", "", "", admission.Create, n1), true},
		{"typed nil node", admAttrs((*corev1.Node)(nil), nil, nodesR, "", "", "n1", admission.Create, n1), false},
		{"typed nil pod", admAttrs((*corev1.Pod)(nil), nil, podsR, "", "ns1", "x", admission.Create, n1), false},
		{"wrong type", admAttrs(&corev1.Secret{}, nil, nodesR, "", "", "n1", admission.Create, n1), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := plugin.Validate(context.Background(), tc.attrs, nil)
			if (err == nil) != tc.allow {
				t.Fatalf("allowed=%v want %v: %v", err == nil, tc.allow, err)
			}
			if err != nil && !apierrors.IsForbidden(err) {
				t.Fatalf("want Forbidden, got %v", err)
			}
		})
	}
	// Without pods, node evictions and tokens fail closed.
	bare := NewNodeRestriction()
	if err := bare.Validate(context.Background(), admAttrs(tokenFor("p1", ""), nil, saR, "token", "ns1", "sa1", admission.Create, n1), nil); err == nil {
		t.Fatal("token admitted without a pod lister")
	}
}

func typesUID(s string) types.UID { return types.UID(s) }

package authz

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/client-go/tools/cache"
)

func testPod(ns, name, node, sa string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name)},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: sa, Containers: []corev1.Container{{Name: "c", Image: "i"}}},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func withSecretVolume(name string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "v-" + name, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: name}}})
	}
}

func nodeObj(name string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func nodeFixturePods() []runtime.Object {
	p1 := testPod("ns1", "p1", "n1", "sa1", withSecretVolume("s1"), func(p *corev1.Pod) {
		p.Spec.Volumes = append(p.Spec.Volumes,
			corev1.Volume{Name: "claim", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "claim1"}}},
			corev1.Volume{Name: "proj", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{Secret: &corev1.SecretProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "s3"}}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "cm-proj"}}},
			}}}},
			corev1.Volume{Name: "eph", VolumeSource: corev1.VolumeSource{Ephemeral: &corev1.EphemeralVolumeSource{}}},
		)
		p.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "pull"}}
		p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cm1"}, Key: "k"}}},
			{Name: "Y", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s-env"}, Key: "k"}}},
			{Name: "Z", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}}
		p.Spec.Containers[0].EnvFrom = []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cm-from"}}},
			{Prefix: "P_", SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "s-from"}}}}
		p.Spec.InitContainers = []corev1.Container{{Name: "init", EnvFrom: []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "s-init"}}}}}}
	})
	p2 := testPod("ns1", "p2", "n2", "sa2", withSecretVolume("s2"))
	pending := testPod("ns1", "pending", "", "sa3", withSecretVolume("s-pending"))
	claim := func(name, volume string) *corev1.PersistentVolumeClaim {
		return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: name}, Spec: corev1.PersistentVolumeClaimSpec{VolumeName: volume}}
	}
	return []runtime.Object{nodeObj("n1"), nodeObj("n2"), p1, p2, pending, claim("claim1", "pv1"), claim("claim2", "pv2")}
}

func TestNodeAuthorizer(t *testing.T) {
	fx := newFixture(t, nodeFixturePods()...)
	n1 := usr("system:node:n1", "system:nodes", "system:authenticated")
	n2 := usr("system:node:n2", "system:nodes", "system:authenticated")
	selector := func(a authorizer.AttributesRecord, sel string) authorizer.AttributesRecord {
		s, err := fields.ParseSelector(sel)
		if err != nil {
			t.Fatal(err)
		}
		a.FieldSelectorRequirements = s.Requirements()
		return a
	}
	cases := []struct {
		name  string
		attrs authorizer.AttributesRecord
		allow bool
	}{
		{"secret its pod mounts", res(n1, "get", "", "secrets", "", "ns1", "s1"), true},
		{"secret single-item watch", res(n1, "watch", "", "secrets", "", "ns1", "s1"), true},
		{"secret of a pod on another node", res(n1, "get", "", "secrets", "", "ns1", "s2"), false},
		{"n2 reads its pod's secret", res(n2, "get", "", "secrets", "", "ns1", "s2"), true},
		{"n2 cannot read n1's secret", res(n2, "get", "", "secrets", "", "ns1", "s1"), false},
		{"same name other namespace", res(n1, "get", "", "secrets", "", "ns2", "s1"), false},
		{"secret of unscheduled pod", res(n1, "get", "", "secrets", "", "ns1", "s-pending"), false},
		{"list all secrets", res(n1, "list", "", "secrets", "", "ns1", ""), false},
		{"update a referenced secret", res(n1, "update", "", "secrets", "", "ns1", "s1"), false},
		{"projected secret", res(n1, "get", "", "secrets", "", "ns1", "s3"), true},
		{"projected configmap", res(n1, "get", "", "configmaps", "", "ns1", "cm-proj"), true},
		{"env configmap", res(n1, "get", "", "configmaps", "", "ns1", "cm1"), true},
		{"init envFrom secret", res(n1, "get", "", "secrets", "", "ns1", "s-init"), true},
		{"env secretKeyRef", res(n1, "get", "", "secrets", "", "ns1", "s-env"), true},
		{"envFrom configmap", res(n1, "get", "", "configmaps", "", "ns1", "cm-from"), true},
		{"envFrom secret", res(n1, "get", "", "secrets", "", "ns1", "s-from"), true},
		{"env secret of n1's pod for n2", res(n2, "get", "", "secrets", "", "ns1", "s-env"), false},
		{"unreferenced secret", res(n1, "get", "", "secrets", "", "ns1", "s-unused"), false},
		{"unreferenced configmap", res(n1, "get", "", "configmaps", "", "ns1", "cm-unused"), false},
		{"image pull secret", res(n1, "get", "", "secrets", "", "ns1", "pull"), true},
		{"pvc", res(n1, "get", "", "persistentvolumeclaims", "", "ns1", "claim1"), true},
		{"ephemeral pvc", res(n1, "get", "", "persistentvolumeclaims", "", "ns1", "p1-eph"), true},
		{"other pvc", res(n1, "get", "", "persistentvolumeclaims", "", "ns1", "claim2"), false},
		{"pv of its pod's claim", res(n1, "get", "", "persistentvolumes", "", "", "pv1"), true},
		{"pv of an unused claim", res(n1, "get", "", "persistentvolumes", "", "", "pv2"), false},
		{"pv of n1's claim for n2", res(n2, "get", "", "persistentvolumes", "", "", "pv1"), false},
		{"list pvs", res(n1, "list", "", "persistentvolumes", "", "", ""), false},
		{"token for its pod's SA", res(n1, "create", "", "serviceaccounts", "token", "ns1", "sa1"), true},
		{"token for another node's SA", res(n1, "create", "", "serviceaccounts", "token", "ns1", "sa2"), false},
		{"token for unscheduled pod's SA", res(n1, "create", "", "serviceaccounts", "token", "ns1", "sa3"), false},
		{"get SA", res(n1, "get", "", "serviceaccounts", "", "ns1", "sa1"), false},
		{"own node status", res(n1, "update", "", "nodes", "status", "", "n1"), true},
		{"own node patch", res(n1, "patch", "", "nodes", "", "", "n1"), true},
		{"own node get", res(n1, "get", "", "nodes", "", "", "n1"), true},
		{"other node status", res(n1, "update", "", "nodes", "status", "", "n2"), false},
		{"other node get", res(n1, "get", "", "nodes", "", "", "n2"), false},
		{"list all nodes", res(n1, "list", "", "nodes", "", "", ""), false},
		{"create node (name checked by admission)", res(n1, "create", "", "nodes", "", "", ""), true},
		{"node proxy", res(n1, "get", "", "nodes", "proxy", "", "n1"), false},
		{"own lease", res(n1, "update", "coordination.k8s.io", "leases", "", "kube-node-lease", "n1"), true},
		{"create lease", res(n1, "create", "coordination.k8s.io", "leases", "", "kube-node-lease", ""), true},
		{"other node's lease", res(n1, "update", "coordination.k8s.io", "leases", "", "kube-node-lease", "n2"), false},
		{"lease elsewhere", res(n1, "update", "coordination.k8s.io", "leases", "", "kube-system", "n1"), false},
		{"own pod get", res(n1, "get", "", "pods", "", "ns1", "p1"), true},
		{"other node's pod", res(n1, "get", "", "pods", "", "ns1", "p2"), false},
		{"own pod status", res(n1, "patch", "", "pods", "status", "ns1", "p1"), true},
		{"other pod status", res(n1, "patch", "", "pods", "status", "ns1", "p2"), false},
		{"own pod update spec", res(n1, "update", "", "pods", "", "ns1", "p1"), false},
		{"own pod exec", res(n1, "create", "", "pods", "exec", "ns1", "p1"), false},
		{"own pod eviction", res(n1, "create", "", "pods", "eviction", "ns1", "p1"), true},
		{"list pods on self", selector(res(n1, "list", "", "pods", "", "", ""), "spec.nodeName=n1"), true},
		{"watch pods on other", selector(res(n1, "watch", "", "pods", "", "", ""), "spec.nodeName=n2"), false},
		{"list pods unfiltered", res(n1, "list", "", "pods", "", "", ""), false},
		{"create pod (mirror pods, admission)", res(n1, "create", "", "pods", "", "ns1", ""), true},
		{"services", res(n1, "list", "", "services", "", "", ""), true},
		{"endpointslices", res(n1, "watch", "discovery.k8s.io", "endpointslices", "", "", ""), true},
		{"csr create", res(n1, "create", "certificates.k8s.io", "certificatesigningrequests", "", "", ""), true},
		{"csr approve", res(n1, "update", "certificates.k8s.io", "certificatesigningrequests", "approval", "", "c"), false},
		{"tokenreview", res(n1, "create", "authentication.k8s.io", "tokenreviews", "", "", ""), true},
		{"sar", res(n1, "create", "authorization.k8s.io", "subjectaccessreviews", "", "", ""), true},
		{"rbac", res(n1, "create", "rbac.authorization.k8s.io", "roles", "", "ns1", ""), false},
		{"non-resource", nonRes(n1, "get", "/metrics"), false},
		{"not a node: user", res(usr("alice"), "get", "", "secrets", "", "ns1", "s1"), false},
		{"node name without group", res(usr("system:node:n1"), "get", "", "secrets", "", "ns1", "s1"), false},
		{"empty node name", res(usr("system:node:", "system:nodes"), "get", "", "services", "", "", ""), false},
		{"nil user", res(nil, "get", "", "secrets", "", "ns1", "s1"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, reason, err := fx.node.Authorize(context.Background(), tc.attrs)
			if err != nil {
				t.Fatal(err)
			}
			if d == authorizer.DecisionDeny {
				t.Fatal("node authorizer never denies; it has no opinion")
			}
			if got := d == authorizer.DecisionAllow; got != tc.allow {
				t.Fatalf("allowed=%v want %v (%q)", got, tc.allow, reason)
			}
		})
	}
}

func TestNodeGraphFollowsPods(t *testing.T) {
	fx := newFixture(t, nodeFixturePods()...)
	ctx := context.Background()
	n1 := usr("system:node:n1", "system:nodes")
	n2 := usr("system:node:n2", "system:nodes")
	allowed := func(u interface{ GetName() string }, ns, secret string) bool {
		d, _, _ := fx.node.Authorize(ctx, res(usr(u.GetName(), "system:nodes"), "get", "", "secrets", "", ns, secret))
		return d == authorizer.DecisionAllow
	}
	pods := fx.client.CoreV1().Pods("ns1")
	// Scheduling the pending pod onto n2 grants its secret to n2 only.
	pending, err := pods.Get(ctx, "pending", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pending.Spec.NodeName = "n2"
	if _, err := pods.Update(ctx, pending, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "scheduled pod's secret readable by n2", func() bool { return allowed(n2, "ns1", "s-pending") })
	if allowed(n1, "ns1", "s-pending") {
		t.Fatal("n1 reads n2's secret")
	}
	// Two pods of n1 share a secret; deleting one keeps it, deleting both drops it.
	if _, err := pods.Create(ctx, testPod("ns1", "p1b", "n1", "sa1", withSecretVolume("s1")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "second pod indexed", func() bool {
		_, ok := fx.node.podOnNode("n1", "ns1", "p1b")
		return ok
	})
	if err := pods.Delete(ctx, "p1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "p1 removed", func() bool {
		d, _, _ := fx.node.Authorize(ctx, res(n1, "get", "", "secrets", "", "ns1", "s3"))
		return d != authorizer.DecisionAllow
	})
	if !allowed(n1, "ns1", "s1") {
		t.Fatal("shared secret dropped while another pod still uses it")
	}
	if err := pods.Delete(ctx, "p1b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "s1 revoked", func() bool { return !allowed(n1, "ns1", "s1") })
	fx.node.mu.RLock()
	defer fx.node.mu.RUnlock()
	for k, m := range fx.node.edges {
		if m["n1"] > 0 && k.kind != refServiceAccount && k.name != "" && k.namespace == "ns1" && k.kind == refSecret {
			t.Fatalf("stale edge %v", k)
		}
	}
}

func TestNodeGraphBadInput(t *testing.T) {
	n := newNodeGraph()
	n.setPod(nil)
	n.setPod((*corev1.Pod)(nil))
	n.setPod("not a pod")
	n.deletePod(nil)
	n.deletePod((*corev1.Pod)(nil))
	n.deletePod(struct{}{})
	if d, _, _ := n.Authorize(context.Background(), nil); d != authorizer.DecisionNoOpinion {
		t.Fatal("nil attributes")
	}
	// Moving a pod between nodes moves its edges.
	p := testPod("ns", "p", "a", "", withSecretVolume("s"))
	n.setPod(p)
	q := p.DeepCopy()
	q.Spec.NodeName = "b"
	n.setPod(q)
	if n.hasEdge("a", objKey{refSecret, "ns", "s"}) || !n.hasEdge("b", objKey{refSecret, "ns", "s"}) {
		t.Fatal("edges did not move with the pod")
	}
	if !n.hasEdge("b", objKey{refServiceAccount, "ns", "default"}) {
		t.Fatal("empty serviceAccountName is the default SA")
	}
	n.deletePod(cache.DeletedFinalStateUnknown{Key: "ns/p", Obj: q})
	if n.hasEdge("b", objKey{refSecret, "ns", "s"}) || len(n.pods) != 0 || len(n.edges) != 0 {
		t.Fatal("tombstone delete left edges")
	}
	// Claims: bind, rebind, delete by tombstone.
	n.setPVC(nil, false)
	n.setPVC((*corev1.PersistentVolumeClaim)(nil), true)
	n.setPod(testPod("ns", "q", "a", "", func(p *corev1.Pod) {
		p.Spec.Volumes = []corev1.Volume{{Name: "c", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "c"}}}}
	}))
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c"}, Spec: corev1.PersistentVolumeClaimSpec{VolumeName: "pv-a"}}
	n.setPVC(pvc, false)
	if !n.hasVolume("a", "pv-a") || n.hasVolume("b", "pv-a") {
		t.Fatal("pv edge")
	}
	rebound := pvc.DeepCopy()
	rebound.Spec.VolumeName = "pv-b"
	n.setPVC(rebound, false)
	if n.hasVolume("a", "pv-a") || !n.hasVolume("a", "pv-b") {
		t.Fatal("rebinding did not move the pv edge")
	}
	n.setPVC(cache.DeletedFinalStateUnknown{Obj: rebound}, false)
	if n.hasVolume("a", "pv-b") || len(n.pvClaims) != 0 || len(n.pvcVolume) != 0 {
		t.Fatal("deleted claim left an edge")
	}
	_ = fmt.Sprint(refKind(99))
}

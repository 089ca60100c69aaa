package authz

import (
	"context"
	"fmt"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

const (
	nodeUserPrefix = "system:node:"
	nodesGroup     = "system:nodes"
)

// nodeIdentity returns the node name of a system:node:<name> user in group
// system:nodes; ok is false for other users.
func nodeIdentity(u user.Info) (name string, ok bool) {
	if u == nil {
		return "", false
	}
	n := u.GetName()
	if !strings.HasPrefix(n, nodeUserPrefix) {
		return "", false
	}
	for _, g := range u.GetGroups() {
		if g == nodesGroup {
			return strings.TrimPrefix(n, nodeUserPrefix), true
		}
	}
	return "", false
}

type refKind uint8

const (
	refPod refKind = iota
	refSecret
	refConfigMap
	refPVC
	refServiceAccount
)

func (k refKind) String() string {
	switch k {
	case refPod:
		return "pod"
	case refSecret:
		return "secret"
	case refConfigMap:
		return "configmap"
	case refPVC:
		return "persistentvolumeclaim"
	case refServiceAccount:
		return "serviceaccount"
	}
	return "object"
}

// objKey names a namespaced object in the graph.
type objKey struct {
	kind      refKind
	namespace string
	name      string
}

type podEntry struct {
	node string
	uid  types.UID
	refs []objKey // includes the pod itself
}

// Node is the Node authorizer: identities system:node:<name> in group
// system:nodes get the system:node rules, narrowed to their own Node and
// Lease, to pods bound to them, and to the secrets, configmaps, PVCs and
// service-account tokens those pods reference. Other users: no opinion.
type Node struct {
	mu sync.RWMutex
	// pods by namespace/name.
	pods map[types.NamespacedName]*podEntry
	// edges: object → node name → number of that node's pods referencing it.
	edges map[objKey]map[string]int
	// pvcVolume: bound PVC → PersistentVolume name; pvClaims the reverse.
	pvcVolume map[objKey]string
	pvClaims  map[string]map[objKey]struct{}
	rules     []rbacv1.PolicyRule
}

var _ authorizer.Authorizer = (*Node)(nil)

// NewNode registers pod and PVC informers on f and keeps a graph index
// from each node to the objects its pods reference (and the volumes their
// claims are bound to); a decision is a few map lookups.
func NewNode(f informers.SharedInformerFactory) *Node {
	n := newNodeGraph()
	// The registration handles are not needed: the graph lives as long as f.
	_, _ = f.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { n.setPod(obj) },
		UpdateFunc: func(_, obj interface{}) { n.setPod(obj) },
		DeleteFunc: func(obj interface{}) { n.deletePod(obj) },
	})
	_, _ = f.Core().V1().PersistentVolumeClaims().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { n.setPVC(obj, false) },
		UpdateFunc: func(_, obj interface{}) { n.setPVC(obj, false) },
		DeleteFunc: func(obj interface{}) { n.setPVC(obj, true) },
	})
	return n
}

// setPVC records (or, deleted, forgets) which PersistentVolume a claim is
// bound to.
func (n *Node) setPVC(obj interface{}, deleted bool) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj, deleted = tomb.Obj, true
	}
	pvc, ok := obj.(*corev1.PersistentVolumeClaim)
	if !ok || pvc == nil {
		return
	}
	k := objKey{kind: refPVC, namespace: pvc.Namespace, name: pvc.Name}
	volume := pvc.Spec.VolumeName
	if deleted {
		volume = ""
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if old, ok := n.pvcVolume[k]; ok {
		if old == volume {
			return
		}
		delete(n.pvcVolume, k)
		if m := n.pvClaims[old]; m != nil {
			delete(m, k)
			if len(m) == 0 {
				delete(n.pvClaims, old)
			}
		}
	}
	if volume == "" {
		return
	}
	n.pvcVolume[k] = volume
	m := n.pvClaims[volume]
	if m == nil {
		m = map[objKey]struct{}{}
		n.pvClaims[volume] = m
	}
	m[k] = struct{}{}
}

// hasVolume reports whether a pod on node uses a claim bound to the volume.
func (n *Node) hasVolume(node, volume string) bool {
	n.mu.RLock()
	defer n.mu.RUnlock()
	for claim := range n.pvClaims[volume] {
		if n.edges[claim][node] > 0 {
			return true
		}
	}
	return false
}

func newNodeGraph() *Node {
	return &Node{
		pods:      map[types.NamespacedName]*podEntry{},
		edges:     map[objKey]map[string]int{},
		pvcVolume: map[objKey]string{},
		pvClaims:  map[string]map[objKey]struct{}{},
		rules:     nodeRules(),
	}
}

func (n *Node) setPod(obj interface{}) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod == nil {
		return
	}
	key := types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name}
	var entry *podEntry
	if pod.Spec.NodeName != "" {
		entry = &podEntry{node: pod.Spec.NodeName, uid: pod.UID, refs: podRefs(pod)}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if old := n.pods[key]; old != nil {
		if entry != nil && old.node == entry.node && old.uid == entry.uid && sameRefs(old.refs, entry.refs) {
			return
		}
		n.unlink(old)
		delete(n.pods, key)
	}
	if entry != nil {
		n.pods[key] = entry
		for _, r := range entry.refs {
			m := n.edges[r]
			if m == nil {
				m = map[string]int{}
				n.edges[r] = m
			}
			m[entry.node]++
		}
	}
}

func (n *Node) deletePod(obj interface{}) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod == nil {
		return
	}
	key := types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name}
	n.mu.Lock()
	defer n.mu.Unlock()
	if old := n.pods[key]; old != nil {
		n.unlink(old)
		delete(n.pods, key)
	}
}

// unlink removes a pod's edges; n.mu must be held.
func (n *Node) unlink(e *podEntry) {
	for _, r := range e.refs {
		m := n.edges[r]
		if m == nil {
			continue
		}
		if m[e.node]--; m[e.node] <= 0 {
			delete(m, e.node)
		}
		if len(m) == 0 {
			delete(n.edges, r)
		}
	}
}

func sameRefs(a, b []objKey) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// podRefs lists the objects a pod references (deduplicated), the pod first.
func podRefs(pod *corev1.Pod) []objKey {
	ns := pod.Namespace
	seen := map[objKey]struct{}{}
	refs := []objKey{}
	add := func(kind refKind, name string) {
		if name == "" {
			return
		}
		k := objKey{kind: kind, namespace: ns, name: name}
		if _, dup := seen[k]; dup {
			return
		}
		seen[k] = struct{}{}
		refs = append(refs, k)
	}
	add(refPod, pod.Name)
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	add(refServiceAccount, sa)
	for _, s := range pod.Spec.ImagePullSecrets {
		add(refSecret, s.Name)
	}
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		switch {
		case v.Secret != nil:
			add(refSecret, v.Secret.SecretName)
		case v.ConfigMap != nil:
			add(refConfigMap, v.ConfigMap.Name)
		case v.PersistentVolumeClaim != nil:
			add(refPVC, v.PersistentVolumeClaim.ClaimName)
		case v.Ephemeral != nil:
			add(refPVC, pod.Name+"-"+v.Name)
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				if src.Secret != nil {
					add(refSecret, src.Secret.Name)
				}
				if src.ConfigMap != nil {
					add(refConfigMap, src.ConfigMap.Name)
				}
			}
		case v.CSI != nil && v.CSI.NodePublishSecretRef != nil:
			add(refSecret, v.CSI.NodePublishSecretRef.Name)
		case v.AzureFile != nil:
			add(refSecret, v.AzureFile.SecretName)
		case v.CephFS != nil && v.CephFS.SecretRef != nil:
			add(refSecret, v.CephFS.SecretRef.Name)
		case v.RBD != nil && v.RBD.SecretRef != nil:
			add(refSecret, v.RBD.SecretRef.Name)
		case v.ISCSI != nil && v.ISCSI.SecretRef != nil:
			add(refSecret, v.ISCSI.SecretRef.Name)
		case v.FlexVolume != nil && v.FlexVolume.SecretRef != nil:
			add(refSecret, v.FlexVolume.SecretRef.Name)
		}
	}
	visit := func(envFrom []corev1.EnvFromSource, env []corev1.EnvVar) {
		for _, ef := range envFrom {
			if ef.SecretRef != nil {
				add(refSecret, ef.SecretRef.Name)
			}
			if ef.ConfigMapRef != nil {
				add(refConfigMap, ef.ConfigMapRef.Name)
			}
		}
		for _, e := range env {
			if e.ValueFrom == nil {
				continue
			}
			if e.ValueFrom.SecretKeyRef != nil {
				add(refSecret, e.ValueFrom.SecretKeyRef.Name)
			}
			if e.ValueFrom.ConfigMapKeyRef != nil {
				add(refConfigMap, e.ValueFrom.ConfigMapKeyRef.Name)
			}
		}
	}
	for i := range pod.Spec.InitContainers {
		visit(pod.Spec.InitContainers[i].EnvFrom, pod.Spec.InitContainers[i].Env)
	}
	for i := range pod.Spec.Containers {
		visit(pod.Spec.Containers[i].EnvFrom, pod.Spec.Containers[i].Env)
	}
	for i := range pod.Spec.EphemeralContainers {
		visit(pod.Spec.EphemeralContainers[i].EnvFrom, pod.Spec.EphemeralContainers[i].Env)
	}
	return refs
}

// hasEdge reports whether a pod on node references the object.
func (n *Node) hasEdge(node string, k objKey) bool {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.edges[k][node] > 0
}

// podOnNode returns whether the pod is bound to node, and its UID.
func (n *Node) podOnNode(node, namespace, name string) (types.UID, bool) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	e := n.pods[types.NamespacedName{Namespace: namespace, Name: name}]
	if e == nil || e.node != node {
		return "", false
	}
	return e.uid, true
}

// Authorize decides for node identities only; everything else gets no
// opinion. Requests outside a node's graph get no opinion too (so an
// explicit RBAC binding may still allow them), with a reason that says why.
func (n *Node) Authorize(ctx context.Context, a authorizer.Attributes) (authorizer.Decision, string, error) {
	if a == nil {
		return authorizer.DecisionNoOpinion, "", nil
	}
	node, ok := nodeIdentity(a.GetUser())
	if !ok {
		return authorizer.DecisionNoOpinion, "", nil
	}
	if node == "" {
		return authorizer.DecisionNoOpinion, "node authorizer: unknown node", nil
	}
	if a.IsResourceRequest() {
		if reason := n.narrow(node, a); reason != "" {
			return authorizer.DecisionNoOpinion, "node authorizer: " + reason, nil
		}
	}
	for i := range n.rules {
		if ruleAllows(a, &n.rules[i]) {
			return authorizer.DecisionAllow, "", nil
		}
	}
	return authorizer.DecisionNoOpinion, fmt.Sprintf("node authorizer: %q is not granted to nodes", a.GetVerb()), nil
}

// ConditionsAwareAuthorize is Authorize; the Node authorizer has no conditions.
func (n *Node) ConditionsAwareAuthorize(ctx context.Context, a authorizer.Attributes) authorizer.ConditionsAwareDecision {
	return authorizer.ConditionsAwareDecisionFromParts(n.Authorize(ctx, a))
}

// EvaluateConditions fails closed: the Node authorizer does not support conditions.
func (n *Node) EvaluateConditions(context.Context, authorizer.ConditionsAwareDecision, authorizer.ConditionsData) (authorizer.Decision, string, error) {
	return authorizer.DecisionDeny, "", authorizer.ErrorConditionEvaluationNotSupported
}

// narrow returns why a resource request is outside the node's graph, or ""
// when the node rules may decide.
func (n *Node) narrow(node string, a authorizer.Attributes) string {
	verb, ns, name, sub := a.GetVerb(), a.GetNamespace(), a.GetName(), a.GetSubresource()
	switch a.GetAPIGroup() {
	case groupCore:
		switch a.GetResource() {
		case "secrets":
			return n.readRef(node, verb, sub, objKey{refSecret, ns, name})
		case "configmaps":
			return n.readRef(node, verb, sub, objKey{refConfigMap, ns, name})
		case "persistentvolumeclaims":
			return n.readRef(node, verb, sub, objKey{refPVC, ns, name})
		case "persistentvolumes":
			if sub != "" || verb != "get" || name == "" {
				return "can only get individual persistentvolumes"
			}
			if !n.hasVolume(node, name) {
				return fmt.Sprintf("no relationship found between node %q and persistentvolume %q", node, name)
			}
			return ""
		case "serviceaccounts":
			if sub != "token" || verb != "create" || name == "" {
				return "can only create tokens for individual service accounts"
			}
			if !n.hasEdge(node, objKey{refServiceAccount, ns, name}) {
				return fmt.Sprintf("no pod on node %q uses service account %s/%s", node, ns, name)
			}
			return ""
		case "pods":
			return n.narrowPod(node, a)
		case "nodes":
			if sub != "" && sub != "status" {
				return "nodes may not use the " + sub + " subresource"
			}
			if name == "" && verb == "create" {
				return "" // NodeRestriction checks the name of the created Node
			}
			if name != node {
				return fmt.Sprintf("node %q may only access its own Node object", node)
			}
			return ""
		}
	case groupCoord:
		if a.GetResource() != "leases" || sub != "" {
			return ""
		}
		if ns != nodeLeaseNamespace {
			return "nodes may only access leases in " + nodeLeaseNamespace
		}
		return ownName(node, verb, name, "Lease")
	case groupStorage:
		if a.GetResource() != "csinodes" || sub != "" {
			return ""
		}
		return ownName(node, verb, name, "CSINode")
	}
	return ""
}

func ownName(node, verb, name, kind string) string {
	if name == "" && verb == "create" {
		return "" // NodeRestriction checks the name of the created object
	}
	if name != node {
		return fmt.Sprintf("node %q may only access its own %s", node, kind)
	}
	return ""
}

// readRef allows reading individual objects (get, or list/watch of one name
// via a metadata.name field selector) referenced by a pod on the node.
func (n *Node) readRef(node, verb, sub string, k objKey) string {
	if sub != "" {
		return "subresources of " + k.kind.String() + "s are not granted to nodes"
	}
	if (verb != "get" && verb != "list" && verb != "watch") || k.name == "" {
		return "can only read individual " + k.kind.String() + "s"
	}
	if !n.hasEdge(node, k) {
		return fmt.Sprintf("no relationship found between node %q and %s %s/%s", node, k.kind, k.namespace, k.name)
	}
	return ""
}

func (n *Node) narrowPod(node string, a authorizer.Attributes) string {
	verb, ns, name := a.GetVerb(), a.GetNamespace(), a.GetName()
	switch a.GetSubresource() {
	case "":
		switch verb {
		case "create":
			return "" // NodeRestriction allows only mirror pods bound to the node
		case "list", "watch":
			if name != "" {
				break
			}
			if !selectsNode(a, node) {
				return "can only list/watch pods with fieldSelector spec.nodeName=" + node
			}
			return ""
		}
	case "status":
	case "eviction":
		if verb != "create" {
			return "can only create evictions"
		}
	default:
		return "pods/" + a.GetSubresource() + " is not granted to nodes"
	}
	if name == "" {
		return "can only access individual pods"
	}
	if _, ok := n.podOnNode(node, ns, name); !ok {
		return fmt.Sprintf("no relationship found between node %q and pod %s/%s", node, ns, name)
	}
	return ""
}

// selectsNode reports whether the request's field selector pins
// spec.nodeName to node.
func selectsNode(a authorizer.Attributes, node string) bool {
	reqs, err := a.GetFieldSelector()
	if err != nil {
		return false
	}
	for _, r := range reqs {
		if r.Field == "spec.nodeName" && (r.Operator == selection.Equals || r.Operator == selection.DoubleEquals) && r.Value == node {
			return true
		}
	}
	return false
}

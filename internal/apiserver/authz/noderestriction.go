package authz

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
)

const (
	mirrorPodAnnotation   = "kubernetes.io/config.mirror"
	nodeRestrictionPrefix = "node-restriction.kubernetes.io/"
	kubernetesLabelDomain = "kubernetes.io"
	k8sLabelDomain        = "k8s.io"
	kubeletLabelNamespace = "kubelet.kubernetes.io"
	nodeLabelNamespace    = "node.kubernetes.io"
)

// nodeRestriction limits what node identities may write: their own Node
// (not its taints, podCIDR, configSource or restricted labels), their own
// Lease and CSINode, status of pods bound to them, mirror pods, evictions
// and service-account tokens bound to pods on them.
type nodeRestriction struct {
	*admission.Handler
	pods corelisters.PodLister
}

// NewNodeRestriction returns the NodeRestriction admission check. It reads
// pods (for evictions and token requests) through an informer factory given
// by SetExternalKubeInformerFactory, as Kubernetes admission initializers do;
// without one, those requests from nodes are refused.
func NewNodeRestriction() admission.ValidationInterface {
	return &nodeRestriction{Handler: admission.NewHandler(admission.Create, admission.Update, admission.Delete)}
}

// SetExternalKubeInformerFactory registers a pod informer on f.
func (p *nodeRestriction) SetExternalKubeInformerFactory(f informers.SharedInformerFactory) {
	p.pods = f.Core().V1().Pods().Lister()
	p.SetReadyFunc(f.Core().V1().Pods().Informer().HasSynced)
}

// ValidateInitialization reports a missing informer factory.
func (p *nodeRestriction) ValidateInitialization() error {
	if p.pods == nil {
		return errors.New("authz: NodeRestriction needs an informer factory")
	}
	return nil
}

func (p *nodeRestriction) Validate(ctx context.Context, a admission.Attributes, _ admission.ObjectInterfaces) error {
	if a == nil {
		return nil
	}
	node, ok := nodeIdentity(a.GetUserInfo())
	if !ok {
		return nil
	}
	if node == "" {
		return admission.NewForbidden(a, errors.New("could not determine node from user"))
	}
	var err error
	gr := a.GetResource().GroupResource()
	switch {
	case gr.Group == "" && gr.Resource == "pods":
		err = p.admitPod(node, a)
	case gr.Group == "" && gr.Resource == "nodes":
		err = admitNode(node, a)
	case gr.Group == "" && gr.Resource == "serviceaccounts" && a.GetSubresource() == "token":
		err = p.admitToken(node, a)
	case gr.Group == "coordination.k8s.io" && gr.Resource == "leases":
		err = admitLease(node, a)
	case gr.Group == "storage.k8s.io" && gr.Resource == "csinodes":
		err = admitOwnNamed(node, a, "CSINode")
	}
	if err != nil {
		return admission.NewForbidden(a, err)
	}
	return nil
}

func objectName(a admission.Attributes) string {
	if n := a.GetName(); n != "" {
		return n
	}
	obj := a.GetObject()
	if obj == nil {
		return ""
	}
	if v := reflect.ValueOf(obj); v.Kind() == reflect.Pointer && v.IsNil() {
		return ""
	}
	if m, ok := obj.(interface{ GetName() string }); ok {
		return m.GetName()
	}
	return ""
}

func (p *nodeRestriction) admitPod(node string, a admission.Attributes) error {
	switch a.GetSubresource() {
	case "":
		switch a.GetOperation() {
		case admission.Create:
			pod, ok := a.GetObject().(*corev1.Pod)
			if !ok || pod == nil {
				return fmt.Errorf("unexpected object %T", a.GetObject())
			}
			return admitMirrorPod(node, pod)
		case admission.Delete:
			pod, err := p.existingPod(a)
			if err != nil {
				return err
			}
			if pod.Spec.NodeName != node {
				return fmt.Errorf("node %q can only delete pods bound to itself", node)
			}
			return nil
		}
		return fmt.Errorf("node %q can only create mirror pods and delete its own pods", node)
	case "status":
		if a.GetOperation() != admission.Update {
			return fmt.Errorf("unexpected operation %s on pods/status", a.GetOperation())
		}
		old, ok := a.GetOldObject().(*corev1.Pod)
		if !ok || old == nil {
			return fmt.Errorf("unexpected old object %T", a.GetOldObject())
		}
		if old.Spec.NodeName != node {
			return fmt.Errorf("node %q can only update the status of pods bound to itself", node)
		}
		if pod, ok := a.GetObject().(*corev1.Pod); ok && pod != nil && pod.Spec.NodeName != old.Spec.NodeName {
			return errors.New("node may not change spec.nodeName")
		}
		return nil
	case "eviction":
		if a.GetOperation() != admission.Create {
			return fmt.Errorf("unexpected operation %s on pods/eviction", a.GetOperation())
		}
		name := a.GetName()
		if ev, ok := a.GetObject().(*policyv1.Eviction); ok && ev != nil && name == "" {
			name = ev.Name
		}
		pod, err := p.getPod(a.GetNamespace(), name)
		if apierrors.IsNotFound(err) {
			return nil // nothing to evict; the eviction fails on its own
		}
		if err != nil {
			return err
		}
		if pod.Spec.NodeName != node {
			return fmt.Errorf("node %q can only evict pods bound to itself", node)
		}
		return nil
	}
	return fmt.Errorf("node %q may not use pods/%s", node, a.GetSubresource())
}

// admitMirrorPod: a node may create only mirror pods of itself, owned (if
// at all) by its Node, referencing no secrets, configmaps, PVCs or service
// accounts.
func admitMirrorPod(node string, pod *corev1.Pod) error {
	if _, ok := pod.Annotations[mirrorPodAnnotation]; !ok {
		return fmt.Errorf("node %q can only create mirror pods", node)
	}
	if pod.Spec.NodeName != node {
		return fmt.Errorf("node %q can only create pods with spec.nodeName set to itself", node)
	}
	for _, o := range pod.OwnerReferences {
		if o.APIVersion != "v1" || o.Kind != "Node" || o.Name != node {
			return fmt.Errorf("node %q can only create pods with an owner reference to itself", node)
		}
	}
	if pod.Spec.ServiceAccountName != "" {
		return errors.New("mirror pods may not reference service accounts")
	}
	for _, r := range podRefs(pod) {
		switch r.kind {
		case refSecret, refConfigMap, refPVC:
			return fmt.Errorf("mirror pods may not reference %ss", r.kind)
		}
	}
	return nil
}

func (p *nodeRestriction) getPod(namespace, name string) (*corev1.Pod, error) {
	if p.pods == nil {
		return nil, errors.New("NodeRestriction has no pod informer")
	}
	if !p.WaitForReady() {
		return nil, errors.New("NodeRestriction: pod informer not yet synced")
	}
	pod, err := p.pods.Pods(namespace).Get(name)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", namespace, name, err)
	}
	return pod, nil
}

func (p *nodeRestriction) existingPod(a admission.Attributes) (*corev1.Pod, error) {
	if pod, ok := a.GetOldObject().(*corev1.Pod); ok && pod != nil {
		return pod, nil
	}
	return p.getPod(a.GetNamespace(), a.GetName())
}

func (p *nodeRestriction) admitToken(node string, a admission.Attributes) error {
	if a.GetOperation() != admission.Create {
		return nil
	}
	tr, ok := a.GetObject().(*authenticationv1.TokenRequest)
	if !ok || tr == nil {
		return fmt.Errorf("unexpected object %T", a.GetObject())
	}
	ref := tr.Spec.BoundObjectRef
	if ref == nil || ref.Kind != "Pod" || ref.Name == "" {
		return fmt.Errorf("node %q can only create tokens bound to pods", node)
	}
	if ref.APIVersion != "" && ref.APIVersion != "v1" {
		return fmt.Errorf("node %q can only create tokens bound to v1 pods", node)
	}
	pod, err := p.getPod(a.GetNamespace(), ref.Name)
	if err != nil {
		return err
	}
	if pod.Spec.NodeName != node {
		return fmt.Errorf("node %q can only create tokens for pods bound to itself", node)
	}
	if ref.UID != "" && ref.UID != pod.UID {
		return fmt.Errorf("the UID in the bound object reference (%s) does not match pod %s/%s (%s)", ref.UID, pod.Namespace, pod.Name, pod.UID)
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	if sa != a.GetName() {
		return fmt.Errorf("pod %s/%s does not use service account %q", pod.Namespace, pod.Name, a.GetName())
	}
	return nil
}

func admitNode(node string, a admission.Attributes) error {
	name := objectName(a)
	if name != node {
		return fmt.Errorf("node %q may only modify its own Node object", node)
	}
	sub := a.GetSubresource()
	if sub != "" && sub != "status" {
		return fmt.Errorf("node %q may not use nodes/%s", node, sub)
	}
	switch a.GetOperation() {
	case admission.Create:
		n, ok := a.GetObject().(*corev1.Node)
		if !ok || n == nil {
			return fmt.Errorf("unexpected object %T", a.GetObject())
		}
		if n.Spec.ConfigSource != nil {
			return errors.New("node may not create itself with a configSource")
		}
		if len(n.OwnerReferences) > 0 {
			return errors.New("node may not set owner references on itself")
		}
		if bad := forbiddenLabels(n.Labels, nil); len(bad) > 0 {
			return fmt.Errorf("node %q may not set labels: %s", node, strings.Join(bad, ", "))
		}
	case admission.Update:
		n, ok := a.GetObject().(*corev1.Node)
		if !ok || n == nil {
			return fmt.Errorf("unexpected object %T", a.GetObject())
		}
		old, ok := a.GetOldObject().(*corev1.Node)
		if !ok || old == nil {
			return fmt.Errorf("unexpected old object %T", a.GetOldObject())
		}
		if n.Spec.PodCIDR != old.Spec.PodCIDR || !equality.Semantic.DeepEqual(n.Spec.PodCIDRs, old.Spec.PodCIDRs) {
			return errors.New("node may not change spec.podCIDR(s)")
		}
		if !equality.Semantic.DeepEqual(n.Spec.ConfigSource, old.Spec.ConfigSource) && n.Spec.ConfigSource != nil {
			return errors.New("node may not set spec.configSource")
		}
		if !equality.Semantic.DeepEqual(n.Spec.Taints, old.Spec.Taints) {
			return errors.New("node may not modify its taints")
		}
		if !equality.Semantic.DeepEqual(n.OwnerReferences, old.OwnerReferences) {
			return errors.New("node may not modify owner references on itself")
		}
		if bad := forbiddenLabels(n.Labels, old.Labels); len(bad) > 0 {
			return fmt.Errorf("node %q may not modify labels: %s", node, strings.Join(bad, ", "))
		}
	}
	return nil
}

// forbiddenLabels lists labels added, changed or removed (relative to old)
// that a node may not set: the node-restriction.kubernetes.io/ prefix and
// kubernetes.io / k8s.io labels outside the kubelet's own set.
func forbiddenLabels(labels, old map[string]string) []string {
	var bad []string
	check := func(k string) {
		v, inNew := labels[k]
		ov, inOld := old[k]
		if inNew == inOld && v == ov {
			return
		}
		if !nodeMaySetLabel(k) {
			bad = append(bad, k)
		}
	}
	for k := range labels {
		check(k)
	}
	for k := range old {
		if _, ok := labels[k]; !ok {
			check(k)
		}
	}
	return bad
}

func nodeMaySetLabel(key string) bool {
	prefix, _, hasPrefix := strings.Cut(key, "/")
	if !hasPrefix {
		return true
	}
	if strings.HasPrefix(key, nodeRestrictionPrefix) {
		return false
	}
	switch key {
	case "kubernetes.io/hostname", "kubernetes.io/arch", "kubernetes.io/os",
		"beta.kubernetes.io/arch", "beta.kubernetes.io/os", "beta.kubernetes.io/instance-type",
		"node.kubernetes.io/instance-type", "failure-domain.beta.kubernetes.io/region", "failure-domain.beta.kubernetes.io/zone",
		"topology.kubernetes.io/region", "topology.kubernetes.io/zone":
		return true
	}
	if prefix == kubeletLabelNamespace || strings.HasSuffix(prefix, "."+kubeletLabelNamespace) ||
		prefix == nodeLabelNamespace || strings.HasSuffix(prefix, "."+nodeLabelNamespace) {
		return true
	}
	inKube := prefix == kubernetesLabelDomain || strings.HasSuffix(prefix, "."+kubernetesLabelDomain) ||
		prefix == k8sLabelDomain || strings.HasSuffix(prefix, "."+k8sLabelDomain)
	return !inKube
}

func admitLease(node string, a admission.Attributes) error {
	if a.GetNamespace() != nodeLeaseNamespace {
		return fmt.Errorf("node %q may only modify leases in %s", node, nodeLeaseNamespace)
	}
	if err := admitOwnNamed(node, a, "Lease"); err != nil {
		return err
	}
	if l, ok := a.GetObject().(*coordinationv1.Lease); ok && l != nil && a.GetOperation() != admission.Delete {
		for _, o := range l.OwnerReferences {
			if o.Kind != "Node" || o.Name != node {
				return fmt.Errorf("node %q may only own its lease by its own Node", node)
			}
		}
	}
	return nil
}

func admitOwnNamed(node string, a admission.Attributes, kind string) error {
	if objectName(a) != node {
		return fmt.Errorf("node %q may only modify its own %s", node, kind)
	}
	return nil
}

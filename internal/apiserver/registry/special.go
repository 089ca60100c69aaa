package registry

import (
	"context"
	"fmt"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage"
)

// Deps are what the resources with behaviour beyond storage need.
type Deps struct {
	ServiceIPs, NodePorts *Allocator
}

// Special returns the REST storages that replace or extend the generic
// stores: namespace life cycle, service allocations, pods/binding and CSR
// approval. Keys are resource paths ("pods/binding").
func Special(stores map[string]*genericregistry.Store, statuses map[string]*genericregistry.Store, deps Deps) map[string]rest.Storage {
	out := map[string]rest.Storage{}
	if s := stores["namespaces"]; s != nil {
		out["namespaces"] = &NamespaceREST{Store: s}
		out["namespaces/finalize"] = NewNamespaceFinalizeREST(s)
	}
	if s := stores["services"]; s != nil && deps.ServiceIPs != nil {
		// As in Kubernetes, deleting a service returns it; ServiceREST
		// needs it to release its cluster IP and node ports.
		s.ReturnDeletedObject = true
		out["services"] = &ServiceREST{Store: s, IPs: deps.ServiceIPs, NodePorts: deps.NodePorts}
	}
	if s := stores["pods"]; s != nil {
		out["pods/binding"] = &BindingREST{store: s}
	}
	if st := statuses["certificatesigningrequests"]; st != nil {
		// /approval changes conditions only; /status may not approve or deny.
		out["certificatesigningrequests/approval"] = NewStatusREST(st, func(_ context.Context, newObj, oldObj runtime.Object) (runtime.Object, error) {
			n, o := newObj.(*certificatesv1.CertificateSigningRequest), oldObj.(*certificatesv1.CertificateSigningRequest)
			n.Status.Certificate = o.Status.Certificate
			return n, nil
		})
		out["certificatesigningrequests/status"] = NewStatusREST(st, func(_ context.Context, newObj, oldObj runtime.Object) (runtime.Object, error) {
			n, o := newObj.(*certificatesv1.CertificateSigningRequest), oldObj.(*certificatesv1.CertificateSigningRequest)
			var conds []certificatesv1.CertificateSigningRequestCondition
			for _, c := range n.Status.Conditions {
				if c.Type != certificatesv1.CertificateApproved && c.Type != certificatesv1.CertificateDenied {
					conds = append(conds, c)
				}
			}
			for _, c := range o.Status.Conditions {
				if c.Type == certificatesv1.CertificateApproved || c.Type == certificatesv1.CertificateDenied {
					conds = append(conds, c)
				}
			}
			n.Status.Conditions = conds
			return n, nil
		})
	}
	return out
}

// BindingREST is pods/binding: the scheduler's way to set spec.nodeName.
type BindingREST struct {
	store *genericregistry.Store
}

func (r *BindingREST) New() runtime.Object { return &corev1.Binding{} }
func (r *BindingREST) Destroy()            {}

// NamespaceScoped implements rest.Scoper.
func (r *BindingREST) NamespaceScoped() bool { return true }

// Create binds a pod to the node named by the binding's target.
func (r *BindingREST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	b, ok := obj.(*corev1.Binding)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a Binding object: %T", obj))
	}
	if b.Target.Kind != "" && b.Target.Kind != "Node" {
		return nil, apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Binding").GroupKind(), b.Name, nil)
	}
	if b.Target.Name == "" {
		return nil, apierrors.NewBadRequest("binding target name is required")
	}
	if createValidation != nil {
		if err := createValidation(ctx, b.DeepCopyObject()); err != nil {
			return nil, err
		}
	}
	key, err := r.store.KeyFunc(ctx, b.Name)
	if err != nil {
		return nil, err
	}
	dryRun := len(options.DryRun) > 0
	var pre *storage.Preconditions
	if b.UID != "" {
		pre = &storage.Preconditions{UID: &b.UID}
	}
	err = r.store.Storage.GuaranteedUpdate(ctx, key, &corev1.Pod{}, false, pre, storage.SimpleUpdate(func(existing runtime.Object) (runtime.Object, error) {
		pod := existing.(*corev1.Pod)
		if pod.DeletionTimestamp != nil {
			return nil, apierrors.NewConflict(corev1.Resource("pods/binding"), b.Name, fmt.Errorf("pod %s is being deleted, cannot be assigned to a host", b.Name))
		}
		if pod.Spec.NodeName != "" {
			return nil, apierrors.NewConflict(corev1.Resource("pods/binding"), b.Name, fmt.Errorf("pod %s is already assigned to node %q", b.Name, pod.Spec.NodeName))
		}
		pod.Spec.NodeName = b.Target.Name
		for k, v := range b.Annotations {
			if pod.Annotations == nil {
				pod.Annotations = map[string]string{}
			}
			pod.Annotations[k] = v
		}
		pod.Status.Conditions = append(pod.Status.Conditions, corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()})
		return pod, nil
	}), dryRun, nil)
	if err != nil {
		return nil, err
	}
	return &metav1.Status{Status: metav1.StatusSuccess, Code: 201}, nil
}

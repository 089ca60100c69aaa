package registry

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage"
)

// NamespaceREST is the namespaces resource. Deleting a namespace whose
// spec.finalizers is non-empty only marks it Terminating; the namespace
// controller empties it, clears the finalizer through /finalize and deletes
// it again — the same life cycle as Kubernetes.
type NamespaceREST struct {
	*genericregistry.Store
}

// ShortNames implements rest.ShortNamesProvider.
func (r *NamespaceREST) ShortNames() []string { return []string{"ns"} }

// Delete marks the namespace Terminating, or removes it once finalized.
func (r *NamespaceREST) Delete(ctx context.Context, name string, deleteValidation rest.ValidateObjectFunc, options *metav1.DeleteOptions) (runtime.Object, bool, error) {
	obj, err := r.Get(ctx, name, &metav1.GetOptions{})
	if err != nil {
		return nil, false, err
	}
	ns := obj.(*corev1.Namespace)
	if options == nil {
		options = metav1.NewDeleteOptions(0)
	}
	if p := options.Preconditions; p != nil {
		if p.UID != nil && *p.UID != ns.UID {
			return nil, false, apierrors.NewConflict(corev1.Resource("namespaces"), name, fmt.Errorf("precondition failed: UID in precondition: %v, UID in object meta: %v", *p.UID, ns.UID))
		}
		if p.ResourceVersion != nil && *p.ResourceVersion != ns.ResourceVersion {
			return nil, false, apierrors.NewConflict(corev1.Resource("namespaces"), name, fmt.Errorf("precondition failed: ResourceVersion in precondition: %v, ResourceVersion in object meta: %v", *p.ResourceVersion, ns.ResourceVersion))
		}
	}
	if len(ns.Spec.Finalizers) == 0 && ns.DeletionTimestamp != nil {
		return r.Store.Delete(ctx, name, deleteValidation, options)
	}
	if deleteValidation != nil {
		if err := deleteValidation(ctx, ns); err != nil {
			return nil, false, err
		}
	}
	key, err := r.KeyFunc(ctx, name)
	if err != nil {
		return nil, false, err
	}
	out := r.NewFunc()
	dryRun := len(options.DryRun) > 0
	err = r.Storage.GuaranteedUpdate(ctx, key, out, false, &storage.Preconditions{UID: &ns.UID}, storage.SimpleUpdate(func(existing runtime.Object) (runtime.Object, error) {
		cur := existing.(*corev1.Namespace)
		if cur.DeletionTimestamp == nil {
			now := metav1.Now()
			zero := int64(0)
			cur.DeletionTimestamp = &now
			cur.DeletionGracePeriodSeconds = &zero
		}
		cur.Status.Phase = corev1.NamespaceTerminating
		return cur, nil
	}), dryRun, nil)
	if err != nil {
		return nil, false, err
	}
	return out, false, nil
}

// NamespaceFinalizeREST is namespaces/finalize: it changes spec.finalizers only.
type NamespaceFinalizeREST struct {
	store *genericregistry.Store
}

// NewNamespaceFinalizeREST returns the /finalize subresource of store.
func NewNamespaceFinalizeREST(store *genericregistry.Store) *NamespaceFinalizeREST {
	return &NamespaceFinalizeREST{store: store}
}

func (r *NamespaceFinalizeREST) New() runtime.Object { return &corev1.Namespace{} }
func (r *NamespaceFinalizeREST) Destroy()            {}

// Update replaces spec.finalizers and nothing else.
func (r *NamespaceFinalizeREST) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo, createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc, _ bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	onlyFinalizers := func(_ context.Context, newObj, oldObj runtime.Object) (runtime.Object, error) {
		n, ok1 := newObj.(*corev1.Namespace)
		o, ok2 := oldObj.(*corev1.Namespace)
		if !ok1 || !ok2 {
			return nil, apierrors.NewBadRequest("not a Namespace")
		}
		out := o.DeepCopy()
		out.Spec.Finalizers = n.Spec.Finalizers
		out.ResourceVersion = n.ResourceVersion
		return out, nil
	}
	return r.store.Update(ctx, name, rest.WrapUpdatedObjectInfo(objInfo, onlyFinalizers), createValidation, updateValidation, false, options)
}

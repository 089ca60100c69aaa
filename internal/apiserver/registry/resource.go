package registry

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/names"
)

// Resource describes one stored resource of the API.
type Resource struct {
	GroupVersion     schema.GroupVersion
	Plural, Singular string
	Kind             Kind
	New, NewList     func() runtime.Object
	ShortNames       []string
	// Categories: only kinds `kubectl get all` shows belong in "all".
	Categories []string
	Table      Table
}

// Store builds the generic registry store for r.
func (r Resource) Store(typer runtime.ObjectTyper, opts generic.RESTOptionsGetter, attrs storage.AttrFunc) (*genericregistry.Store, error) {
	s := strategy{ObjectTyper: typer, NameGenerator: names.SimpleNameGenerator, kind: r.Kind, gv: r.GroupVersion.String()}
	gr := schema.GroupResource{Group: r.GroupVersion.Group, Resource: r.Plural}
	store := &genericregistry.Store{
		NewFunc:                   r.New,
		NewListFunc:               r.NewList,
		DefaultQualifiedResource:  gr,
		SingularQualifiedResource: schema.GroupResource{Group: r.GroupVersion.Group, Resource: r.Singular},
		CreateStrategy:            s,
		UpdateStrategy:            s,
		DeleteStrategy:            s,
		ResetFieldsStrategy:       s,
		TableConvertor:            r.Table,
	}
	if err := store.CompleteWithOptions(&generic.StoreOptions{RESTOptions: watchFallbackOptions{opts}, AttrFunc: attrs}); err != nil {
		return nil, fmt.Errorf("registry %s: %w", gr, err)
	}
	return store, nil
}

// StatusStore returns the /status subresource sharing main's storage.
func (r Resource) StatusStore(main *genericregistry.Store) *genericregistry.Store {
	st := *main
	s := main.UpdateStrategy.(strategy)
	s.status = true
	st.CreateStrategy = nil
	st.DeleteStrategy = nil
	st.UpdateStrategy = s
	st.ResetFieldsStrategy = s
	return &st
}

// WithNames wraps a store so discovery shows the resource's short names and
// categories.
func (r Resource) WithNames(s *genericregistry.Store) rest.Storage {
	if len(r.ShortNames) == 0 && len(r.Categories) == 0 {
		return s
	}
	return &named{Store: s, short: r.ShortNames, categories: r.Categories}
}

// StatusREST is the /status subresource of a store (get, update, patch).
type StatusREST struct {
	store     *genericregistry.Store
	transform []rest.TransformFunc
}

// NewStatusREST exposes only get/update/patch of status; transforms run on
// every update (e.g. to keep fields another subresource owns).
func NewStatusREST(store *genericregistry.Store, transform ...rest.TransformFunc) *StatusREST {
	return &StatusREST{store: store, transform: transform}
}

func (r *StatusREST) New() runtime.Object { return r.store.New() }
func (r *StatusREST) Destroy()            {}

// Get retrieves the object.
func (r *StatusREST) Get(ctx context.Context, name string, options *metav1.GetOptions) (runtime.Object, error) {
	return r.store.Get(ctx, name, options)
}

// Update alters the status subset of an object.
func (r *StatusREST) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo, createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc, forceAllowCreate bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	// Subresources never create.
	if len(r.transform) > 0 {
		objInfo = rest.WrapUpdatedObjectInfo(objInfo, r.transform...)
	}
	return r.store.Update(ctx, name, objInfo, createValidation, updateValidation, false, options)
}

// GetResetFields is used by server-side apply.
func (r *StatusREST) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return r.store.GetResetFields()
}

// ConvertToTable prints the object like the main resource.
func (r *StatusREST) ConvertToTable(ctx context.Context, object runtime.Object, tableOptions runtime.Object) (*metav1.Table, error) {
	return r.store.ConvertToTable(ctx, object, tableOptions)
}

type named struct {
	*genericregistry.Store
	short, categories []string
}

func (n *named) ShortNames() []string { return n.short }
func (n *named) Categories() []string { return n.categories }

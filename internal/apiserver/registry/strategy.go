// Package registry defines how each served resource is stored, defaulted,
// validated and printed: one generic strategy driven by a per-kind
// definition, on top of k8s.io/apiserver's generic registry Store.
package registry

import (
	"context"
	"reflect"
	"slices"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage/names"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

// Kind holds what differs between resources; zero fields mean "nothing special".
type Kind struct {
	// Namespaced is true for namespace-scoped resources.
	Namespaced bool
	// NameFn validates metadata.name; nil means DNS subdomain.
	NameFn apivalidation.ValidateNameFunc
	// Default fills defaults in place; called on create and update.
	Default func(obj runtime.Object)
	// PrepareCreate runs after defaulting on create (e.g. initial status).
	PrepareCreate func(ctx context.Context, obj runtime.Object)
	// Validate checks everything but ObjectMeta.
	Validate func(obj runtime.Object) field.ErrorList
	// ValidateUpdate checks transitions (immutable fields); Validate also runs.
	ValidateUpdate func(obj, old runtime.Object) field.ErrorList
	// HasStatus: the main resource ignores status writes and a /status
	// subresource ignores everything else.
	HasStatus bool
	// GracefulDelete decides graceful deletion (pods); nil means immediate.
	GracefulDelete func(ctx context.Context, obj runtime.Object, options *metav1.DeleteOptions) bool
	// StatusValidate validates status writes; nil means Validate.
	StatusValidate func(obj, old runtime.Object) field.ErrorList
}

// strategy implements the create/update/delete strategies of a resource.
type strategy struct {
	runtime.ObjectTyper
	names.NameGenerator
	kind   Kind
	status bool // true for the /status subresource strategy
	gv     string
}

var (
	_ rest.RESTCreateStrategy         = strategy{}
	_ rest.RESTUpdateStrategy         = strategy{}
	_ rest.RESTDeleteStrategy         = strategy{}
	_ rest.ResetFieldsStrategy        = strategy{}
	_ rest.RESTGracefulDeleteStrategy = strategy{}
)

func (s strategy) NamespaceScoped() bool { return s.kind.Namespaced }

func (s strategy) PrepareForCreate(ctx context.Context, obj runtime.Object) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetGeneration(1)
	}
	if s.kind.Default != nil {
		s.kind.Default(obj)
	}
	if s.kind.PrepareCreate != nil {
		s.kind.PrepareCreate(ctx, obj)
	}
}

func (s strategy) Validate(ctx context.Context, obj runtime.Object) field.ErrorList {
	m, err := meta.Accessor(obj)
	if err != nil {
		return field.ErrorList{field.InternalError(nil, err)}
	}
	errs := apivalidation.ValidateObjectMetaAccessor(m, s.kind.Namespaced, s.nameFn(), field.NewPath("metadata"))
	if s.kind.Validate != nil {
		errs = append(errs, s.kind.Validate(obj)...)
	}
	return errs
}

func (s strategy) nameFn() apivalidation.ValidateNameFunc {
	if s.kind.NameFn != nil {
		return s.kind.NameFn
	}
	return apivalidation.NameIsDNSSubdomain
}

func (strategy) WarningsOnCreate(context.Context, runtime.Object) []string { return nil }
func (strategy) Canonicalize(runtime.Object)                               {}
func (strategy) AllowCreateOnUpdate(context.Context) bool                  { return false }
func (strategy) AllowUnconditionalUpdate(context.Context) bool             { return true }
func (strategy) WarningsOnUpdate(context.Context, runtime.Object, runtime.Object) []string {
	return nil
}

func (s strategy) PrepareForUpdate(_ context.Context, obj, old runtime.Object) {
	if s.kind.HasStatus {
		if s.status {
			copyAllBut(obj, old, "Status", "ObjectMeta", "TypeMeta")
			return
		}
		copyField(obj, old, "Status")
	}
	if s.kind.Default != nil {
		s.kind.Default(obj)
	}
	// Bump generation when anything but metadata and status changed.
	newM, err1 := meta.Accessor(obj)
	oldM, err2 := meta.Accessor(old)
	if err1 != nil || err2 != nil {
		return
	}
	if !equalBut(obj, old, "Status", "ObjectMeta", "TypeMeta") {
		newM.SetGeneration(oldM.GetGeneration() + 1)
	} else {
		newM.SetGeneration(oldM.GetGeneration())
	}
}

func (s strategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	newM, err1 := meta.Accessor(obj)
	oldM, err2 := meta.Accessor(old)
	if err1 != nil || err2 != nil {
		return field.ErrorList{field.InternalError(nil, err1)}
	}
	errs := apivalidation.ValidateObjectMetaAccessorUpdate(newM, oldM, field.NewPath("metadata"))
	errs = append(errs, apivalidation.ValidateObjectMetaAccessor(newM, s.kind.Namespaced, s.nameFn(), field.NewPath("metadata"))...)
	if s.status && s.kind.StatusValidate != nil {
		return append(errs, s.kind.StatusValidate(obj, old)...)
	}
	if s.kind.Validate != nil {
		errs = append(errs, s.kind.Validate(obj)...)
	}
	if !s.status && s.kind.ValidateUpdate != nil {
		errs = append(errs, s.kind.ValidateUpdate(obj, old)...)
	}
	return errs
}

func (s strategy) CheckGracefulDelete(ctx context.Context, obj runtime.Object, options *metav1.DeleteOptions) bool {
	if s.kind.GracefulDelete == nil {
		return false
	}
	return s.kind.GracefulDelete(ctx, obj, options)
}

// GetResetFields tells server-side apply which fields this endpoint ignores,
// so that managedFields ownership stays right.
func (s strategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	if !s.kind.HasStatus {
		return nil
	}
	set := fieldpath.NewSet(fieldpath.MakePathOrDie("status"))
	if s.status {
		set = fieldpath.NewSet(fieldpath.MakePathOrDie("spec"))
	}
	return map[fieldpath.APIVersion]*fieldpath.Set{fieldpath.APIVersion(s.gv): set}
}

// copyField sets dst.name = src.name for two pointers to the same struct type.
func copyField(dst, src runtime.Object, name string) {
	d := reflect.ValueOf(dst).Elem().FieldByName(name)
	sv := reflect.ValueOf(src).Elem().FieldByName(name)
	if d.IsValid() && sv.IsValid() && d.CanSet() {
		d.Set(sv)
	}
}

// copyAllBut copies every field of src into dst except the named ones.
func copyAllBut(dst, src runtime.Object, except ...string) {
	d := reflect.ValueOf(dst).Elem()
	sv := reflect.ValueOf(src).Elem()
	t := d.Type()
	for i := 0; i < t.NumField(); i++ {
		if slices.Contains(except, t.Field(i).Name) {
			continue
		}
		if d.Field(i).CanSet() {
			d.Field(i).Set(sv.Field(i))
		}
	}
}

// equalBut compares two objects of the same type ignoring the named fields.
func equalBut(a, b runtime.Object, except ...string) bool {
	av := reflect.ValueOf(a).Elem()
	bv := reflect.ValueOf(b).Elem()
	t := av.Type()
	for i := 0; i < t.NumField(); i++ {
		if slices.Contains(except, t.Field(i).Name) {
			continue
		}
		if !apiequality.Semantic.DeepEqual(av.Field(i).Interface(), bv.Field(i).Interface()) {
			return false
		}
	}
	return true
}

package apiserver

import (
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	authenticationv1beta1 "k8s.io/api/authentication/v1beta1"
	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/conversion"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// groupVersions lists every API version the hub serves, with the function
// that registers its k8s.io/api types.
var groupVersions = []struct {
	gv  schema.GroupVersion
	add func(*runtime.Scheme) error
}{
	{corev1.SchemeGroupVersion, corev1.AddToScheme},
	{coordinationv1.SchemeGroupVersion, coordinationv1.AddToScheme},
	{discoveryv1.SchemeGroupVersion, discoveryv1.AddToScheme},
	{certificatesv1.SchemeGroupVersion, certificatesv1.AddToScheme},
	{rbacv1.SchemeGroupVersion, rbacv1.AddToScheme},
	{authenticationv1.SchemeGroupVersion, authenticationv1.AddToScheme},
	// Only SelfSubjectReview, for kubectl 1.27 whose `auth whoami` knows
	// no other version.
	{authenticationv1beta1.SchemeGroupVersion, addSelfSubjectReviewV1beta1},
	{authorizationv1.SchemeGroupVersion, authorizationv1.AddToScheme},
	{policyv1.SchemeGroupVersion, policyv1.AddToScheme},
}

// NewScheme returns the scheme of everything the hub serves.
//
// k8s.io/api has no internal ("hub") types, so each served kind is registered
// a second time, with the same Go type, under the group's internal version.
// The generic API server then converts nothing (the kinds are identical)
// while PATCH, server-side apply and the etcd3 watcher find the internal
// kinds they look for.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	metav1.AddToGroupVersion(s, schema.GroupVersion{Version: "v1"})
	unversioned := schema.GroupVersion{Group: "", Version: "v1"}
	s.AddUnversionedTypes(unversioned, &metav1.Status{}, &metav1.APIVersions{}, &metav1.APIGroupList{}, &metav1.APIGroup{}, &metav1.APIResourceList{})
	for _, g := range groupVersions {
		if err := g.add(s); err != nil {
			return nil, fmt.Errorf("scheme %s: %w", g.gv, err)
		}
		internal := schema.GroupVersion{Group: g.gv.Group, Version: runtime.APIVersionInternal}
		for kind, typ := range s.KnownTypes(g.gv) {
			if isMetaKind(kind) {
				continue
			}
			obj, ok := runtimeObjectOf(typ)
			if !ok || s.Recognizes(internal.WithKind(kind)) {
				// An older version of a kind: its internal form is the
				// newest version's type (see addSelfSubjectReviewV1beta1).
				continue
			}
			s.AddKnownTypeWithName(internal.WithKind(kind), obj)
		}
	}
	if err := addFieldLabelConversions(s); err != nil {
		return nil, err
	}
	if err := addQueryConversions(s); err != nil {
		return nil, err
	}
	return s, nil
}

// isMetaKind reports kinds that metav1.AddToGroupVersion adds to every group
// version; they keep their own internal forms in apimachinery.
func isMetaKind(kind string) bool {
	switch kind {
	case "WatchEvent", "ListOptions", "GetOptions", "DeleteOptions", "CreateOptions",
		"UpdateOptions", "PatchOptions", "Status", "APIVersions", "APIGroupList",
		"APIGroup", "APIResourceList", "Table", "PartialObjectMetadata",
		"PartialObjectMetadataList", "TableOptions", "ExportOptions":
		return true
	}
	return false
}

// addSelfSubjectReviewV1beta1 registers authentication.k8s.io/v1beta1
// SelfSubjectReview with conversions to and from v1, whose type is the
// group's internal form.
func addSelfSubjectReviewV1beta1(s *runtime.Scheme) error {
	gv := authenticationv1beta1.SchemeGroupVersion
	s.AddKnownTypes(gv, &authenticationv1beta1.SelfSubjectReview{})
	metav1.AddToGroupVersion(s, gv)
	if err := s.AddConversionFunc((*authenticationv1beta1.SelfSubjectReview)(nil), (*authenticationv1.SelfSubjectReview)(nil), func(a, b any, _ conversion.Scope) error {
		in, out := a.(*authenticationv1beta1.SelfSubjectReview), b.(*authenticationv1.SelfSubjectReview)
		out.ObjectMeta = in.ObjectMeta
		out.Status.UserInfo = in.Status.UserInfo
		return nil
	}); err != nil {
		return err
	}
	return s.AddConversionFunc((*authenticationv1.SelfSubjectReview)(nil), (*authenticationv1beta1.SelfSubjectReview)(nil), func(a, b any, _ conversion.Scope) error {
		in, out := a.(*authenticationv1.SelfSubjectReview), b.(*authenticationv1beta1.SelfSubjectReview)
		out.ObjectMeta = in.ObjectMeta
		out.Status.UserInfo = in.Status.UserInfo
		return nil
	})
}

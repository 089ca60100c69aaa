package registry

import (
	"context"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	authenticationv1beta1 "k8s.io/api/authentication/v1beta1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
)

// Reviews returns the create-only review resources, keyed by group version
// then resource: TokenReview and SelfSubjectReview (authentication.k8s.io),
// SubjectAccessReview, SelfSubjectAccessReview and LocalSubjectAccessReview
// (authorization.k8s.io). tokens may be nil (no token authenticators yet).
func Reviews(tokens authenticator.Token, authz authorizer.Authorizer, rules authorizer.RuleResolver, apiAudiences []string) map[schema.GroupVersion]map[string]rest.Storage {
	out := map[schema.GroupVersion]map[string]rest.Storage{
		authenticationv1.SchemeGroupVersion: {
			"tokenreviews":       &tokenReviewREST{tokens: tokens, audiences: apiAudiences},
			"selfsubjectreviews": &selfSubjectReviewREST{},
		},
		// kubectl 1.27's `auth whoami`; the scheme converts to and from v1.
		authenticationv1beta1.SchemeGroupVersion: {
			"selfsubjectreviews": &selfSubjectReviewREST{},
		},
		authorizationv1.SchemeGroupVersion: {
			"subjectaccessreviews":      &sarREST{authz: authz},
			"selfsubjectaccessreviews":  &selfSARREST{authz: authz},
			"localsubjectaccessreviews": &localSARREST{authz: authz},
		},
	}
	if rules != nil {
		out[authorizationv1.SchemeGroupVersion]["selfsubjectrulesreviews"] = &selfRulesREST{rules: rules}
	}
	return out
}

type selfRulesREST struct {
	createOnly
	rules authorizer.RuleResolver
}

func (*selfRulesREST) New() runtime.Object     { return &authorizationv1.SelfSubjectRulesReview{} }
func (*selfRulesREST) NamespaceScoped() bool   { return false }
func (*selfRulesREST) GetSingularName() string { return "selfsubjectrulesreview" }

func (r *selfRulesREST) Create(ctx context.Context, obj runtime.Object, _ rest.ValidateObjectFunc, _ *metav1.CreateOptions) (runtime.Object, error) {
	rr, ok := obj.(*authorizationv1.SelfSubjectRulesReview)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a SelfSubjectRulesReview: %T", obj))
	}
	u, ok := genericapirequest.UserFrom(ctx)
	if !ok {
		return nil, apierrors.NewBadRequest("no user in request context")
	}
	res, nonRes, incomplete, err := r.rules.RulesFor(ctx, u, rr.Spec.Namespace)
	st := authorizationv1.SubjectRulesReviewStatus{Incomplete: incomplete}
	if err != nil {
		st.EvaluationError = err.Error()
	}
	for _, x := range res {
		st.ResourceRules = append(st.ResourceRules, authorizationv1.ResourceRule{Verbs: x.GetVerbs(), APIGroups: x.GetAPIGroups(), Resources: x.GetResources(), ResourceNames: x.GetResourceNames()})
	}
	for _, x := range nonRes {
		st.NonResourceRules = append(st.NonResourceRules, authorizationv1.NonResourceRule{Verbs: x.GetVerbs(), NonResourceURLs: x.GetNonResourceURLs()})
	}
	rr.Status = st
	return rr, nil
}

// createOnly is the shared part of every review storage.
type createOnly struct{}

func (createOnly) Destroy()                {}
func (createOnly) GetSingularName() string { return "" }
func (createOnly) ConvertToTable(_ context.Context, obj runtime.Object, _ runtime.Object) (*metav1.Table, error) {
	return nil, apierrors.NewMethodNotSupported(authorizationv1.Resource("reviews"), "get")
}

type tokenReviewREST struct {
	createOnly
	tokens    authenticator.Token
	audiences []string
}

func (*tokenReviewREST) New() runtime.Object     { return &authenticationv1.TokenReview{} }
func (*tokenReviewREST) NamespaceScoped() bool   { return false }
func (*tokenReviewREST) GetSingularName() string { return "tokenreview" }

func (r *tokenReviewREST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, _ *metav1.CreateOptions) (runtime.Object, error) {
	tr, ok := obj.(*authenticationv1.TokenReview)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a TokenReview: %T", obj))
	}
	if createValidation != nil {
		if err := createValidation(ctx, obj.DeepCopyObject()); err != nil {
			return nil, err
		}
	}
	if tr.Spec.Token == "" {
		return nil, apierrors.NewBadRequest("spec.token is required")
	}
	audiences := tr.Spec.Audiences
	if len(audiences) == 0 {
		audiences = r.audiences
	}
	tr.Status = authenticationv1.TokenReviewStatus{}
	if r.tokens == nil {
		tr.Status.Error = "no token authenticators are configured"
		return tr, nil
	}
	actx := authenticator.WithAudiences(ctx, audiences)
	resp, ok, err := r.tokens.AuthenticateToken(actx, tr.Spec.Token)
	if err != nil {
		// Errors never say why, so a caller learns nothing about which tokens exist.
		tr.Status.Error = "token authentication failed"
	}
	if !ok || err != nil {
		return tr, nil
	}
	tr.Status.Authenticated = true
	tr.Status.Audiences = resp.Audiences
	tr.Status.User = userInfo(resp.User)
	return tr, nil
}

func userInfo(u user.Info) authenticationv1.UserInfo {
	out := authenticationv1.UserInfo{Username: u.GetName(), UID: u.GetUID(), Groups: u.GetGroups()}
	if extra := u.GetExtra(); len(extra) > 0 {
		out.Extra = map[string]authenticationv1.ExtraValue{}
		for k, v := range extra {
			out.Extra[k] = v
		}
	}
	return out
}

type selfSubjectReviewREST struct{ createOnly }

func (*selfSubjectReviewREST) New() runtime.Object     { return &authenticationv1.SelfSubjectReview{} }
func (*selfSubjectReviewREST) NamespaceScoped() bool   { return false }
func (*selfSubjectReviewREST) GetSingularName() string { return "selfsubjectreview" }

func (r *selfSubjectReviewREST) Create(ctx context.Context, obj runtime.Object, _ rest.ValidateObjectFunc, _ *metav1.CreateOptions) (runtime.Object, error) {
	u, ok := genericapirequest.UserFrom(ctx)
	if !ok {
		return nil, apierrors.NewBadRequest("no user in request context")
	}
	return &authenticationv1.SelfSubjectReview{Status: authenticationv1.SelfSubjectReviewStatus{UserInfo: userInfo(u)}}, nil
}

// attributes turns a SubjectAccessReview spec into authorizer attributes.
func attributes(u user.Info, ra *authorizationv1.ResourceAttributes, nra *authorizationv1.NonResourceAttributes) authorizer.AttributesRecord {
	a := authorizer.AttributesRecord{User: u}
	if ra != nil {
		a.Verb, a.Namespace, a.APIGroup, a.APIVersion = ra.Verb, ra.Namespace, ra.Group, ra.Version
		a.Resource, a.Subresource, a.Name, a.ResourceRequest = ra.Resource, ra.Subresource, ra.Name, true
	}
	if nra != nil {
		a.Verb, a.Path = nra.Verb, nra.Path
	}
	return a
}

func decide(ctx context.Context, authz authorizer.Authorizer, a authorizer.AttributesRecord) authorizationv1.SubjectAccessReviewStatus {
	decision, reason, err := authz.Authorize(ctx, a)
	st := authorizationv1.SubjectAccessReviewStatus{
		Allowed: decision == authorizer.DecisionAllow,
		Denied:  decision == authorizer.DecisionDeny,
		Reason:  reason,
	}
	if err != nil {
		st.EvaluationError = err.Error()
	}
	return st
}

func validSARSpec(ra *authorizationv1.ResourceAttributes, nra *authorizationv1.NonResourceAttributes) error {
	if (ra == nil) == (nra == nil) {
		return apierrors.NewBadRequest("exactly one of resourceAttributes and nonResourceAttributes must be specified")
	}
	return nil
}

type sarREST struct {
	createOnly
	authz authorizer.Authorizer
}

func (*sarREST) New() runtime.Object     { return &authorizationv1.SubjectAccessReview{} }
func (*sarREST) NamespaceScoped() bool   { return false }
func (*sarREST) GetSingularName() string { return "subjectaccessreview" }

func (r *sarREST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, _ *metav1.CreateOptions) (runtime.Object, error) {
	sar, ok := obj.(*authorizationv1.SubjectAccessReview)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a SubjectAccessReview: %T", obj))
	}
	if err := validSARSpec(sar.Spec.ResourceAttributes, sar.Spec.NonResourceAttributes); err != nil {
		return nil, err
	}
	if sar.Spec.User == "" && len(sar.Spec.Groups) == 0 {
		return nil, apierrors.NewBadRequest("at least one of user or group must be specified")
	}
	if createValidation != nil {
		if err := createValidation(ctx, obj.DeepCopyObject()); err != nil {
			return nil, err
		}
	}
	u := &user.DefaultInfo{Name: sar.Spec.User, UID: sar.Spec.UID, Groups: sar.Spec.Groups}
	if len(sar.Spec.Extra) > 0 {
		u.Extra = map[string][]string{}
		for k, v := range sar.Spec.Extra {
			u.Extra[k] = v
		}
	}
	sar.Status = decide(ctx, r.authz, attributes(u, sar.Spec.ResourceAttributes, sar.Spec.NonResourceAttributes))
	return sar, nil
}

type selfSARREST struct {
	createOnly
	authz authorizer.Authorizer
}

func (*selfSARREST) New() runtime.Object     { return &authorizationv1.SelfSubjectAccessReview{} }
func (*selfSARREST) NamespaceScoped() bool   { return false }
func (*selfSARREST) GetSingularName() string { return "selfsubjectaccessreview" }

func (r *selfSARREST) Create(ctx context.Context, obj runtime.Object, _ rest.ValidateObjectFunc, _ *metav1.CreateOptions) (runtime.Object, error) {
	ssar, ok := obj.(*authorizationv1.SelfSubjectAccessReview)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a SelfSubjectAccessReview: %T", obj))
	}
	if err := validSARSpec(ssar.Spec.ResourceAttributes, ssar.Spec.NonResourceAttributes); err != nil {
		return nil, err
	}
	u, ok := genericapirequest.UserFrom(ctx)
	if !ok {
		return nil, apierrors.NewBadRequest("no user in request context")
	}
	ssar.Status = decide(ctx, r.authz, attributes(u, ssar.Spec.ResourceAttributes, ssar.Spec.NonResourceAttributes))
	return ssar, nil
}

type localSARREST struct {
	createOnly
	authz authorizer.Authorizer
}

func (*localSARREST) New() runtime.Object     { return &authorizationv1.LocalSubjectAccessReview{} }
func (*localSARREST) NamespaceScoped() bool   { return true }
func (*localSARREST) GetSingularName() string { return "localsubjectaccessreview" }

func (r *localSARREST) Create(ctx context.Context, obj runtime.Object, _ rest.ValidateObjectFunc, _ *metav1.CreateOptions) (runtime.Object, error) {
	lsar, ok := obj.(*authorizationv1.LocalSubjectAccessReview)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a LocalSubjectAccessReview: %T", obj))
	}
	if lsar.Spec.ResourceAttributes == nil {
		return nil, apierrors.NewBadRequest("resourceAttributes is required")
	}
	ns, _ := genericapirequest.NamespaceFrom(ctx)
	if lsar.Spec.ResourceAttributes.Namespace != ns {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("spec.resourceAttributes.namespace must match the request namespace %q", ns))
	}
	u := &user.DefaultInfo{Name: lsar.Spec.User, UID: lsar.Spec.UID, Groups: lsar.Spec.Groups}
	lsar.Status = decide(ctx, r.authz, attributes(u, lsar.Spec.ResourceAttributes, nil))
	return lsar, nil
}

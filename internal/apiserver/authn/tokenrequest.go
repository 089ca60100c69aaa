package authn

import (
	"context"
	"fmt"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
)

// Token lifetimes TokenRequest accepts.
const (
	MinTokenTTL     = 10 * time.Minute
	DefaultTokenTTL = time.Hour
	MaxTokenTTL     = 48 * time.Hour
)

// TokenRequestREST is serviceaccounts/token: it issues a bound token for the
// named service account (kubectl create token; node agents for pods).
type TokenRequestREST struct {
	Issuer    *Issuer
	Objects   Objects
	Audiences []string
}

var _ rest.NamedCreater = &TokenRequestREST{}

func (r *TokenRequestREST) New() runtime.Object { return &authenticationv1.TokenRequest{} }
func (r *TokenRequestREST) Destroy()            {}

// GroupVersionKind says the subresource speaks authentication.k8s.io/v1.
func (r *TokenRequestREST) GroupVersionKind(schema.GroupVersion) schema.GroupVersionKind {
	return authenticationv1.SchemeGroupVersion.WithKind("TokenRequest")
}

func invalid(name string, errs field.ErrorList) error {
	return apierrors.NewInvalid(authenticationv1.SchemeGroupVersion.WithKind("TokenRequest").GroupKind(), name, errs)
}

// Create issues the token.
func (r *TokenRequestREST) Create(ctx context.Context, name string, obj runtime.Object, createValidation rest.ValidateObjectFunc, _ *metav1.CreateOptions) (runtime.Object, error) {
	req, ok := obj.(*authenticationv1.TokenRequest)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a TokenRequest: %T", obj))
	}
	ns, ok := genericapirequest.NamespaceFrom(ctx)
	if !ok || ns == "" {
		return nil, apierrors.NewBadRequest("namespace is required")
	}
	if createValidation != nil {
		if err := createValidation(ctx, obj.DeepCopyObject()); err != nil {
			return nil, err
		}
	}
	sp := field.NewPath("spec")
	ttl := DefaultTokenTTL
	if req.Spec.ExpirationSeconds != nil {
		ttl = time.Duration(*req.Spec.ExpirationSeconds) * time.Second
	}
	if ttl < MinTokenTTL {
		return nil, invalid(name, field.ErrorList{field.Invalid(sp.Child("expirationSeconds"), int64(ttl.Seconds()), "may not specify a duration less than 10 minutes")})
	}
	if ttl > MaxTokenTTL {
		ttl = MaxTokenTTL
	}
	audiences := req.Spec.Audiences
	if len(audiences) == 0 {
		audiences = r.Audiences
	}
	sa, err := r.Objects.ServiceAccount(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	var pod *corev1.Pod
	var secret *corev1.Secret
	var node *corev1.Node
	if b := req.Spec.BoundObjectRef; b != nil {
		bp := sp.Child("boundObjectRef")
		switch {
		case b.Kind == "Pod" && (b.APIVersion == "" || b.APIVersion == "v1"):
			if pod, err = r.Objects.Pod(ctx, ns, b.Name); err != nil {
				return nil, err
			}
			if pod.Spec.ServiceAccountName != sa.Name {
				return nil, apierrors.NewBadRequest(fmt.Sprintf("cannot bind token for serviceaccount %q to pod running with different serviceaccount name %q", sa.Name, pod.Spec.ServiceAccountName))
			}
			if b.UID != "" && b.UID != pod.UID {
				return nil, apierrors.NewConflict(corev1.Resource("pods"), b.Name, fmt.Errorf("the UID in the bound object reference (%s) does not match the UID in record (%s); the object might have been deleted and then recreated", b.UID, pod.UID))
			}
			if pod.Spec.NodeName != "" {
				if n, err := r.Objects.Node(ctx, pod.Spec.NodeName); err == nil {
					node = n
				}
			}
		case b.Kind == "Secret" && (b.APIVersion == "" || b.APIVersion == "v1"):
			if secret, err = r.Objects.Secret(ctx, ns, b.Name); err != nil {
				return nil, err
			}
			if b.UID != "" && b.UID != secret.UID {
				return nil, apierrors.NewConflict(corev1.Resource("secrets"), b.Name, fmt.Errorf("the UID in the bound object reference does not match the object"))
			}
		case b.Kind == "Node" && (b.APIVersion == "" || b.APIVersion == "v1"):
			if node, err = r.Objects.Node(ctx, b.Name); err != nil {
				return nil, err
			}
			if b.UID != "" && b.UID != node.UID {
				return nil, apierrors.NewConflict(corev1.Resource("nodes"), b.Name, fmt.Errorf("the UID in the bound object reference does not match the object"))
			}
		default:
			return nil, invalid(name, field.ErrorList{field.NotSupported(bp.Child("kind"), b.Kind, []string{"Pod", "Secret", "Node"})})
		}
	}
	tok, exp, err := r.Issuer.Issue(sa, audiences, ttl, pod, secret, node)
	if err != nil {
		return nil, apierrors.NewInternalError(err)
	}
	out := req.DeepCopy()
	out.Name, out.Namespace = name, ns
	secs := int64(ttl.Seconds())
	out.Spec.ExpirationSeconds = &secs
	out.Spec.Audiences = audiences
	out.Status = authenticationv1.TokenRequestStatus{Token: tok, ExpirationTimestamp: metav1.NewTime(exp)}
	return out, nil
}

// Package authn holds the hub's bearer-token authenticators and the pieces
// that issue or publish tokens: bound service-account JWTs (issuer,
// authenticator, TokenRequest, OIDC discovery) and bootstrap tokens.
// x509 client certificates are authenticated by k8s.io/apiserver itself.
package authn

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
)

// Ref names a Kubernetes object a token is bound to.
type Ref struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// KubeClaims is the private "kubernetes.io" claim of a service-account JWT,
// in the same shape as kube-apiserver's.
type KubeClaims struct {
	Namespace      string           `json:"namespace"`
	ServiceAccount Ref              `json:"serviceaccount"`
	Pod            *Ref             `json:"pod,omitempty"`
	Secret         *Ref             `json:"secret,omitempty"`
	Node           *Ref             `json:"node,omitempty"`
	WarnAfter      *jwt.NumericDate `json:"warnafter,omitempty"`
}

// Claims are the claims of a bound service-account token.
type Claims struct {
	jwt.RegisteredClaims
	Kubernetes KubeClaims `json:"kubernetes.io"`
}

// KeyID is the JWK "kid" of a public key: base64url(sha256(PKIX DER)), as
// kube-apiserver computes it.
func KeyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("key id: %w", err)
	}
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

func signingMethod(key crypto.Signer) (jwt.SigningMethod, error) {
	switch k := key.Public().(type) {
	case *ecdsa.PublicKey:
		switch k.Curve.Params().BitSize {
		case 256:
			return jwt.SigningMethodES256, nil
		case 384:
			return jwt.SigningMethodES384, nil
		case 521:
			return jwt.SigningMethodES512, nil
		}
	case *rsa.PublicKey:
		return jwt.SigningMethodRS256, nil
	}
	return nil, fmt.Errorf("unsupported service-account signing key %T", key.Public())
}

// Issuer signs bound service-account tokens.
type Issuer struct {
	issuer string
	key    crypto.Signer
	kid    string
	method jwt.SigningMethod
	now    func() time.Time
}

// NewIssuer returns an issuer named iss (the "iss" claim) signing with key.
func NewIssuer(iss string, key crypto.Signer, now func() time.Time) (*Issuer, error) {
	m, err := signingMethod(key)
	if err != nil {
		return nil, err
	}
	kid, err := KeyID(key.Public())
	if err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	return &Issuer{issuer: iss, key: key, kid: kid, method: m, now: now}, nil
}

// Issue signs a token for sa, valid for ttl, for the given audiences, bound
// to at most one of pod/secret (and the pod's node when known).
func (i *Issuer) Issue(sa *corev1.ServiceAccount, audiences []string, ttl time.Duration, pod *corev1.Pod, secret *corev1.Secret, node *corev1.Node) (string, time.Time, error) {
	now := i.now()
	exp := now.Add(ttl)
	c := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    i.issuer,
			Subject:   serviceaccount.MakeUsername(sa.Namespace, sa.Name),
			Audience:  audiences,
			ExpiresAt: jwt.NewNumericDate(exp),
			NotBefore: jwt.NewNumericDate(now),
			IssuedAt:  jwt.NewNumericDate(now),
			ID:        uuid.NewString(),
		},
		Kubernetes: KubeClaims{Namespace: sa.Namespace, ServiceAccount: Ref{Name: sa.Name, UID: string(sa.UID)}},
	}
	if pod != nil {
		c.Kubernetes.Pod = &Ref{Name: pod.Name, UID: string(pod.UID)}
	}
	if secret != nil {
		c.Kubernetes.Secret = &Ref{Name: secret.Name, UID: string(secret.UID)}
	}
	if node != nil {
		c.Kubernetes.Node = &Ref{Name: node.Name, UID: string(node.UID)}
	}
	t := jwt.NewWithClaims(i.method, c)
	t.Header["kid"] = i.kid
	s, err := t.SignedString(i.key)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign token: %w", err)
	}
	return s, exp, nil
}

// Objects looks up what a token is bound to. NotFound errors mean gone.
type Objects interface {
	ServiceAccount(ctx context.Context, ns, name string) (*corev1.ServiceAccount, error)
	Pod(ctx context.Context, ns, name string) (*corev1.Pod, error)
	Secret(ctx context.Context, ns, name string) (*corev1.Secret, error)
	Node(ctx context.Context, name string) (*corev1.Node, error)
}

// SATokenAuthenticator verifies bound service-account tokens: signature
// (any of several verification keys, so the signing key can rotate), issuer,
// audience, time, and that the service account and the bound object still
// exist with the same UID.
type SATokenAuthenticator struct {
	issuers   []string
	keys      map[string]crypto.PublicKey
	objects   Objects
	audiences []string
	now       func() time.Time
	cache     *tokenCache
}

// NewSATokenAuthenticator accepts tokens from any of issuers signed by any
// of keys; implicitAudiences apply when the request context names none.
func NewSATokenAuthenticator(issuers []string, keys []crypto.PublicKey, implicitAudiences []string, objects Objects, now func() time.Time) (*SATokenAuthenticator, error) {
	if len(keys) == 0 || len(issuers) == 0 || objects == nil {
		return nil, errors.New("service-account authenticator: issuers, keys and objects are required")
	}
	m := map[string]crypto.PublicKey{}
	for _, k := range keys {
		kid, err := KeyID(k)
		if err != nil {
			return nil, err
		}
		m[kid] = k
	}
	if now == nil {
		now = time.Now
	}
	return &SATokenAuthenticator{issuers: issuers, keys: m, objects: objects, audiences: implicitAudiences, now: now, cache: newTokenCache(saCacheSize)}, nil
}

// errInvalid is what every rejection says to the client: nothing about why.
var errInvalid = errors.New("invalid bearer token")

// AuthenticateToken implements authenticator.Token. A token that is not a
// JWT from our issuers returns (nil, false, nil) so other authenticators run.
func (a *SATokenAuthenticator) AuthenticateToken(ctx context.Context, raw string) (*authenticator.Response, bool, error) {
	wanted := authenticator.Audiences(a.audiences)
	if reqAuds, ok := authenticator.AudiencesFrom(ctx); ok {
		wanted = reqAuds
	}
	key := tokenKey(raw)
	if e, ok := a.cache.get(key); ok {
		return a.fromCache(ctx, key, e, wanted)
	}
	var c Claims
	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{"ES256", "ES384", "ES512", "RS256"}),
		jwt.WithTimeFunc(a.now),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(0),
		// Canonical base64 only: otherwise the unused low bits of a segment's
		// last character make one token many accepted strings.
		jwt.WithStrictDecoding(),
	)
	// Cheap pre-check: not ours → let other authenticators try.
	unverified, _, err := parser.ParseUnverified(raw, &Claims{})
	if err != nil {
		return nil, false, nil
	}
	if iss, _ := unverified.Claims.GetIssuer(); !slices.Contains(a.issuers, iss) {
		return nil, false, nil
	}
	_, err = parser.ParseWithClaims(raw, &c, func(t *jwt.Token) (any, error) {
		if kid, ok := t.Header["kid"].(string); ok && kid != "" {
			if k, ok := a.keys[kid]; ok {
				return k, nil
			}
			return nil, errInvalid
		}
		// No kid: try every key.
		vs := jwt.VerificationKeySet{}
		for _, k := range a.keys {
			vs.Keys = append(vs.Keys, k)
		}
		return vs, nil
	})
	if err != nil {
		return nil, false, errInvalid
	}
	auds := wanted.Intersect(authenticator.Audiences(c.Audience))
	if len(auds) == 0 {
		return nil, false, errInvalid
	}
	k := c.Kubernetes
	if k.Namespace == "" || k.ServiceAccount.Name == "" || c.Subject != serviceaccount.MakeUsername(k.Namespace, k.ServiceAccount.Name) {
		return nil, false, errInvalid
	}
	base := serviceaccount.ServiceAccountInfo{Namespace: k.Namespace, Name: k.ServiceAccount.Name, UID: k.ServiceAccount.UID, CredentialID: "JTI=" + c.ID}
	info := base
	if err := a.checkBound(ctx, k, &info); err != nil {
		return nil, false, errInvalid
	}
	now := a.now()
	a.cache.put(key, &cachedToken{exp: c.ExpiresAt.Time, auds: c.Audience, k: k, base: base, info: info, checked: now}, now)
	return &authenticator.Response{User: info.UserInfo(), Audiences: auds}, true, nil
}

// fromCache answers for a token verified before: still unexpired, audience
// intersecting, bound objects re-checked when the last check is older than
// saCacheRecheck.
func (a *SATokenAuthenticator) fromCache(ctx context.Context, key [32]byte, e *cachedToken, wanted authenticator.Audiences) (*authenticator.Response, bool, error) {
	now := a.now()
	if !now.Before(e.exp) {
		a.cache.del(key)
		return nil, false, errInvalid
	}
	auds := wanted.Intersect(authenticator.Audiences(e.auds))
	if len(auds) == 0 {
		return nil, false, errInvalid
	}
	info := e.info
	if now.Sub(e.checked) >= saCacheRecheck || now.Before(e.checked) {
		info = e.base
		if err := a.checkBound(ctx, e.k, &info); err != nil {
			a.cache.del(key)
			return nil, false, errInvalid
		}
		ne := *e
		ne.info, ne.checked = info, now
		a.cache.put(key, &ne, now)
	}
	return &authenticator.Response{User: info.UserInfo(), Audiences: auds}, true, nil
}

// checkBound rejects tokens whose service account or bound object is gone or
// was recreated (different UID).
func (a *SATokenAuthenticator) checkBound(ctx context.Context, k KubeClaims, info *serviceaccount.ServiceAccountInfo) error {
	sa, err := a.objects.ServiceAccount(ctx, k.Namespace, k.ServiceAccount.Name)
	if err != nil {
		return err
	}
	if string(sa.UID) != k.ServiceAccount.UID {
		return fmt.Errorf("service account %s/%s was recreated", k.Namespace, k.ServiceAccount.Name)
	}
	if k.Pod != nil {
		pod, err := a.objects.Pod(ctx, k.Namespace, k.Pod.Name)
		if err != nil {
			return err
		}
		if string(pod.UID) != k.Pod.UID {
			return fmt.Errorf("pod %s/%s was recreated", k.Namespace, k.Pod.Name)
		}
		if pod.DeletionTimestamp != nil && a.now().After(pod.DeletionTimestamp.Time) {
			return fmt.Errorf("pod %s/%s is deleted", k.Namespace, k.Pod.Name)
		}
		info.PodName, info.PodUID = pod.Name, string(pod.UID)
	}
	if k.Secret != nil {
		s, err := a.objects.Secret(ctx, k.Namespace, k.Secret.Name)
		if err != nil {
			return err
		}
		if string(s.UID) != k.Secret.UID {
			return fmt.Errorf("secret %s/%s was recreated", k.Namespace, k.Secret.Name)
		}
	}
	if k.Node != nil {
		n, err := a.objects.Node(ctx, k.Node.Name)
		if err != nil {
			if apierrors.IsNotFound(err) && k.Pod != nil {
				// Bound to a pod: the pod check is what matters.
				return nil
			}
			return err
		}
		if k.Node.UID != "" && string(n.UID) != k.Node.UID && k.Pod == nil {
			return fmt.Errorf("node %s was recreated", k.Node.Name)
		}
		info.NodeName, info.NodeUID = n.Name, string(n.UID)
	}
	return nil
}

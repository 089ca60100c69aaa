package authn

import (
	"context"
	"crypto/subtle"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/user"
)

// Bootstrap token format and Secret layout, as in Kubernetes
// (k8s.io/cluster-bootstrap): a token "abcdef.0123456789abcdef" lives in the
// kube-system Secret "bootstrap-token-abcdef" of type
// "bootstrap.kubernetes.io/token".
const (
	BootstrapTokenSecretPrefix = "bootstrap-token-"
	BootstrapTokenSecretType   = corev1.SecretType("bootstrap.kubernetes.io/token")
	BootstrapUserPrefix        = "system:bootstrap:"
	BootstrapGroup             = "system:bootstrappers"
	BootstrapGroupPrefix       = "system:bootstrappers:"
)

// ParseBootstrapToken splits "id.secret" ([a-z0-9]{6}.[a-z0-9]{16}); ok is
// false for anything else.
func ParseBootstrapToken(tok string) (id, secret string, ok bool) {
	id, secret, found := strings.Cut(tok, ".")
	if !found || len(id) != 6 || len(secret) != 16 || !lowerAlnum(id) || !lowerAlnum(secret) {
		return "", "", false
	}
	return id, secret, true
}

func lowerAlnum(s string) bool {
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') {
			return false
		}
	}
	return true
}

// SecretGetter reads kube-system Secrets.
type SecretGetter interface {
	Secret(ctx context.Context, ns, name string) (*corev1.Secret, error)
}

// BootstrapTokenAuthenticator authenticates bootstrap tokens against their
// Secrets: matching secret (constant-time), not expired, not being deleted,
// usage-bootstrap-authentication "true".
type BootstrapTokenAuthenticator struct {
	secrets SecretGetter
	now     func() time.Time
}

// NewBootstrapTokenAuthenticator returns the authenticator.
func NewBootstrapTokenAuthenticator(secrets SecretGetter, now func() time.Time) *BootstrapTokenAuthenticator {
	if now == nil {
		now = time.Now
	}
	return &BootstrapTokenAuthenticator{secrets: secrets, now: now}
}

// AuthenticateToken implements authenticator.Token.
func (a *BootstrapTokenAuthenticator) AuthenticateToken(ctx context.Context, tok string) (*authenticator.Response, bool, error) {
	id, secret, ok := ParseBootstrapToken(tok)
	if !ok {
		return nil, false, nil
	}
	s, err := a.secrets.Secret(ctx, metav1.NamespaceSystem, BootstrapTokenSecretPrefix+id)
	if apierrors.IsNotFound(err) {
		return nil, false, errInvalid
	}
	if err != nil {
		return nil, false, fmt.Errorf("bootstrap token: %w", err)
	}
	if s.Type != BootstrapTokenSecretType || s.DeletionTimestamp != nil {
		return nil, false, errInvalid
	}
	if subtle.ConstantTimeCompare(s.Data["token-id"], []byte(id)) != 1 ||
		subtle.ConstantTimeCompare(s.Data["token-secret"], []byte(secret)) != 1 {
		return nil, false, errInvalid
	}
	if BootstrapTokenExpired(s, a.now()) {
		return nil, false, errInvalid
	}
	if string(s.Data["usage-bootstrap-authentication"]) != "true" {
		return nil, false, errInvalid
	}
	groups, err := BootstrapTokenGroups(s)
	if err != nil {
		return nil, false, errInvalid
	}
	return &authenticator.Response{User: &user.DefaultInfo{Name: BootstrapUserPrefix + id, Groups: groups}}, true, nil
}

// BootstrapTokenExpired reports whether the Secret's "expiration" (RFC 3339)
// has passed; a malformed expiration counts as expired.
func BootstrapTokenExpired(s *corev1.Secret, now time.Time) bool {
	exp, ok := s.Data["expiration"]
	if !ok || len(exp) == 0 {
		return false
	}
	t, err := time.Parse(time.RFC3339, string(exp))
	return err != nil || !now.Before(t)
}

// BootstrapTokenGroups returns system:bootstrappers plus the Secret's
// auth-extra-groups, each of which must start with system:bootstrappers:.
func BootstrapTokenGroups(s *corev1.Secret) ([]string, error) {
	groups := []string{BootstrapGroup}
	for _, g := range strings.Split(string(s.Data["auth-extra-groups"]), ",") {
		g = strings.TrimSpace(g)
		if g == "" {
			continue
		}
		if !strings.HasPrefix(g, BootstrapGroupPrefix) {
			return nil, fmt.Errorf("extra group %q does not start with %s", g, BootstrapGroupPrefix)
		}
		groups = append(groups, g)
	}
	return groups, nil
}

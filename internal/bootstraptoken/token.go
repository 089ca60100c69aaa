// Package bootstraptoken manages bootstrap tokens — the short-lived shared
// secrets a new node uses to ask for its first client certificate (kubelet
// TLS bootstrapping) — in the same Secret format as Kubernetes and kubeadm,
// and keeps the kube-public/cluster-info ConfigMap signed with them so a
// joining node can verify the hub it talks to.
package bootstraptoken

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"math/big"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-dev/tether/internal/apiserver/authn"
)

// Options describe a new token.
type Options struct {
	// Token is "id.secret"; empty generates one.
	Token string
	// TTL; zero means never expires (flagged as insecure by tether check).
	TTL time.Duration
	// Description is stored with the token.
	Description string
	// Groups are extra groups (each must start with system:bootstrappers:).
	Groups []string
	// Usages; zero value {authentication, signing}.
	Usages []string
}

// Token is a bootstrap token as listed.
type Token struct {
	ID, Token   string
	Expires     *time.Time
	Usages      []string
	Groups      []string
	Description string
}

const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

func random(n int) (string, error) {
	b := make([]byte, n)
	for i := range b {
		v, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		if err != nil {
			return "", err
		}
		b[i] = alphabet[v.Int64()]
	}
	return string(b), nil
}

// Generate returns a fresh random "id.secret".
func Generate() (string, error) {
	id, err := random(6)
	if err != nil {
		return "", err
	}
	secret, err := random(16)
	if err != nil {
		return "", err
	}
	return id + "." + secret, nil
}

// Create stores a token Secret in kube-system and returns the token.
func Create(ctx context.Context, c kubernetes.Interface, o Options) (string, error) {
	tok := o.Token
	if tok == "" {
		var err error
		if tok, err = Generate(); err != nil {
			return "", err
		}
	}
	id, secret, ok := authn.ParseBootstrapToken(tok)
	if !ok {
		return "", fmt.Errorf("token %q does not match [a-z0-9]{6}.[a-z0-9]{16}", tok)
	}
	usages := o.Usages
	if len(usages) == 0 {
		usages = []string{"authentication", "signing"}
	}
	data := map[string][]byte{"token-id": []byte(id), "token-secret": []byte(secret)}
	if o.Description != "" {
		data["description"] = []byte(o.Description)
	}
	if o.TTL > 0 {
		data["expiration"] = []byte(time.Now().Add(o.TTL).UTC().Format(time.RFC3339))
	}
	for _, u := range usages {
		switch u {
		case "authentication", "signing":
			data["usage-bootstrap-"+u] = []byte("true")
		default:
			return "", fmt.Errorf("unknown usage %q (authentication, signing)", u)
		}
	}
	for _, g := range o.Groups {
		if !strings.HasPrefix(g, authn.BootstrapGroupPrefix) {
			return "", fmt.Errorf("group %q must start with %s", g, authn.BootstrapGroupPrefix)
		}
	}
	if len(o.Groups) > 0 {
		data["auth-extra-groups"] = []byte(strings.Join(o.Groups, ","))
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: authn.BootstrapTokenSecretPrefix + id, Namespace: metav1.NamespaceSystem},
		Type:       authn.BootstrapTokenSecretType,
		Data:       data,
	}
	_, err := c.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, s, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		existing, gerr := c.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, s.Name, metav1.GetOptions{})
		if gerr == nil && string(existing.Data["token-secret"]) == secret {
			return tok, nil // same token again: idempotent
		}
		return "", fmt.Errorf("a token with id %s already exists", id)
	}
	if err != nil {
		return "", fmt.Errorf("create token: %w", err)
	}
	return tok, nil
}

// List returns the bootstrap tokens, secrets included only if withSecret.
func List(ctx context.Context, c kubernetes.Interface, withSecret bool) ([]Token, error) {
	list, err := c.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{FieldSelector: "type=" + string(authn.BootstrapTokenSecretType)})
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	var out []Token
	for _, s := range list.Items {
		t := Token{ID: string(s.Data["token-id"]), Description: string(s.Data["description"])}
		if withSecret {
			t.Token = t.ID + "." + string(s.Data["token-secret"])
		}
		if exp, err := time.Parse(time.RFC3339, string(s.Data["expiration"])); err == nil {
			t.Expires = &exp
		}
		for k, v := range s.Data {
			if u, ok := strings.CutPrefix(k, "usage-bootstrap-"); ok && string(v) == "true" {
				t.Usages = append(t.Usages, u)
			}
		}
		sort.Strings(t.Usages)
		if g := string(s.Data["auth-extra-groups"]); g != "" {
			t.Groups = strings.Split(g, ",")
		}
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Delete removes a token by id or by "id.secret".
func Delete(ctx context.Context, c kubernetes.Interface, idOrToken string) error {
	id, _, _ := strings.Cut(idOrToken, ".")
	err := c.CoreV1().Secrets(metav1.NamespaceSystem).Delete(ctx, authn.BootstrapTokenSecretPrefix+id, metav1.DeleteOptions{})
	if err != nil {
		return fmt.Errorf("delete token %s: %w", id, err)
	}
	return nil
}

// DetachedJWS signs content with the token (HS256, kid = token id) and
// returns the detached compact serialization "header..signature" that
// kubeadm stores as jws-kubeconfig-<id> in cluster-info.
func DetachedJWS(content, id, secret string) string {
	header := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","kid":"` + id + `"}`))
	payload := base64.RawURLEncoding.EncodeToString([]byte(content))
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(header + "." + payload))
	return header + ".." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// VerifyDetachedJWS checks a signature made by DetachedJWS.
func VerifyDetachedJWS(sig, content, id, secret string) bool {
	return hmac.Equal([]byte(sig), []byte(DetachedJWS(content, id, secret)))
}

package authn

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/request/bearertoken"
	tokenunion "k8s.io/apiserver/pkg/authentication/token/union"
)

const fuzzIssuer = "https://kubernetes.default.svc.cluster.local"

var fuzzAudiences = []string{"https://kubernetes.default.svc"}

// fakeObjects holds one service account, one pod and one bootstrap-token
// Secret; everything else is NotFound.
type fakeObjects struct {
	sa     *corev1.ServiceAccount
	pod    *corev1.Pod
	secret *corev1.Secret
}

func notFound(res, name string) error {
	return apierrors.NewNotFound(schema.GroupResource{Resource: res}, name)
}

func (o *fakeObjects) ServiceAccount(_ context.Context, ns, name string) (*corev1.ServiceAccount, error) {
	if o.sa != nil && ns == o.sa.Namespace && name == o.sa.Name {
		return o.sa, nil
	}
	return nil, notFound("serviceaccounts", name)
}

func (o *fakeObjects) Pod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	if o.pod != nil && ns == o.pod.Namespace && name == o.pod.Name {
		return o.pod, nil
	}
	return nil, notFound("pods", name)
}

func (o *fakeObjects) Secret(_ context.Context, ns, name string) (*corev1.Secret, error) {
	if o.secret != nil && ns == o.secret.Namespace && name == o.secret.Name {
		return o.secret, nil
	}
	return nil, notFound("secrets", name)
}

func (o *fakeObjects) Node(_ context.Context, name string) (*corev1.Node, error) {
	return nil, notFound("nodes", name)
}

type fuzzFixture struct {
	sa        *SATokenAuthenticator
	boot      *BootstrapTokenAuthenticator
	objects   *fakeObjects
	valid     string // an SA token that authenticates
	podBound  string // an SA token bound to the pod, also valid
	bootToken string // a bootstrap token that authenticates
}

func newFuzzFixture(tb testing.TB) *fuzzFixture {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	objs := &fakeObjects{
		sa:  &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "sa", UID: types.UID("sa-uid")}},
		pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: types.UID("pod-uid")}},
		secret: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: metav1.NamespaceSystem, Name: BootstrapTokenSecretPrefix + "abcdef"},
			Type: BootstrapTokenSecretType, Data: map[string][]byte{"token-id": []byte("abcdef"), "token-secret": []byte("0123456789abcdef"),
				"usage-bootstrap-authentication": []byte("true")}},
	}
	iss, err := NewIssuer(fuzzIssuer, key, nil)
	if err != nil {
		tb.Fatal(err)
	}
	valid, _, err := iss.Issue(objs.sa, fuzzAudiences, time.Hour, nil, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	podBound, _, err := iss.Issue(objs.sa, fuzzAudiences, time.Hour, objs.pod, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	// A second verification key (rotation) that signs nothing here.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sa, err := NewSATokenAuthenticator([]string{fuzzIssuer}, []crypto.PublicKey{key.Public(), other.Public()}, fuzzAudiences, objs, nil)
	if err != nil {
		tb.Fatal(err)
	}
	fx := &fuzzFixture{sa: sa, boot: NewBootstrapTokenAuthenticator(objs, nil), objects: objs, valid: valid, podBound: podBound,
		bootToken: "abcdef.0123456789abcdef"}
	for _, tok := range []string{valid, podBound} {
		if _, ok, err := sa.AuthenticateToken(context.Background(), tok); !ok || err != nil {
			tb.Fatalf("fixture token does not authenticate: %v", err)
		}
	}
	return fx
}

// FuzzSATokenAuthenticator feeds arbitrary strings and mutations of valid
// tokens to the service-account authenticator: it must never panic and never
// accept anything but the unmodified valid tokens.
func FuzzSATokenAuthenticator(f *testing.F) {
	fx := newFuzzFixture(f)
	f.Add("", uint16(0), byte(0))
	f.Add(fx.valid, uint16(0), byte(0))
	f.Add(fx.valid, uint16(len(fx.valid)-1), byte('A'))
	// Flip the unused low bits of the signature's last base64 character.
	f.Add("", uint16(len(fx.valid)-1), flipLowBit(fx.valid[len(fx.valid)-1]))
	f.Add(fx.podBound, uint16(10), byte('.'))
	f.Add("eyJhbGciOiJub25lIn0.e30.", uint16(0), byte(0))
	f.Add("a.b.c", uint16(1), byte('x'))
	f.Add(strings.Repeat(".", 100), uint16(3), byte('e'))
	f.Fuzz(func(t *testing.T, raw string, pos uint16, b byte) {
		ctx := authenticator.WithAudiences(context.Background(), fuzzAudiences)
		check := func(tok string) {
			resp, ok, err := fx.sa.AuthenticateToken(ctx, tok)
			if !ok {
				if resp != nil {
					t.Fatalf("response without ok for %q", tok)
				}
				return
			}
			if err != nil {
				t.Fatalf("ok with error %v", err)
			}
			if tok != fx.valid && tok != fx.podBound {
				t.Fatalf("modified token accepted: %q", tok)
			}
			if resp.User.GetName() != "system:serviceaccount:ns:sa" {
				t.Fatalf("user %q", resp.User.GetName())
			}
		}
		check(raw)
		// Mutate a valid token: replace one byte, or insert the fuzz string.
		for _, base := range []string{fx.valid, fx.podBound} {
			i := int(pos) % (len(base) + 1)
			if i < len(base) {
				m := []byte(base)
				m[i] = b
				check(string(m))
			}
			check(base[:i] + raw + base[i:])
		}
	})
}

const b64url = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// flipLowBit returns the base64url character whose value differs from c's
// in the lowest bit.
func flipLowBit(c byte) byte { return b64url[strings.IndexByte(b64url, c)^1] }

// A signature's last base64 character carries unused low bits; a token that
// differs only there must not authenticate (tokens are not malleable, so a
// cache keyed by the token string sees one token as one key).
func TestSATokenNotMalleable(t *testing.T) {
	fx := newFuzzFixture(t)
	m := fx.valid[:len(fx.valid)-1] + string(flipLowBit(fx.valid[len(fx.valid)-1]))
	if _, ok, _ := fx.sa.AuthenticateToken(context.Background(), m); ok {
		t.Fatalf("token with flipped padding bits accepted")
	}
}

// FuzzParseBootstrapToken: never panics; ok means the exact format.
func FuzzParseBootstrapToken(f *testing.F) {
	for _, s := range []string{"", "abcdef.0123456789abcdef", "ABCDEF.0123456789abcdef", "abcdef.0123456789abcde", ".", "abcdef..123456789abcdef", "abcdé.0123456789abcdef"} {
		f.Add(s)
	}
	fx := newFuzzFixture(f)
	f.Fuzz(func(t *testing.T, tok string) {
		id, secret, ok := ParseBootstrapToken(tok)
		if !ok {
			if id != "" || secret != "" {
				t.Fatalf("parts returned with !ok: %q %q", id, secret)
			}
		} else {
			if id+"."+secret != tok || len(id) != 6 || len(secret) != 16 {
				t.Fatalf("%q parsed as %q.%q", tok, id, secret)
			}
			for _, r := range id + secret {
				if (r < 'a' || r > 'z') && (r < '0' || r > '9') {
					t.Fatalf("%q: bad character %q accepted", tok, r)
				}
			}
		}
		_, authed, _ := fx.boot.AuthenticateToken(context.Background(), tok)
		if authed && tok != fx.bootToken {
			t.Fatalf("bootstrap token %q accepted", tok)
		}
	})
}

// FuzzBearerHeader sends arbitrary Authorization headers through the chain
// the hub builds (bearertoken.New over the union of token authenticators):
// no panic, and only the exact valid tokens authenticate.
func FuzzBearerHeader(f *testing.F) {
	fx := newFuzzFixture(f)
	auth := bearertoken.New(tokenunion.New(fx.sa, fx.boot))
	for _, s := range []string{"", "Bearer", "Bearer ", "Bearer  ", "bearer " + fx.valid, "Bearer " + fx.valid, "Bearer " + fx.bootToken,
		"Basic Zm9vOmJhcg==", "Bearer " + fx.valid + " extra", "Bearer\t" + fx.bootToken, "Bearer " + fx.valid[:len(fx.valid)-2]} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		req, err := http.NewRequest("GET", "https://127.0.0.1/api", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header["Authorization"] = []string{header}
		resp, ok, err := auth.AuthenticateRequest(req)
		if !ok {
			return
		}
		if err != nil || resp == nil {
			t.Fatalf("ok with err=%v resp=%v", err, resp)
		}
		// The token is the second space-separated part, as upstream's
		// bearertoken parses it (trailing parts are ignored there too).
		parts := strings.SplitN(strings.TrimSpace(header), " ", 3)
		if len(parts) < 2 || !strings.EqualFold(parts[0], "bearer") || (parts[1] != fx.valid && parts[1] != fx.podBound && parts[1] != fx.bootToken) {
			t.Fatalf("header %q authenticated as %q", header, resp.User.GetName())
		}
		if req.Header.Get("Authorization") != "" {
			t.Fatal("Authorization header not stripped after success")
		}
	})
}

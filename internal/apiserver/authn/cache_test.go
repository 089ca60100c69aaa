package authn

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/authentication/authenticator"
)

// countingObjects counts pod lookups and can drop the pod.
type countingObjects struct {
	fakeObjects
	mu   sync.Mutex
	pods atomic.Int64
}

func (o *countingObjects) Pod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	o.pods.Add(1)
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.fakeObjects.Pod(ctx, ns, name)
}

func (o *countingObjects) setPod(p *corev1.Pod) {
	o.mu.Lock()
	o.pod = p
	o.mu.Unlock()
}

func TestSATokenCache(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var clock atomic.Int64
	clock.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	advance := func(d time.Duration) { clock.Add(int64(d)) }
	objs := &countingObjects{fakeObjects: fakeObjects{
		sa:  &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "sa", UID: types.UID("sa-uid")}},
		pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: types.UID("pod-uid")}},
	}}
	iss, err := NewIssuer(fuzzIssuer, key, now)
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewSATokenAuthenticator([]string{fuzzIssuer}, []crypto.PublicKey{key.Public()}, fuzzAudiences, objs, now)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := iss.Issue(objs.sa, fuzzAudiences, 10*time.Minute, objs.pod, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	auth := func() bool {
		t.Helper()
		resp, ok, _ := a.AuthenticateToken(ctx, tok)
		if ok && resp.User.GetExtra()["authentication.kubernetes.io/pod-name"][0] != "p" {
			t.Fatalf("pod-name extra missing: %v", resp.User.GetExtra())
		}
		return ok
	}
	if !auth() {
		t.Fatal("fresh token rejected")
	}
	n := objs.pods.Load()
	for range 100 {
		if !auth() {
			t.Fatal("cached token rejected")
		}
	}
	if got := objs.pods.Load(); got != n {
		t.Fatalf("bound pod looked up %d more times within the recheck interval", got-n)
	}
	// Another audience is still refused from the cache.
	if _, ok, _ := a.AuthenticateToken(authenticator.WithAudiences(ctx, authenticator.Audiences{"other"}), tok); ok {
		t.Fatal("cached token accepted for another audience")
	}
	// The pod goes away: within the recheck interval the cache still
	// answers; after it, the token is refused and stays refused.
	objs.setPod(nil)
	advance(saCacheRecheck)
	if auth() {
		t.Fatal("token of a deleted pod accepted after the recheck interval")
	}
	if auth() {
		t.Fatal("token of a deleted pod accepted on retry")
	}
	// A recreated pod (same name, new UID) does not revive it.
	objs.setPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: types.UID("other-uid")}})
	if auth() {
		t.Fatal("token accepted for a recreated pod")
	}
	// Expiry is honoured from the cache.
	objs.setPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: types.UID("pod-uid")}})
	if !auth() {
		t.Fatal("token rejected with its pod back")
	}
	advance(10*time.Minute - saCacheRecheck - time.Nanosecond)
	if !auth() {
		t.Fatal("token rejected just before expiry")
	}
	advance(time.Nanosecond)
	if auth() {
		t.Fatal("expired token accepted from the cache")
	}
	if a.cache.len() != 0 {
		t.Fatalf("expired entry kept: %d", a.cache.len())
	}
}

func TestTokenCacheBounded(t *testing.T) {
	c := newTokenCache(8)
	now := time.Now()
	for i := range 100 {
		c.put(tokenKey(string(rune('a'+i))), &cachedToken{exp: now.Add(time.Hour)}, now)
		if c.len() > 8 {
			t.Fatalf("cache grew to %d", c.len())
		}
	}
}

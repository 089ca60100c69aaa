package authn

import (
	"crypto/sha256"
	"sync"
	"time"

	"k8s.io/apiserver/pkg/authentication/serviceaccount"
)

// Service-account token cache: a verified token's signature and claims are
// remembered (keyed by sha256 of the token, never the token itself) until
// the token expires; the bound objects (service account, pod, secret, node)
// are re-checked at most every recheck interval, so a deleted pod revokes
// its tokens within that interval (plus informer lag). Only tokens that
// authenticated are stored, so garbage cannot fill it.
const (
	saCacheSize    = 4096
	saCacheRecheck = 3 * time.Second
)

type cachedToken struct {
	exp     time.Time
	auds    []string
	k       KubeClaims
	base    serviceaccount.ServiceAccountInfo // before checkBound
	info    serviceaccount.ServiceAccountInfo // after the last checkBound
	checked time.Time
}

type tokenCache struct {
	mu  sync.Mutex
	m   map[[32]byte]*cachedToken // entries are never mutated, only replaced
	max int
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{m: make(map[[32]byte]*cachedToken), max: max}
}

func tokenKey(raw string) [32]byte { return sha256.Sum256([]byte(raw)) }

func (c *tokenCache) get(k [32]byte) (*cachedToken, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	return e, ok
}

func (c *tokenCache) del(k [32]byte) {
	c.mu.Lock()
	delete(c.m, k)
	c.mu.Unlock()
}

func (c *tokenCache) put(k [32]byte, e *cachedToken, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		// Full: drop the expired, else one arbitrary entry.
		for key, old := range c.m {
			if !now.Before(old.exp) {
				delete(c.m, key)
			}
		}
		for key := range c.m {
			if len(c.m) < c.max {
				break
			}
			delete(c.m, key)
		}
	}
	c.m[k] = e
}

func (c *tokenCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

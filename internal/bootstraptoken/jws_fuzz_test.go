package bootstraptoken

import (
	"strings"
	"testing"
)

// FuzzDetachedJWS: signing arbitrary content never panics, the signature
// has the detached "header..signature" shape and verifies; any other
// signature, content, id or secret does not.
func FuzzDetachedJWS(f *testing.F) {
	f.Add("apiVersion: v1\nkind: Config\n", "abcdef", "0123456789abcdef", "", uint16(0), byte(0))
	f.Add("", "", "", "..", uint16(3), byte('x'))
	f.Add("x", "abc\"def", "s", "eyJhbGciOiJub25lIn0..", uint16(1), byte('.'))
	f.Fuzz(func(t *testing.T, content, id, secret, other string, pos uint16, b byte) {
		sig := DetachedJWS(content, id, secret)
		if !strings.Contains(sig, "..") || strings.Count(sig, ".") < 2 {
			t.Fatalf("not a detached JWS: %q", sig)
		}
		if !VerifyDetachedJWS(sig, content, id, secret) {
			t.Fatal("own signature does not verify")
		}
		if other != sig && VerifyDetachedJWS(other, content, id, secret) {
			t.Fatalf("foreign signature %q verifies", other)
		}
		m := []byte(sig)
		i := int(pos) % len(m)
		if m[i] != b {
			m[i] = b
			if VerifyDetachedJWS(string(m), content, id, secret) {
				t.Fatalf("mutated signature %q verifies", m)
			}
		}
		// HMAC zero-pads short keys, so keys differing only in trailing NULs
		// are the same key (real token secrets are [a-z0-9]{16}).
		if strings.TrimRight(secret, "\x00") != strings.TrimRight(other, "\x00") && VerifyDetachedJWS(sig, content, id, other) {
			t.Fatal("verifies with another secret")
		}
		if content != other && VerifyDetachedJWS(sig, other, id, secret) {
			t.Fatal("verifies for other content")
		}
	})
}

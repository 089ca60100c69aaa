// Package tlspolicy is the TLS policy of every tether listener: TLS 1.2 or
// newer, and for TLS 1.2 only forward-secret AEAD cipher suites (ECDHE with
// AES-GCM or ChaCha20-Poly1305). Go's own defaults also accept ECDHE suites
// with CBC and SHA-1 and static-RSA suites; tether offers those only when an
// operator lists them in a cipher-suites flag, and then warns.
package tlspolicy

import (
	"crypto/tls"
	"fmt"
	"slices"
	"strings"
)

// Default returns the TLS 1.2 suites tether listeners accept when no
// cipher-suites flag is given. TLS 1.3 suites are not configurable in Go and
// are all AEAD.
func Default() []uint16 {
	return []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	}
}

// Parse turns a cipher-suites flag (IANA names as Go spells them) into suite
// IDs. An empty list means Default. Suites Go rates insecure (RC4, 3DES,
// CBC-SHA256) are refused; suites outside Default that Go still accepts
// (CBC-SHA1, static RSA key exchange) are allowed: see Weak.
func Parse(flag string, names []string) ([]uint16, error) {
	if len(names) == 0 {
		return Default(), nil
	}
	byName := map[string]uint16{}
	for _, s := range tls.CipherSuites() {
		if slices.Contains(s.SupportedVersions, tls.VersionTLS12) {
			byName[s.Name] = s.ID
		}
	}
	insecure := map[string]bool{}
	for _, s := range tls.InsecureCipherSuites() {
		insecure[s.Name] = true
	}
	var ids []uint16
	for _, n := range names {
		n = strings.TrimSpace(n)
		id, ok := byName[n]
		switch {
		case insecure[n]:
			return nil, fmt.Errorf("%s: %s is insecure and not supported", flag, n)
		case !ok:
			return nil, fmt.Errorf("%s: unknown cipher suite %q (TLS 1.3 suites are not configurable)", flag, n)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// Weak returns the names of the suites in ids that Default leaves out
// (no forward secrecy or no AEAD); callers warn about them.
func Weak(ids []uint16) []string {
	var weak []string
	for _, id := range ids {
		if !slices.Contains(Default(), id) {
			weak = append(weak, tls.CipherSuiteName(id))
		}
	}
	return weak
}

// Names returns the IANA names of ids, for logs and help texts.
func Names(ids []uint16) []string {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		out = append(out, tls.CipherSuiteName(id))
	}
	return out
}

package hub

import (
	"crypto/tls"
	"net"
	"net/url"
	"testing"
	"time"
)

// The API port speaks TLS 1.2+ with forward-secret AEAD suites only: a client
// offering nothing but a CBC-SHA1 or a static-RSA suite is refused.
func TestAPIRefusesWeakCipherSuites(t *testing.T) {
	h := startHub(t, nil)
	u, err := url.Parse(h.Admin.Host)
	if err != nil {
		t.Fatal(err)
	}
	try := func(v uint16, suite uint16) error {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", u.Host,
			&tls.Config{InsecureSkipVerify: true, MinVersion: v, MaxVersion: v, CipherSuites: []uint16{suite}}) //nolint:gosec // probe
		if err == nil {
			conn.Close()
		}
		return err
	}
	for _, s := range []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_RSA_WITH_AES_128_GCM_SHA256} {
		if err := try(tls.VersionTLS12, s); err == nil {
			t.Errorf("%s accepted", tls.CipherSuiteName(s))
		}
	}
	if err := try(tls.VersionTLS11, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA); err == nil {
		t.Error("TLS 1.1 accepted")
	}
	// The generated serving key is ECDSA.
	for _, s := range []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256} {
		if err := try(tls.VersionTLS12, s); err != nil {
			t.Errorf("%s refused: %v", tls.CipherSuiteName(s), err)
		}
	}
}

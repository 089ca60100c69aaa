package tlspolicy

import (
	"crypto/tls"
	"slices"
	"strings"
	"testing"
)

func TestDefaultIsForwardSecretAEAD(t *testing.T) {
	for _, name := range Names(Default()) {
		if !strings.HasPrefix(name, "TLS_ECDHE_") || !(strings.Contains(name, "_GCM_") || strings.Contains(name, "CHACHA20")) {
			t.Errorf("default suite %s is not ECDHE+AEAD", name)
		}
	}
}

func TestParse(t *testing.T) {
	ids, err := Parse("--x", nil)
	if err != nil || !slices.Equal(ids, Default()) || Weak(ids) != nil {
		t.Fatalf("empty: %v %v", ids, err)
	}
	ids, err = Parse("--x", []string{"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", " TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"})
	if weak := Weak(ids); err != nil || len(ids) != 2 || !slices.Equal(weak, []string{"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"}) {
		t.Fatalf("explicit CBC: %v %v %v", ids, weak, err)
	}
	for _, bad := range []string{"TLS_RSA_WITH_RC4_128_SHA", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", "nope", "TLS_AES_128_GCM_SHA256"} {
		if _, err := Parse("--x", []string{bad}); err == nil || !strings.Contains(err.Error(), "--x") {
			t.Errorf("%s accepted: %v", bad, err)
		}
	}
}

// A listener with the default policy refuses a client that offers only a
// CBC-SHA1 suite, and accepts one offering an AEAD suite.
func TestHandshakeRefusesCBC(t *testing.T) {
	srvCfg := &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: Default(), Certificates: []tls.Certificate{selfSigned(t)}}
	try := func(suite uint16) error {
		c, s := pipe(t)
		errc := make(chan error, 1)
		go func() { errc <- tls.Server(s, srvCfg).Handshake(); s.Close() }()
		cli := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{suite}}) //nolint:gosec // test
		err := cli.Handshake()
		c.Close()
		<-errc
		return err
	}
	if err := try(tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA); err == nil {
		t.Error("CBC-SHA1 suite accepted by the default policy")
	}
	if err := try(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); err != nil {
		t.Errorf("AEAD suite refused: %v", err)
	}
}

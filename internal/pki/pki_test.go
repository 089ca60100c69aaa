package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func newTestCA(t testing.TB) *CA {
	t.Helper()
	ca, err := NewCA("test-ca", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func verify(ca *CA, cert *x509.Certificate, usage x509.ExtKeyUsage, dnsName string) error {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	_, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}, DNSName: dnsName})
	return err
}

func TestNewCA(t *testing.T) {
	ca := newTestCA(t)
	c := ca.Cert
	if !c.IsCA || c.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Fatalf("CA flags wrong: IsCA=%v usage=%v", c.IsCA, c.KeyUsage)
	}
	if k, ok := ca.Key.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
		t.Fatalf("CA key is %T, want ECDSA P-256", ca.Key)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Fatalf("not self-signed: %v", err)
	}
	if p, err := ParseCertPEM(ca.CertPEM); err != nil || !p.Equal(c) {
		t.Fatalf("CertPEM does not round-trip: %v", err)
	}
	if _, err := NewCA("", time.Hour); err == nil {
		t.Fatal("empty CN accepted")
	}
}

func TestIssue(t *testing.T) {
	ca := newTestCA(t)
	server, client := x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth
	tests := []struct {
		name    string
		spec    CertSpec
		ok, bad []x509.ExtKeyUsage
		dns     string
	}{
		{"server", CertSpec{CommonName: "srv", DNSNames: []string{"hub.example"}, IPs: []net.IP{net.ParseIP("10.96.0.1")}, Usages: []x509.ExtKeyUsage{server}}, []x509.ExtKeyUsage{server}, []x509.ExtKeyUsage{client}, "hub.example"},
		{"client", CertSpec{CommonName: "tether-admin", Organization: []string{"system:masters"}, Usages: []x509.ExtKeyUsage{client}}, []x509.ExtKeyUsage{client}, []x509.ExtKeyUsage{server}, ""},
		{"both", CertSpec{CommonName: "system:node:a", Organization: []string{"system:nodes"}, DNSNames: []string{"a"}, Usages: []x509.ExtKeyUsage{server, client}, Validity: time.Hour}, []x509.ExtKeyUsage{server, client}, nil, "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now()
			certPEM, keyPEM, err := ca.Issue(tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			cert, err := ParseCertPEM(certPEM)
			if err != nil {
				t.Fatal(err)
			}
			key, err := ParseKey(keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			if err := keyMatches(cert, key); err != nil {
				t.Fatal(err)
			}
			if k, ok := key.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
				t.Fatalf("key is %T, want ECDSA P-256", key)
			}
			for _, u := range tt.ok {
				if err := verify(ca, cert, u, tt.dns); err != nil {
					t.Errorf("verify usage %v: %v", u, err)
				}
			}
			for _, u := range tt.bad {
				if err := verify(ca, cert, u, tt.dns); err == nil {
					t.Errorf("verify usage %v succeeded, want failure", u)
				}
			}
			if cert.Subject.CommonName != tt.spec.CommonName || strings.Join(cert.Subject.Organization, ",") != strings.Join(tt.spec.Organization, ",") {
				t.Errorf("subject = %v", cert.Subject)
			}
			if cert.IsCA {
				t.Error("leaf is a CA")
			}
			if d := before.Add(-backdate).Sub(cert.NotBefore); d < -time.Second || d > 2*time.Second {
				t.Errorf("NotBefore = %v, want now-5m", cert.NotBefore)
			}
			wantAfter := before.Add(tt.spec.Validity)
			if tt.spec.Validity == 0 {
				wantAfter = ca.Cert.NotAfter // 1 year, capped at the CA's 24h
			}
			if d := cert.NotAfter.Sub(wantAfter); d < -time.Second || d > 2*time.Second {
				t.Errorf("NotAfter = %v, want %v", cert.NotAfter, wantAfter)
			}
			if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() > 128 || cert.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %v not a random 128-bit number", cert.SerialNumber)
			}
		})
	}

	// Default validity is one year under a long-lived CA.
	long, err := NewCA("long", 10*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := long.Issue(CertSpec{CommonName: "x", Usages: []x509.ExtKeyUsage{client}})
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := ParseCertPEM(certPEM)
	if d := time.Until(cert.NotAfter) - 365*24*time.Hour; d < -time.Minute || d > time.Minute {
		t.Errorf("default validity off by %v", d)
	}

	for _, spec := range []CertSpec{{Usages: []x509.ExtKeyUsage{client}}, {CommonName: "no-usage"}} {
		if _, _, err := ca.Issue(spec); err == nil {
			t.Errorf("Issue(%+v) succeeded, want error", spec)
		}
	}
}

func makeCSR(t testing.TB, key crypto.Signer, cn string) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: cn, Organization: []string{"evil"}}, DNSNames: []string{"evil.example"},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestSignCSR(t *testing.T) {
	ca := newTestCA(t)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	smallRSA, _ := rsa.GenerateKey(rand.Reader, 1024)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	spec := CertSpec{CommonName: "system:node:n1", Organization: []string{"system:nodes"}, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	tests := []struct {
		name    string
		key     crypto.Signer
		wantErr bool
	}{
		{"ecdsa", ec, false},
		{"rsa", rsaKey, false},
		{"ed25519", edKey, false},
		{"rsa-1024", smallRSA, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPEM, err := ca.SignCSR(makeCSR(t, tt.key, "system:node:n1"), spec)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			cert, err := ParseCertPEM(certPEM)
			if err != nil {
				t.Fatal(err)
			}
			if err := keyMatches(cert, tt.key); err != nil {
				t.Fatal("certificate does not carry the CSR's key")
			}
			if cert.Subject.CommonName != spec.CommonName || len(cert.Subject.Organization) != 1 || cert.Subject.Organization[0] != "system:nodes" || len(cert.DNSNames) != 0 {
				t.Errorf("subject/SANs from CSR leaked: %v %v", cert.Subject, cert.DNSNames)
			}
			if err := verify(ca, cert, x509.ExtKeyUsageClientAuth, ""); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestParseCSR(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := makeCSR(t, key, "x")
	block, _ := pem.Decode(good)
	tampered := bytes.Clone(block.Bytes)
	tampered[len(tampered)-5] ^= 0xff // inside the signature
	// Flip a byte in the subject CN instead, so the DER still parses.
	subj := bytes.Clone(block.Bytes)
	i := bytes.Index(subj, []byte("evil"))
	subj[i] = 'E'
	tests := []struct {
		name, in, errPart string
	}{
		{"good", string(good), ""},
		{"not pem", "hello", "not PEM"},
		{"wrong type", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: block.Bytes})), "want"},
		{"garbage der", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1, 2, 3}})), "parse CSR"},
		{"bad signature", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: subj})), "signature"},
		{"bad signature bytes", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered})), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCSR([]byte(tt.in))
			if tt.name == "good" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.errPart) {
				t.Fatalf("err = %v, want containing %q", err, tt.errPart)
			}
		})
	}
}

func TestCAHash(t *testing.T) {
	ca := newTestCA(t)
	h := CAHash(ca.Cert)
	if !strings.HasPrefix(h, "sha256:") || len(h) != 7+64 {
		t.Fatalf("CAHash = %q", h)
	}
	t.Run("openssl", func(t *testing.T) {
		if _, err := exec.LookPath("openssl"); err != nil {
			t.Skip("openssl not installed")
		}
		cmd := exec.Command("sh", "-c", "openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum")
		cmd.Stdin = bytes.NewReader(ca.CertPEM)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		if want := "sha256:" + strings.Fields(string(out))[0]; h != want {
			t.Fatalf("CAHash = %s, openssl says %s", h, want)
		}
	})
	other := newTestCA(t)
	tests := []struct {
		name string
		want string
		ok   bool
	}{
		{"match", h, true},
		{"uppercase hex", "sha256:" + strings.ToUpper(h[7:]), true},
		{"other CA", CAHash(other.Cert), false},
		{"no prefix", h[7:], false},
		{"sha1 prefix", "sha1:" + h[7:], false},
		{"short", h[:len(h)-2], false},
		{"not hex", "sha256:" + strings.Repeat("z", 64), false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := CheckCAHash(ca.Cert, tt.want); (err == nil) != tt.ok {
				t.Fatalf("CheckCAHash(%q) = %v, want ok=%v", tt.want, err, tt.ok)
			}
		})
	}
	if CheckCAHash(nil, h) == nil {
		t.Fatal("nil cert accepted")
	}
}

func TestKeys(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	ecDER, _ := x509.MarshalECPrivateKey(ec)
	tests := []struct {
		name string
		pem  []byte
		want crypto.Signer
	}{
		{"pkcs8 ecdsa", must(EncodeKey(ec)), ec},
		{"pkcs8 rsa", must(EncodeKey(rsaKey)), rsaKey},
		{"pkcs8 ed25519", must(EncodeKey(edKey)), edKey},
		{"sec1", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}), ec},
		{"sec1 with params", append([]byte("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"),
			pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})...), ec},
		{"pkcs1", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}), rsaKey},
		{"garbage", []byte("nope"), nil},
		{"cert only", newTestCA(t).CertPEM, nil},
		{"bad der", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{0x30, 0}}), nil},
		{"encrypted", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{0x30, 0}}), nil},
		{"legacy encrypted", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00"}, Bytes: []byte{0x30, 0}}), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseKey(tt.pem)
			if tt.want == nil {
				if err == nil {
					t.Fatal("want error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !got.(interface{ Equal(crypto.PrivateKey) bool }).Equal(tt.want) {
				t.Fatal("parsed key differs")
			}
		})
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestLoadCA(t *testing.T) {
	ca := newTestCA(t)
	keyPEM := must(EncodeKey(ca.Key))
	other := newTestCA(t)
	leafPEM, leafKey, err := ca.Issue(CertSpec{CommonName: "leaf", Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		cert, key []byte
		ok        bool
	}{
		{"good", ca.CertPEM, keyPEM, true},
		{"mismatched key", ca.CertPEM, must(EncodeKey(other.Key)), false},
		{"not a CA", leafPEM, leafKey, false},
		{"corrupt cert", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), keyPEM, false},
		{"no key", ca.CertPEM, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LoadCA(tt.cert, tt.key)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if tt.ok && !got.Cert.Equal(ca.Cert) {
				t.Fatal("loaded a different CA")
			}
		})
	}
}

func FuzzParseCSR(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.Add(makeCSR(f, key, "seed"))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		if csr, err := ParseCSR(data); err == nil && csr == nil {
			t.Fatal("nil CSR without error")
		}
	})
}

func FuzzParseKey(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalECPrivateKey(key)
	f.Add(must(EncodeKey(key)))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte{0x30, 0x03, 0x02, 0x01, 0x00}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		if k, err := ParseKey(data); err == nil && k == nil {
			t.Fatal("nil key without error")
		}
	})
}

func FuzzCheckCAHash(f *testing.F) {
	ca := newTestCA(f)
	f.Add(CAHash(ca.Cert))
	f.Add("sha256:")
	f.Add("sha256:zz")
	f.Add("")
	f.Fuzz(func(t *testing.T, want string) {
		err := CheckCAHash(ca.Cert, want)
		if (err == nil) != (strings.EqualFold(want, CAHash(ca.Cert)) && strings.HasPrefix(want, "sha256:")) {
			t.Fatalf("CheckCAHash(%q) = %v", want, err)
		}
	})
}

// Package pki is tether's certificate authority: it creates and loads the
// cluster CA, issues leaf certificates and signs CSRs, computes kubeadm-style
// CA hashes, keeps the hub's on-disk PKI (EnsureCluster) and writes
// kubeconfigs.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"time"
)

const (
	defaultLeafValidity = 365 * 24 * time.Hour
	backdate            = 5 * time.Minute
)

// CA is a certificate authority that can issue certificates.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
}

// CertSpec describes a leaf certificate.
type CertSpec struct {
	CommonName   string
	Organization []string
	DNSNames     []string
	IPs          []net.IP
	Usages       []x509.ExtKeyUsage // e.g. ExtKeyUsageServerAuth, ExtKeyUsageClientAuth; at least one
	Validity     time.Duration      // zero: 1 year; never beyond the CA's NotAfter
}

// NewCA creates a self-signed ECDSA P-256 CA valid for validity from now.
func NewCA(commonName string, validity time.Duration) (*CA, error) {
	return newCA(commonName, validity, time.Now())
}

func newCA(commonName string, validity time.Duration, now time.Time) (*CA, error) {
	if commonName == "" || validity <= 0 {
		return nil, errors.New("pki: CA needs a common name and a positive validity")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: encodeCert(der)}, nil
}

// LoadCA loads a CA from PEM; the certificate must be a CA and the key must
// match it. CertPEM is the (first) CA certificate re-encoded.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, errors.New("pki: certificate is not a CA")
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	if err := keyMatches(cert, key); err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: encodeCert(cert.Raw)}, nil
}

// Issue creates a new ECDSA P-256 key and a certificate for it as described
// by spec. It returns both as PEM.
func (ca *CA) Issue(spec CertSpec) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: generate key: %w", err)
	}
	if keyPEM, err = EncodeKey(key); err != nil {
		return nil, nil, err
	}
	if certPEM, err = ca.issueFor(key.Public(), spec, time.Now()); err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}

// SignCSR signs the public key of a CSR. The subject, SANs and usages come
// from spec only (the caller has validated the CSR); the CSR's signature is
// checked here.
func (ca *CA) SignCSR(csrPEM []byte, spec CertSpec) (certPEM []byte, err error) {
	csr, err := ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	return ca.issueFor(csr.PublicKey, spec, time.Now())
}

func (ca *CA) issueFor(pub crypto.PublicKey, spec CertSpec, now time.Time) ([]byte, error) {
	if spec.CommonName == "" {
		return nil, errors.New("pki: certificate spec has no common name")
	}
	if len(spec.Usages) == 0 {
		return nil, errors.New("pki: certificate spec has no extended key usages")
	}
	if err := checkPublicKey(pub); err != nil {
		return nil, err
	}
	validity := spec.Validity
	if validity <= 0 {
		validity = defaultLeafValidity
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		usage |= x509.KeyUsageKeyEncipherment
	}
	// Backdate for clock skew, but never by more than a tenth of the
	// lifetime: rotation deadlines are computed from NotBefore, and a
	// short-lived certificate backdated by minutes would be "due" at once.
	skew := min(backdate, validity/10)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: spec.CommonName, Organization: spec.Organization},
		DNSNames:              spec.DNSNames,
		IPAddresses:           spec.IPs,
		NotBefore:             now.Add(-skew),
		NotAfter:              notAfter,
		KeyUsage:              usage,
		ExtKeyUsage:           spec.Usages,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: sign certificate for %q: %w", spec.CommonName, err)
	}
	return encodeCert(der), nil
}

// checkPublicKey rejects weak or unusual public keys in CSRs.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return errors.New("pki: unsupported ECDSA curve")
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("pki: RSA key too small (%d bits, want >= 2048)", k.N.BitLen())
		}
		return nil
	case interface{ Equal(crypto.PublicKey) bool }: // ed25519 and friends
		return nil
	}
	return fmt.Errorf("pki: unsupported public key type %T", pub)
}

// ParseCSR decodes a PEM "CERTIFICATE REQUEST" and checks its signature.
func ParseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return nil, errors.New("pki: CSR is not PEM encoded")
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("pki: PEM block is %q, want \"CERTIFICATE REQUEST\"", block.Type)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: parse CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("pki: CSR signature: %w", err)
	}
	return csr, nil
}

// CAHash returns "sha256:<hex>" of the certificate's SubjectPublicKeyInfo,
// the format of kubeadm's --discovery-token-ca-cert-hash.
func CAHash(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// CheckCAHash reports whether cert's CAHash equals want ("sha256:<hex>"),
// comparing in constant time.
func CheckCAHash(cert *x509.Certificate, want string) error {
	if cert == nil {
		return errors.New("pki: no certificate to check the CA hash against")
	}
	hexPart, ok := strings.CutPrefix(want, "sha256:")
	if !ok {
		return errors.New(`pki: CA hash must have the form "sha256:<hex>"`)
	}
	wantSum, err := hex.DecodeString(hexPart)
	if err != nil || len(wantSum) != sha256.Size {
		return errors.New("pki: CA hash is not 64 hex digits")
	}
	got := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	if subtle.ConstantTimeCompare(got[:], wantSum) != 1 {
		return errors.New("pki: CA certificate does not match the expected hash")
	}
	return nil
}

// EncodeKey encodes a private key as PKCS#8 PEM ("PRIVATE KEY").
func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKey decodes the first private key in PEM data: "PRIVATE KEY"
// (PKCS#8), "EC PRIVATE KEY" (SEC 1) or "RSA PRIVATE KEY" (PKCS#1). Other
// blocks (such as "EC PARAMETERS") are skipped; encrypted keys are refused.
func ParseKey(keyPEM []byte) (crypto.Signer, error) {
	rest := keyPEM
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("pki: no PEM private key found")
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("pki: encrypted private keys are not supported")
		default:
			continue
		}
		if _, encrypted := block.Headers["DEK-Info"]; encrypted {
			return nil, errors.New("pki: encrypted private keys are not supported")
		}
		if err != nil {
			return nil, fmt.Errorf("pki: parse %s: %w", block.Type, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("pki: key type %T cannot sign", key)
		}
		return signer, nil
	}
}

// ParseCertPEM decodes the first "CERTIFICATE" block in PEM data.
func ParseCertPEM(certPEM []byte) (*x509.Certificate, error) {
	rest := certPEM
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("pki: no PEM certificate found")
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pki: parse certificate: %w", err)
		}
		return cert, nil
	}
}

func keyMatches(cert *x509.Certificate, key crypto.Signer) error {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return errors.New("pki: private key does not match certificate")
	}
	return nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func randomSerial() (*big.Int, error) {
	b := make([]byte, 16)
	for {
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("pki: serial: %w", err)
		}
		if n := new(big.Int).SetBytes(b); n.Sign() > 0 {
			return n, nil
		}
	}
}

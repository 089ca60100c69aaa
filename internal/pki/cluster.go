package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const (
	caValidity    = 10 * 365 * 24 * time.Hour
	renewBefore   = 30 * 24 * time.Hour
	servingCN     = "tether-apiserver"
	keyFileMode   = 0o600
	certFileMode  = 0o644
	pkiDirMode    = 0o700
	adminCN       = "tether-admin"
	kubeletClient = "tether-apiserver-kubelet-client"
)

// Options configures EnsureCluster.
type Options struct {
	Dir          string   // e.g. <data-dir>/pki; required
	ServingHosts []string // extra DNS names / IP literals for the hub serving cert
	// Operator-provided CA (both or neither), used in place, never written.
	CACertFile, CAKeyFile string
	// Operator-provided serving cert (both or neither); then none is generated.
	ServingCertFile, ServingKeyFile string
	// Operator-provided service-account signing key (PEM private key).
	ServiceAccountKeyFile string
	Now                   func() time.Time // nil: time.Now
}

// Cluster is the hub's on-disk PKI under Options.Dir (keys 0600, certs 0644,
// directory 0700).
type Cluster struct {
	CA                                                *CA
	CACertFile                                        string
	ServingCertFile, ServingKeyFile                   string
	ServiceAccountKey                                 crypto.Signer
	ServiceAccountKeyFile, ServiceAccountPubFile      string
	AdminCertPEM, AdminKeyPEM                         []byte // CN=tether-admin, O=system:masters
	KubeletClientCertFile, KubeletClientKeyFile       string // CN=tether-apiserver-kubelet-client, O=system:masters
	ControllerManagerCertPEM, ControllerManagerKeyPEM []byte // CN=system:kube-controller-manager
	SchedulerCertPEM, SchedulerKeyPEM                 []byte // CN=system:kube-scheduler
}

// EnsureCluster creates the hub's PKI on first run and reuses it afterwards.
// The serving certificate is reissued when its SANs do not cover the
// requested hosts or it expires within 30 days; client certificates are
// reissued when they expire within 30 days (reissues keep the existing key).
// Unreadable, corrupt or mismatched files are errors, never overwritten.
func EnsureCluster(o Options) (*Cluster, error) {
	if o.Dir == "" {
		return nil, errors.New("pki: Options.Dir is required")
	}
	if (o.CACertFile == "") != (o.CAKeyFile == "") {
		return nil, errors.New("pki: CACertFile and CAKeyFile must be set together")
	}
	if (o.ServingCertFile == "") != (o.ServingKeyFile == "") {
		return nil, errors.New("pki: ServingCertFile and ServingKeyFile must be set together")
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	if err := os.MkdirAll(o.Dir, pkiDirMode); err != nil {
		return nil, fileError(o.Dir, err)
	}
	if err := os.Chmod(o.Dir, pkiDirMode); err != nil {
		return nil, fileError(o.Dir, err)
	}
	path := func(name string) string { return filepath.Join(o.Dir, name) }
	c := &Cluster{}
	var err error

	// CA.
	if o.CACertFile != "" {
		c.CACertFile = o.CACertFile
		c.CA, err = loadCAFiles(o.CACertFile, o.CAKeyFile)
	} else {
		c.CACertFile = path("ca.crt")
		c.CA, err = ensureCA(c.CACertFile, path("ca.key"), now())
	}
	if err != nil {
		return nil, err
	}

	// Serving certificate.
	if o.ServingCertFile != "" {
		c.ServingCertFile, c.ServingKeyFile = o.ServingCertFile, o.ServingKeyFile
		if _, _, err := loadPair(o.ServingCertFile, o.ServingKeyFile, nil); err != nil {
			return nil, err
		}
	} else {
		c.ServingCertFile, c.ServingKeyFile = path("apiserver.crt"), path("apiserver.key")
		spec, err := servingSpec(o.ServingHosts)
		if err != nil {
			return nil, err
		}
		stale := func(cert *x509.Certificate) bool {
			return expiring(cert, now()) || !coversSANs(cert, spec)
		}
		if _, _, err := c.ensureLeaf(c.ServingCertFile, c.ServingKeyFile, spec, stale, now()); err != nil {
			return nil, err
		}
	}

	// Service-account signing key.
	c.ServiceAccountPubFile = path("sa.pub")
	if o.ServiceAccountKeyFile != "" {
		c.ServiceAccountKeyFile = o.ServiceAccountKeyFile
		c.ServiceAccountKey, err = loadKeyFile(o.ServiceAccountKeyFile)
	} else {
		c.ServiceAccountKeyFile = path("sa.key")
		c.ServiceAccountKey, err = ensureKey(c.ServiceAccountKeyFile)
	}
	if err != nil {
		return nil, err
	}
	if err := writePublicKey(c.ServiceAccountPubFile, c.ServiceAccountKey); err != nil {
		return nil, err
	}

	// Client certificates.
	clients := []struct {
		name      string
		spec      CertSpec
		cert, key *[]byte
	}{
		{"admin", clientSpec(adminCN, "system:masters"), &c.AdminCertPEM, &c.AdminKeyPEM},
		{"kubelet-client", clientSpec(kubeletClient, "system:masters"), nil, nil},
		{"controller-manager", clientSpec("system:kube-controller-manager"), &c.ControllerManagerCertPEM, &c.ControllerManagerKeyPEM},
		{"scheduler", clientSpec("system:kube-scheduler"), &c.SchedulerCertPEM, &c.SchedulerKeyPEM},
	}
	stale := func(cert *x509.Certificate) bool { return expiring(cert, now()) }
	for _, cl := range clients {
		certPEM, keyPEM, err := c.ensureLeaf(path(cl.name+".crt"), path(cl.name+".key"), cl.spec, stale, now())
		if err != nil {
			return nil, err
		}
		if cl.cert != nil {
			*cl.cert, *cl.key = certPEM, keyPEM
		}
	}
	c.KubeletClientCertFile, c.KubeletClientKeyFile = path("kubelet-client.crt"), path("kubelet-client.key")
	return c, nil
}

func clientSpec(cn string, orgs ...string) CertSpec {
	return CertSpec{CommonName: cn, Organization: orgs, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
}

func servingSpec(hosts []string) (CertSpec, error) {
	spec := CertSpec{CommonName: servingCN, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	all := append([]string{"localhost", "127.0.0.1", "::1", "kubernetes", "kubernetes.default",
		"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}, hosts...)
	seen := map[string]bool{}
	for _, h := range all {
		h = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(h), "["), "]")
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if !seen[ip.String()] {
				seen[ip.String()] = true
				spec.IPs = append(spec.IPs, ip)
			}
			continue
		}
		h = strings.ToLower(strings.TrimSuffix(h, "."))
		if strings.ContainsAny(h, " :/") {
			return spec, fmt.Errorf("pki: serving host %q is not a DNS name or IP address", h)
		}
		if !seen[h] {
			seen[h] = true
			spec.DNSNames = append(spec.DNSNames, h)
		}
	}
	return spec, nil
}

func expiring(cert *x509.Certificate, now time.Time) bool {
	return cert.NotAfter.Sub(now) < renewBefore
}

// coversSANs reports whether cert has every DNS name and IP of spec.
func coversSANs(cert *x509.Certificate, spec CertSpec) bool {
	for _, want := range spec.DNSNames {
		found := false
		for _, got := range cert.DNSNames {
			found = found || strings.EqualFold(got, want)
		}
		if !found {
			return false
		}
	}
	for _, want := range spec.IPs {
		found := false
		for _, got := range cert.IPAddresses {
			found = found || got.Equal(want)
		}
		if !found {
			return false
		}
	}
	return true
}

func ensureCA(certFile, keyFile string, now time.Time) (*CA, error) {
	certOK, keyOK := exists(certFile), exists(keyFile)
	if certOK && keyOK {
		return loadCAFiles(certFile, keyFile)
	}
	if certOK || keyOK {
		return nil, fmt.Errorf("pki: found only one of %s and %s; restore the other or remove both", certFile, keyFile)
	}
	ca, err := newCA("tether-ca", caValidity, now)
	if err != nil {
		return nil, err
	}
	keyPEM, err := EncodeKey(ca.Key)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(keyFile, keyPEM, keyFileMode); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(certFile, ca.CertPEM, certFileMode); err != nil {
		return nil, err
	}
	return ca, nil
}

func loadCAFiles(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fileError(certFile, err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fileError(keyFile, err)
	}
	if _, err := ParseKey(keyPEM); err != nil {
		return nil, fileError(keyFile, err)
	}
	ca, err := LoadCA(certPEM, keyPEM)
	if err != nil {
		return nil, fileError(certFile, err)
	}
	return ca, nil
}

// ensureLeaf loads certFile/keyFile, issuing or reissuing as needed, and
// returns their PEM contents. A key without a certificate (an interrupted
// first run) gets a new certificate; a certificate without its key is an error.
func (c *Cluster) ensureLeaf(certFile, keyFile string, spec CertSpec, stale func(*x509.Certificate) bool, now time.Time) (certPEM, keyPEM []byte, err error) {
	var key crypto.Signer
	switch certOK, keyOK := exists(certFile), exists(keyFile); {
	case certOK && keyOK:
		var cert *x509.Certificate
		cert, key, err = loadPair(certFile, keyFile, c.CA)
		if err != nil {
			return nil, nil, err
		}
		if !stale(cert) {
			certPEM, _ = os.ReadFile(certFile)
			keyPEM, _ = os.ReadFile(keyFile)
			return certPEM, keyPEM, nil
		}
	case certOK:
		return nil, nil, fmt.Errorf("pki: %s: key file missing for existing certificate %s", keyFile, certFile)
	case keyOK:
		if key, err = loadKeyFile(keyFile); err != nil {
			return nil, nil, err
		}
	default:
		if key, err = newKeyFile(keyFile); err != nil {
			return nil, nil, err
		}
	}
	if certPEM, err = c.CA.issueFor(key.Public(), spec, now); err != nil {
		return nil, nil, err
	}
	if err := writeFileAtomic(certFile, certPEM, certFileMode); err != nil {
		return nil, nil, err
	}
	if keyPEM, err = os.ReadFile(keyFile); err != nil {
		return nil, nil, fileError(keyFile, err)
	}
	return certPEM, keyPEM, nil
}

// loadPair parses a cert/key pair and checks they match and, when ca is not
// nil, that the certificate was signed by it.
func loadPair(certFile, keyFile string, ca *CA) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, fileError(certFile, err)
	}
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, nil, fileError(certFile, err)
	}
	key, err := loadKeyFile(keyFile)
	if err != nil {
		return nil, nil, err
	}
	if err := keyMatches(cert, key); err != nil {
		return nil, nil, fileError(keyFile, err)
	}
	if ca != nil {
		if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
			return nil, nil, fileError(certFile, fmt.Errorf("not issued by the cluster CA: %w", err))
		}
	}
	return cert, key, nil
}

func loadKeyFile(file string) (crypto.Signer, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fileError(file, err)
	}
	key, err := ParseKey(data)
	if err != nil {
		return nil, fileError(file, err)
	}
	return key, nil
}

func ensureKey(file string) (crypto.Signer, error) {
	if exists(file) {
		return loadKeyFile(file)
	}
	return newKeyFile(file)
}

func newKeyFile(file string) (crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate key: %w", err)
	}
	keyPEM, err := EncodeKey(key)
	if err != nil {
		return nil, err
	}
	return key, writeFileAtomic(file, keyPEM, keyFileMode)
}

// writePublicKey writes key's PKIX public key as PEM unless file already
// holds exactly that.
func writePublicKey(file string, key crypto.Signer) error {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return fileError(file, err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	if old, err := os.ReadFile(file); err == nil && bytes.Equal(old, data) {
		return nil
	}
	return writeFileAtomic(file, data, certFileMode)
}

func exists(file string) bool {
	_, err := os.Lstat(file)
	return !errors.Is(err, fs.ErrNotExist)
}

// writeFileAtomic writes data to a temporary file with mode in the same
// directory, syncs it and renames it over file.
func writeFileAtomic(file string, data []byte, mode os.FileMode) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp-*")
	if err != nil {
		return fileError(file, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
			err = fileError(file, err)
		}
	}()
	if err = tmp.Chmod(mode); err != nil {
		return err
	}
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// fileError is fmt.Errorf("pki: %s: %w", path, err) without a doubled "pki: ".
func fileError(path string, err error) error {
	return &pathError{path, err}
}

type pathError struct {
	path string
	err  error
}

func (e *pathError) Error() string {
	return "pki: " + e.path + ": " + strings.TrimPrefix(e.err.Error(), "pki: ")
}

func (e *pathError) Unwrap() error { return e.err }

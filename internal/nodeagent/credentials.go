package nodeagent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/certificate"
	"k8s.io/client-go/util/certificate/csr"

	"github.com/tether-dev/tether/internal/pki"
)

// Signer names of the two certificates a node holds.
const (
	signerClient  = certificatesv1.KubeAPIServerClientKubeletSignerName
	signerServing = certificatesv1.KubeletServingSignerName
)

// discoverCA returns the cluster CA bundle (PEM). It prefers an explicit CA
// file; otherwise it pins the CA by its SubjectPublicKeyInfo hash as kubeadm
// join does: first in the hub's TLS certificate chain, then in the
// kube-public/cluster-info ConfigMap read without credentials (the token is
// never sent to an unverified server).
func discoverCA(ctx context.Context, server, caFile, caHash string) ([]byte, error) {
	if caFile != "" {
		data, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		cert, err := pki.ParseCertPEM(data)
		if err != nil {
			return nil, fmt.Errorf("CA file %s: %w", caFile, err)
		}
		if caHash != "" {
			if err := pki.CheckCAHash(cert, caHash); err != nil {
				return nil, fmt.Errorf("CA file %s: %w", caFile, err)
			}
		}
		return data, nil
	}
	if caHash == "" {
		return nil, errors.New("need --ca-cert or --ca-cert-hash to trust the hub")
	}
	if _, err := hashBytes(caHash); err != nil {
		return nil, err
	}
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("server %q must be an https:// URL", server)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "443")
	}
	var found []byte
	verify := func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("hub presented no certificate")
		}
		leaf := cs.PeerCertificates[0]
		for _, c := range cs.PeerCertificates[1:] {
			if !c.IsCA || pki.CheckCAHash(c, caHash) != nil {
				continue
			}
			roots := x509.NewCertPool()
			roots.AddCert(c)
			inter := x509.NewCertPool()
			for _, ic := range cs.PeerCertificates[1:] {
				inter.AddCert(ic)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err == nil {
				found = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
				return nil
			}
		}
		return nil
	}
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, VerifyConnection: verify, MinVersion: tls.VersionTLS12}} //nolint:gosec // verified by pin below
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("discover CA at %s: %w", host, err)
	}
	_ = conn.Close()
	if found != nil {
		return found, nil
	}
	// kubeadm-style discovery: anonymous read of cluster-info, pinned.
	cfg := &rest.Config{Host: server, TLSClientConfig: rest.TLSClientConfig{Insecure: true}, Timeout: 10 * time.Second}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("discover CA: %w", err)
	}
	cm, err := cs.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(dctx, "cluster-info", metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("discover CA: the hub's TLS chain has no CA matching %s and kube-public/cluster-info is not readable: %w", caHash, err)
	}
	return caFromClusterInfo(cm, caHash)
}

// caFromClusterInfo extracts the CA from a cluster-info ConfigMap and checks
// it against the pin.
func caFromClusterInfo(cm *corev1.ConfigMap, caHash string) ([]byte, error) {
	kc, err := clientcmd.Load([]byte(cm.Data["kubeconfig"]))
	if err != nil {
		return nil, fmt.Errorf("cluster-info kubeconfig: %w", err)
	}
	for _, c := range kc.Clusters {
		rest := c.CertificateAuthorityData
		for len(rest) > 0 {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			cert, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				continue
			}
			if pki.CheckCAHash(cert, caHash) == nil {
				return pem.EncodeToMemory(b), nil
			}
		}
	}
	return nil, fmt.Errorf("cluster-info has no CA matching %s (man in the middle or wrong hash)", caHash)
}

func hashBytes(h string) ([]byte, error) {
	hexPart, ok := strings.CutPrefix(h, "sha256:")
	if !ok || len(hexPart) != 64 {
		return nil, fmt.Errorf("CA hash %q must have the form sha256:<64 hex digits>", h)
	}
	return []byte(hexPart), nil
}

// parseToken validates a bootstrap token "id.secret" ([a-z0-9]{6}.[a-z0-9]{16}).
func parseToken(tok string) (id string, err error) {
	id, secret, ok := strings.Cut(tok, ".")
	valid := func(s string, n int) bool {
		if len(s) != n {
			return false
		}
		for _, r := range s {
			if (r < 'a' || r > 'z') && (r < '0' || r > '9') {
				return false
			}
		}
		return true
	}
	if !ok || !valid(id, 6) || !valid(secret, 16) {
		return "", errors.New("bootstrap token must have the form [a-z0-9]{6}.[a-z0-9]{16}")
	}
	return id, nil
}

// clientTemplate is the CSR template of the node's client certificate.
func clientTemplate(node string) *x509.CertificateRequest {
	return &x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}}}
}

// servingTemplate is the CSR template of the kubelet serving certificate.
func servingTemplate(node string, hostnames []string, ips []net.IP) *x509.CertificateRequest {
	return &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}},
		DNSNames:    hostnames,
		IPAddresses: ips,
	}
}

// bootstrapClientCert obtains the first node client certificate with the
// bootstrap credentials (token or bootstrap kubeconfig): CSR, wait, store.
func bootstrapClientCert(ctx context.Context, boot *rest.Config, node string, store certificate.Store, lifetime time.Duration) error {
	cs, err := kubernetes.NewForConfig(boot)
	if err != nil {
		return fmt.Errorf("bootstrap client: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("bootstrap key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, clientTemplate(node), key)
	if err != nil {
		return fmt.Errorf("bootstrap CSR: %w", err)
	}
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return err
	}
	var dur *time.Duration
	if lifetime > 0 {
		dur = &lifetime
	}
	usages := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}
	name, uid, err := csr.RequestCertificateWithContext(ctx, cs, csrPEM, "", signerClient, dur, usages, key)
	if err != nil {
		return fmt.Errorf("create node client CSR: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	certPEM, err := csr.WaitForCertificate(wctx, cs, name, uid)
	if err != nil {
		return fmt.Errorf("wait for CSR %s to be approved and signed: %w", name, err)
	}
	if _, err := store.Update(certPEM, keyPEM); err != nil {
		return fmt.Errorf("store node client cert: %w", err)
	}
	return nil
}

// certClientConfig returns a rest.Config for base's server and CA that
// presents whatever certificate current returns at each TLS handshake: a
// rotated certificate is used by new connections while open connections
// (and the watches on them) continue undisturbed.
func certClientConfig(base *rest.Config, current func() *tls.Certificate) (*rest.Config, error) {
	cfg := rest.AnonymousClientConfig(base)
	tlsConfig, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("tls config: %w", err)
	}
	if tlsConfig == nil {
		return nil, errors.New("the hub must be an https:// URL")
	}
	tlsConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if c := current(); c != nil {
			return c, nil
		}
		return &tls.Certificate{}, nil
	}
	dial := (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	if cfg.Dial != nil { // failover across hub replicas (failover.go)
		dial, cfg.Dial = cfg.Dial, nil
	}
	cfg.Transport = utilnet.SetTransportDefaults(&http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     tlsConfig,
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     90 * time.Second,
		MaxIdleConnsPerHost: 25,
		DialContext:         dial,
	})
	cfg.TLSClientConfig = rest.TLSClientConfig{}
	return cfg, nil
}

// loadKubeconfig reads a kubeconfig file into a rest.Config.
func loadKubeconfig(path string) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

// certPairFromConfig returns the client cert and key PEM of a kubeconfig.
func certPairFromConfig(cfg *rest.Config) (certPEM, keyPEM []byte, err error) {
	certPEM, keyPEM = cfg.CertData, cfg.KeyData
	if len(certPEM) == 0 && cfg.CertFile != "" {
		if certPEM, err = os.ReadFile(cfg.CertFile); err != nil {
			return nil, nil, fmt.Errorf("client cert: %w", err)
		}
	}
	if len(keyPEM) == 0 && cfg.KeyFile != "" {
		if keyPEM, err = os.ReadFile(cfg.KeyFile); err != nil {
			return nil, nil, fmt.Errorf("client key: %w", err)
		}
	}
	if len(certPEM) == 0 || len(keyPEM) == 0 {
		return nil, nil, errors.New("kubeconfig has no client certificate and key")
	}
	return certPEM, keyPEM, nil
}

// caPEMFromConfig returns the CA bundle of a kubeconfig.
func caPEMFromConfig(cfg *rest.Config) ([]byte, error) {
	if len(cfg.CAData) > 0 {
		return cfg.CAData, nil
	}
	if cfg.CAFile != "" {
		data, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		return data, nil
	}
	return nil, errors.New("kubeconfig has no certificate authority (tether never trusts a hub unverified)")
}

// validStoredCert reports whether the store holds an unexpired cert.
func validStoredCert(store certificate.Store, now time.Time) bool {
	c, err := store.Current()
	return err == nil && c.Leaf != nil && now.Before(c.Leaf.NotAfter)
}

// writeNodeKubeconfig writes D/kubelet.kubeconfig (0600) pointing at the
// rotating cert pair, so kubectl and restarts can use it.
func writeNodeKubeconfig(path, server string, caPEM []byte, store certificate.Store) error {
	c, err := store.Current()
	if err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return pki.WriteKubeconfig(path, pki.Kubeconfig{Server: server, CAPEM: caPEM, UserName: "node", CertPEM: certPEM, KeyPEM: keyPEM})
}

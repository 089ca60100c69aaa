package nodeagent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// providedServingCert loads the operator-provided kubelet serving
// certificate (TLSCertFile/TLSKeyFile), or returns nil to use the
// CSR-managed one. A certificate that does not chain to the cluster CA is
// accepted (the hub may trust another CA with --kubelet-certificate-authority)
// but logged, because a hub verifying against the cluster CA will refuse it.
func (a *Agent) providedServingCert() (*tls.Certificate, error) {
	if a.cfg.TLSCertFile == "" && a.cfg.TLSKeyFile == "" {
		return nil, nil
	}
	if a.cfg.TLSCertFile == "" || a.cfg.TLSKeyFile == "" {
		return nil, errors.New("nodeagent: --tls-cert-file and --tls-private-key-file go together")
	}
	cert, err := tls.LoadX509KeyPair(a.cfg.TLSCertFile, a.cfg.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("nodeagent: kubelet serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("nodeagent: kubelet serving certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if len(a.caPEM) == 0 || !pool.AppendCertsFromPEM(a.caPEM) {
		return &cert, nil
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		a.log.Warn("kubelet serving certificate does not chain to the cluster CA: a hub verifying kubelets against the cluster CA will refuse this node (tether check reports it)",
			"file", a.cfg.TLSCertFile, "err", err)
	}
	return &cert, nil
}

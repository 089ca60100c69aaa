package check

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"
)

// parseCertsPEM returns every CERTIFICATE block of data.
func parseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for len(data) > 0 {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return out, nil
}

// sans lists a certificate's DNS and IP SANs.
func sans(c *x509.Certificate) []string {
	out := append([]string{}, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		out = append(out, ip.String())
	}
	return out
}

// certSummary is "subject, issued by issuer, valid until …".
func certSummary(c *x509.Certificate, now time.Time) string {
	return fmt.Sprintf("subject %q, issuer %q, expires %s", c.Subject.String(), c.Issuer.String(), fmtTime(c.NotAfter, now))
}

// verifyChain verifies leaf (with intermediates) against roots for usage.
func verifyChain(chain []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("no certificate presented")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

// expiryFinding rates a certificate's remaining lifetime.
func (c *Checker) expiry(cert *x509.Certificate) (State, Risk, string) {
	now := c.cfg.Now()
	left := cert.NotAfter.Sub(now)
	switch {
	case left <= 0:
		return Fail, RiskHigh, "expired " + fmtTime(cert.NotAfter, now)
	case now.Before(cert.NotBefore):
		return Fail, RiskHigh, "not valid before " + cert.NotBefore.UTC().Format(time.RFC3339)
	case left < c.cfg.CertExpiryWarning:
		return Warn, RiskMedium, "expires soon: " + fmtTime(cert.NotAfter, now)
	}
	return Pass, RiskNone, "valid until " + fmtTime(cert.NotAfter, now)
}

func join(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

package controllers

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"slices"
	"strings"
	"testing"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func fuzzCSRDER(f *testing.F, tmpl *x509.CertificateRequest) []byte {
	f.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		f.Fatal(err)
	}
	return der
}

// FuzzValidateCSR parses fuzzed DER as a CSR and feeds whatever parses to
// both kubelet CSR validators: never a panic, and an accepted serving CSR
// always names the requesting node, with SANs all among its addresses.
func FuzzValidateCSR(f *testing.F) {
	nodeSubject := pkix.Name{CommonName: "system:node:n1", Organization: []string{"system:nodes"}}
	f.Add(fuzzCSRDER(f, &x509.CertificateRequest{Subject: nodeSubject}), uint8(0))
	f.Add(fuzzCSRDER(f, &x509.CertificateRequest{Subject: nodeSubject, DNSNames: []string{"n1", "N1.example"}, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}), uint8(1))
	f.Add(fuzzCSRDER(f, &x509.CertificateRequest{Subject: nodeSubject, DNSNames: []string{"evil.example"}}), uint8(1))
	f.Add(fuzzCSRDER(f, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:", Organization: []string{"system:nodes", "system:masters"}}}), uint8(2))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00}, uint8(3))
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeHostName, Address: "n1"}, {Type: corev1.NodeExternalDNS, Address: "n1.example"},
		{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}, {Type: corev1.NodeExternalIP, Address: "not-an-ip"}}}}
	usageSets := [][]certificatesv1.KeyUsage{
		{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
		{certificatesv1.UsageDigitalSignature, certificatesv1.UsageKeyEncipherment, certificatesv1.UsageServerAuth},
		nil,
		{certificatesv1.UsageClientAuth, certificatesv1.UsageServerAuth, certificatesv1.UsageAny},
	}
	f.Fuzz(func(t *testing.T, der []byte, sel uint8) {
		x, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return
		}
		usages := usageSets[int(sel)%len(usageSets)]
		users := []string{"system:node:n1", "system:node:n2", "", x.Subject.CommonName}
		user := users[int(sel/4)%len(users)]
		var n *corev1.Node
		if sel&0x80 == 0 {
			n = node
		}
		if err := ValidateKubeletClientCSR(x, usages); err == nil {
			if !strings.HasPrefix(x.Subject.CommonName, "system:node:") || len(x.DNSNames)+len(x.IPAddresses)+len(x.EmailAddresses)+len(x.URIs) > 0 {
				t.Fatalf("client CSR accepted: %+v", x.Subject)
			}
			if !slices.Equal(x.Subject.Organization, []string{"system:nodes"}) {
				t.Fatalf("client CSR accepted with O=%q", x.Subject.Organization)
			}
		}
		if err := ValidateKubeletServingCSR(x, usages, user, n); err == nil {
			if n == nil || user != "system:node:n1" || x.Subject.CommonName != "system:node:n1" {
				t.Fatalf("serving CSR accepted for %q by %q (node %v)", x.Subject.CommonName, user, n != nil)
			}
			for _, d := range x.DNSNames {
				if !strings.EqualFold(d, "n1") && !strings.EqualFold(d, "n1.example") {
					t.Fatalf("DNS SAN %q accepted", d)
				}
			}
			for _, ip := range x.IPAddresses {
				if !ip.Equal(net.IPv4(10, 0, 0, 1)) {
					t.Fatalf("IP SAN %s accepted", ip)
				}
			}
			if len(x.URIs)+len(x.EmailAddresses) > 0 {
				t.Fatal("URI/email SAN accepted")
			}
		}
	})
}

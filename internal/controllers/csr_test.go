package controllers

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/tether-dev/tether/internal/pki"
)

// A replica that loses the controllers' lease and wins it again runs the
// same controller a second time: it must sign again (its work queue is
// per run, not shut down for good by the first term).
func TestCSRSignsAgainInASecondTerm(t *testing.T) {
	ca, err := pki.NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset()
	c, err := NewCSR(CSRConfig{Client: client, CA: ca})
	if err != nil {
		t.Fatal(err)
	}
	for term := range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		name := "term-" + string(rune('a'+term))
		if _, err := client.CertificatesV1().CertificateSigningRequests().Create(ctx, approvedCSR(t, name), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			cur, err := client.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(cur.Status.Certificate) > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("term %d: %s not signed within 30s", term+1, name)
			}
			time.Sleep(20 * time.Millisecond) // poll interval
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("term %d: %v", term+1, err)
		}
	}
}

func approvedCSR(t *testing.T, name string) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return &certificatesv1.CertificateSigningRequest{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: certificatesv1.CertificateSigningRequestSpec{Request: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
			SignerName: SignerAPIClient, Usages: []certificatesv1.KeyUsage{certificatesv1.UsageClientAuth}},
		Status: certificatesv1.CertificateSigningRequestStatus{Conditions: []certificatesv1.CertificateSigningRequestCondition{
			{Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: "Test"}}}}
}

package hub

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

	authenticationv1 "k8s.io/api/authentication/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-dev/tether/internal/bootstraptoken"
	"github.com/tether-dev/tether/internal/pki"
)

func newCSR(t *testing.T, cn string, orgs []string) ([]byte, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn, Organization: orgs}}, key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), keyPEM
}

// submit creates a kubelet client CSR as c and waits until it is issued, or
// until timeout when it is expected to stay unapproved.
func submit(t *testing.T, c kubernetes.Interface, name string, csrPEM []byte, timeout time.Duration) *certificatesv1.CertificateSigningRequest {
	t.Helper()
	ctx := context.Background()
	_, err := c.CertificatesV1().CertificateSigningRequests().Create(ctx, &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: certificatesv1.CertificateSigningRequestSpec{Request: csrPEM, SignerName: "kubernetes.io/kube-apiserver-client-kubelet",
			Usages: []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create csr %s: %v", name, err)
	}
	var got *certificatesv1.CertificateSigningRequest
	_ = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		got, err = c.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
		return err == nil && len(got.Status.Certificate) > 0, nil
	})
	return got
}

func TestTLSBootstrap(t *testing.T) {
	h := startHub(t, nil)
	ctx := context.Background()
	admin := h.client(t, h.Admin)
	tok, err := bootstraptoken.Create(ctx, admin, bootstraptoken.Options{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	bootCfg := h.anonymousConfig()
	bootCfg.BearerToken = tok
	boot := h.client(t, bootCfg)

	// The bootstrap token authenticates as system:bootstrap:<id>.
	ssr, err := boot.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ssr.Status.UserInfo.Username; got != "system:bootstrap:"+tok[:6] {
		t.Fatalf("bootstrap user = %q", got)
	}
	// It may not do anything else.
	if _, err := boot.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{}); err == nil {
		t.Fatal("bootstrap token can list secrets")
	}

	csrPEM, keyPEM := newCSR(t, "system:node:n1", []string{"system:nodes"})
	csr := submit(t, boot, "node-csr-n1", csrPEM, 30*time.Second)
	if csr == nil || len(csr.Status.Certificate) == 0 {
		t.Fatalf("node client CSR was not issued: %+v", csr)
	}
	cert, err := pki.ParseCertPEM(csr.Status.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "system:node:n1" {
		t.Fatalf("CN = %q", cert.Subject.CommonName)
	}

	// The issued certificate authenticates as the node.
	nodeCfg := h.anonymousConfig()
	nodeCfg.CertData, nodeCfg.KeyData = csr.Status.Certificate, keyPEM
	node := h.client(t, nodeCfg)
	ssr, err = node.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ssr.Status.UserInfo.Username != "system:node:n1" {
		t.Fatalf("node user = %+v", ssr.Status.UserInfo)
	}

	// A node asking for another node's name is not approved.
	otherPEM, _ := newCSR(t, "system:node:n2", []string{"system:nodes"})
	other := submit(t, node, "node-csr-n2-by-n1", otherPEM, 3*time.Second)
	if other == nil {
		t.Fatal("csr vanished")
	}
	if len(other.Status.Certificate) > 0 {
		t.Fatal("n1 got a certificate for n2")
	}
	for _, c := range other.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved {
			t.Fatal("n1's CSR for n2 was approved")
		}
	}

	// Renewal by the node itself (selfnodeclient) is approved.
	renewPEM, _ := newCSR(t, "system:node:n1", []string{"system:nodes"})
	if renewed := submit(t, node, "node-csr-n1-renew", renewPEM, 30*time.Second); renewed == nil || len(renewed.Status.Certificate) == 0 {
		t.Fatal("self renewal was not issued")
	}

	// An expired token stops working.
	expired, err := bootstraptoken.Create(ctx, admin, bootstraptoken.Options{TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	expCfg := h.anonymousConfig()
	expCfg.BearerToken = expired
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := h.client(t, expCfg).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		return err != nil, nil
	})
	if err != nil {
		t.Fatal("expired bootstrap token still authenticates")
	}
}

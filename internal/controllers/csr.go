package controllers

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/tether-dev/tether/internal/pki"
)

// Signer names handled by the hub.
const (
	SignerKubeletClient  = "kubernetes.io/kube-apiserver-client-kubelet"
	SignerKubeletServing = "kubernetes.io/kubelet-serving"
	SignerAPIClient      = "kubernetes.io/kube-apiserver-client"
	SignerLegacyUnknown  = "kubernetes.io/legacy-unknown"
)

// CSRConfig configures the CSR approver and signer.
type CSRConfig struct {
	Client kubernetes.Interface
	// CA signs approved requests.
	CA *pki.CA
	// SigningDuration caps issued certificates; zero value 1 year
	// (--cluster-signing-duration). spec.expirationSeconds may shorten it.
	SigningDuration time.Duration
	Logger          *slog.Logger
}

// CSR approves node client certificates (SubjectAccessReview-gated, as
// Kubernetes does), approves kubelet serving certificates only when every SAN
// matches the Node object (Kubernetes never auto-approves these), and signs
// approved requests for the kubernetes.io signers.
type CSR struct {
	cfg CSRConfig
}

// NewCSR validates cfg.
func NewCSR(cfg CSRConfig) (*CSR, error) {
	if cfg.Client == nil || cfg.CA == nil {
		return nil, fmt.Errorf("csr controller: client and CA are required")
	}
	if cfg.SigningDuration == 0 {
		cfg.SigningDuration = 365 * 24 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &CSR{cfg: cfg}, nil
}

// Run handles CSRs until ctx ends.
func (c *CSR) Run(ctx context.Context) error {
	// A queue per run: a replica that loses and regains the lease runs
	// again, and a shut-down queue would hand it no work.
	queue := newQueue("csr", 200*time.Millisecond, 30*time.Second)
	defer queue.ShutDown()
	factory := informers.NewSharedInformerFactory(c.cfg.Client, 10*time.Minute)
	inf := factory.Certificates().V1().CertificateSigningRequests().Informer()
	enqueue := func(obj any) {
		if csr, ok := obj.(*certificatesv1.CertificateSigningRequest); ok {
			queue.Add(csr.Name)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }}); err != nil {
		return err
	}
	// Node address changes can make a pending serving CSR approvable.
	nodes := factory.Core().V1().Nodes().Informer()
	if _, err := nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{UpdateFunc: func(_, _ any) {
		for _, obj := range inf.GetStore().List() {
			if csr := obj.(*certificatesv1.CertificateSigningRequest); csr.Spec.SignerName == SignerKubeletServing && pending(csr) {
				queue.Add(csr.Name)
			}
		}
	}}); err != nil {
		return err
	}
	lister := factory.Certificates().V1().CertificateSigningRequests().Lister()
	nodeLister := factory.Core().V1().Nodes().Lister()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced, nodes.HasSynced) {
		return nil
	}
	process(ctx, queue, c.cfg.Logger, "csr", func(ctx context.Context, name string) (time.Duration, error) {
		csr, err := lister.Get(name)
		if apierrors.IsNotFound(err) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		return 0, c.sync(ctx, csr.DeepCopy(), func(n string) (*corev1.Node, error) { return nodeLister.Get(n) })
	})
	return nil
}

func hasCondition(csr *certificatesv1.CertificateSigningRequest, t certificatesv1.RequestConditionType) bool {
	for _, c := range csr.Status.Conditions {
		if c.Type == t && c.Status != corev1.ConditionFalse {
			return true
		}
	}
	return false
}

func pending(csr *certificatesv1.CertificateSigningRequest) bool {
	return !hasCondition(csr, certificatesv1.CertificateApproved) && !hasCondition(csr, certificatesv1.CertificateDenied) && !hasCondition(csr, certificatesv1.CertificateFailed)
}

func (c *CSR) sync(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, node func(string) (*corev1.Node, error)) error {
	switch {
	case hasCondition(csr, certificatesv1.CertificateDenied), hasCondition(csr, certificatesv1.CertificateFailed), len(csr.Status.Certificate) > 0:
		return nil
	case hasCondition(csr, certificatesv1.CertificateApproved):
		return c.sign(ctx, csr)
	}
	x, err := pki.ParseCSR(csr.Spec.Request)
	if err != nil {
		return c.fail(ctx, csr, "InvalidRequest", err.Error())
	}
	switch csr.Spec.SignerName {
	case SignerKubeletClient:
		return c.approveKubeletClient(ctx, csr, x)
	case SignerKubeletServing:
		return c.approveKubeletServing(ctx, csr, x, node)
	case SignerLegacyUnknown:
		return c.fail(ctx, csr, "SignerUnsupported", "the kubernetes.io/legacy-unknown signer is not supported; use a specific signer")
	}
	return nil
}

func usagesOK(got []certificatesv1.KeyUsage, required certificatesv1.KeyUsage) bool {
	allowed := []certificatesv1.KeyUsage{required, certificatesv1.UsageDigitalSignature, certificatesv1.UsageKeyEncipherment}
	if !slices.Contains(got, required) {
		return false
	}
	for _, u := range got {
		if !slices.Contains(allowed, u) {
			return false
		}
	}
	return true
}

// nodeName returns N for a request whose subject is exactly
// CN=system:node:N, O=system:nodes.
func nodeName(x *x509.CertificateRequest) (string, bool) {
	n, ok := strings.CutPrefix(x.Subject.CommonName, "system:node:")
	if !ok || n == "" || len(x.Subject.Organization) != 1 || x.Subject.Organization[0] != "system:nodes" {
		return "", false
	}
	return n, true
}

// ValidateKubeletClientCSR checks a kube-apiserver-client-kubelet request the
// way Kubernetes does: node subject, no SANs, client usages only.
func ValidateKubeletClientCSR(x *x509.CertificateRequest, usages []certificatesv1.KeyUsage) error {
	if _, ok := nodeName(x); !ok {
		return fmt.Errorf("subject must be CN=system:node:<name>, O=system:nodes")
	}
	if len(x.DNSNames)+len(x.IPAddresses)+len(x.EmailAddresses)+len(x.URIs) > 0 {
		return fmt.Errorf("client certificates may not have subject alternative names")
	}
	if !usagesOK(usages, certificatesv1.UsageClientAuth) {
		return fmt.Errorf("usages must be client auth (with digital signature / key encipherment)")
	}
	return nil
}

// ValidateKubeletServingCSR checks a kubelet-serving request against the node
// that asks: it must be that node, and every DNS name and IP must be one of
// the Node object's addresses.
func ValidateKubeletServingCSR(x *x509.CertificateRequest, usages []certificatesv1.KeyUsage, username string, node *corev1.Node) error {
	name, ok := nodeName(x)
	if !ok {
		return fmt.Errorf("subject must be CN=system:node:<name>, O=system:nodes")
	}
	if username != "system:node:"+name {
		return fmt.Errorf("requested by %q, not by node %q", username, name)
	}
	if !usagesOK(usages, certificatesv1.UsageServerAuth) {
		return fmt.Errorf("usages must be server auth (with digital signature / key encipherment)")
	}
	if len(x.EmailAddresses)+len(x.URIs) > 0 {
		return fmt.Errorf("email and URI SANs are not allowed")
	}
	if len(x.DNSNames)+len(x.IPAddresses) == 0 {
		return fmt.Errorf("at least one DNS or IP SAN is required")
	}
	if node == nil || node.Name != name {
		return fmt.Errorf("node %q does not exist", name)
	}
	var dns []string
	var ips []net.IP
	for _, a := range node.Status.Addresses {
		switch a.Type {
		case corev1.NodeHostName, corev1.NodeInternalDNS, corev1.NodeExternalDNS:
			dns = append(dns, strings.ToLower(a.Address))
		case corev1.NodeInternalIP, corev1.NodeExternalIP:
			if ip := net.ParseIP(a.Address); ip != nil {
				ips = append(ips, ip)
			}
		}
	}
	for _, d := range x.DNSNames {
		if !slices.Contains(dns, strings.ToLower(d)) {
			return fmt.Errorf("DNS name %q is not an address of node %q", d, name)
		}
	}
	for _, ip := range x.IPAddresses {
		if !slices.ContainsFunc(ips, ip.Equal) {
			return fmt.Errorf("IP %s is not an address of node %q", ip, name)
		}
	}
	return nil
}

func (c *CSR) approveKubeletClient(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, x *x509.CertificateRequest) error {
	if err := ValidateKubeletClientCSR(x, csr.Spec.Usages); err != nil {
		return c.fail(ctx, csr, "InvalidRequest", err.Error())
	}
	sub, msg := "nodeclient", "Auto approving kubelet client certificate after SubjectAccessReview."
	if csr.Spec.Username == x.Subject.CommonName {
		sub, msg = "selfnodeclient", "Auto approving self kubelet client certificate after SubjectAccessReview."
	}
	ok, err := c.allowed(ctx, csr, sub)
	if err != nil || !ok {
		// Not ours to approve: a human may still do it.
		return err
	}
	return c.approve(ctx, csr, "AutoApproved", msg)
}

func (c *CSR) approveKubeletServing(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, x *x509.CertificateRequest, node func(string) (*corev1.Node, error)) error {
	name, _ := nodeName(x)
	n, err := node(name)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if err := ValidateKubeletServingCSR(x, csr.Spec.Usages, csr.Spec.Username, n); err != nil {
		return c.note(ctx, csr, "AutoApprovalRefused", "SANsNotVerified",
			"not auto-approved: "+err.Error()+"; approve by hand (kubectl certificate approve) only if you trust it")
	}
	return c.approve(ctx, csr, "AutoApproved", "Auto approving kubelet serving certificate: requester is the node and every SAN matches the Node object.")
}

// allowed asks the API whether the requester may create
// certificatesigningrequests/<sub>.
func (c *CSR) allowed(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, sub string) (bool, error) {
	extra := map[string]authorizationv1.ExtraValue{}
	for k, v := range csr.Spec.Extra {
		extra[k] = authorizationv1.ExtraValue(v)
	}
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: csr.Spec.Username, UID: csr.Spec.UID, Groups: csr.Spec.Groups, Extra: extra,
		ResourceAttributes: &authorizationv1.ResourceAttributes{Group: "certificates.k8s.io", Resource: "certificatesigningrequests", Subresource: sub, Verb: "create"},
	}}
	resp, err := c.cfg.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("subject access review: %w", err)
	}
	return resp.Status.Allowed, nil
}

func (c *CSR) approve(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, reason, msg string) error {
	csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
		Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: reason, Message: msg,
		LastUpdateTime: metav1.Now(), LastTransitionTime: metav1.Now()})
	_, err := c.cfg.Client.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, csr.Name, csr, metav1.UpdateOptions{})
	if err == nil {
		c.cfg.Logger.Info("csr approved", "name", csr.Name, "signer", csr.Spec.SignerName, "requester", csr.Spec.Username)
	}
	return ignoreConflict(err)
}

func (c *CSR) fail(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, reason, msg string) error {
	return c.setCondition(ctx, csr, certificatesv1.CertificateFailed, reason, msg)
}

func (c *CSR) note(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, t certificatesv1.RequestConditionType, reason, msg string) error {
	for _, cond := range csr.Status.Conditions {
		if cond.Type == t && cond.Message == msg {
			return nil
		}
	}
	return c.setCondition(ctx, csr, t, reason, msg)
}

func (c *CSR) setCondition(ctx context.Context, csr *certificatesv1.CertificateSigningRequest, t certificatesv1.RequestConditionType, reason, msg string) error {
	var conds []certificatesv1.CertificateSigningRequestCondition
	for _, cond := range csr.Status.Conditions {
		if cond.Type != t {
			conds = append(conds, cond)
		}
	}
	csr.Status.Conditions = append(conds, certificatesv1.CertificateSigningRequestCondition{
		Type: t, Status: corev1.ConditionTrue, Reason: reason, Message: msg, LastUpdateTime: metav1.Now(), LastTransitionTime: metav1.Now()})
	_, err := c.cfg.Client.CertificatesV1().CertificateSigningRequests().UpdateStatus(ctx, csr, metav1.UpdateOptions{})
	return ignoreConflict(err)
}

func ignoreConflict(err error) error {
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return nil // the informer brings the newer object back
	}
	return err
}

// sign issues the certificate of an approved request.
func (c *CSR) sign(ctx context.Context, csr *certificatesv1.CertificateSigningRequest) error {
	var usage []x509.ExtKeyUsage
	switch csr.Spec.SignerName {
	case SignerKubeletClient, SignerAPIClient:
		usage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case SignerKubeletServing:
		usage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	default:
		return nil // not our signer
	}
	x, err := pki.ParseCSR(csr.Spec.Request)
	if err != nil {
		return c.fail(ctx, csr, "InvalidRequest", err.Error())
	}
	switch csr.Spec.SignerName {
	case SignerKubeletClient:
		if err := ValidateKubeletClientCSR(x, csr.Spec.Usages); err != nil {
			return c.fail(ctx, csr, "SignerValidationFailure", err.Error())
		}
	case SignerKubeletServing:
		if _, ok := nodeName(x); !ok || !usagesOK(csr.Spec.Usages, certificatesv1.UsageServerAuth) {
			return c.fail(ctx, csr, "SignerValidationFailure", "kubelet-serving requires CN=system:node:<name>, O=system:nodes and server auth usage")
		}
	case SignerAPIClient:
		if !usagesOK(csr.Spec.Usages, certificatesv1.UsageClientAuth) {
			return c.fail(ctx, csr, "SignerValidationFailure", "kube-apiserver-client requires client auth usage")
		}
	}
	validity := c.cfg.SigningDuration
	if e := csr.Spec.ExpirationSeconds; e != nil {
		if d := time.Duration(*e) * time.Second; d < validity {
			validity = max(d, 10*time.Minute)
		}
	}
	spec := pki.CertSpec{CommonName: x.Subject.CommonName, Organization: x.Subject.Organization, Usages: usage, Validity: validity}
	if csr.Spec.SignerName == SignerKubeletServing {
		spec.DNSNames, spec.IPs = x.DNSNames, x.IPAddresses
	}
	certPEM, err := c.cfg.CA.SignCSR(csr.Spec.Request, spec)
	if err != nil {
		return c.fail(ctx, csr, "SigningFailed", err.Error())
	}
	if b, _ := pem.Decode(certPEM); b == nil {
		return fmt.Errorf("signer produced no certificate")
	}
	csr.Status.Certificate = certPEM
	_, err = c.cfg.Client.CertificatesV1().CertificateSigningRequests().UpdateStatus(ctx, csr, metav1.UpdateOptions{})
	if err == nil {
		c.cfg.Logger.Info("csr signed", "name", csr.Name, "signer", csr.Spec.SignerName, "subject", x.Subject.CommonName, "validity", validity)
	}
	return ignoreConflict(err)
}

package check

import (
	"context"
	"crypto/x509"
	"fmt"
	"sort"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// issued is a certificate signed for a CSR.
type issued struct {
	csr  string
	cert *x509.Certificate
}

// nodeCerts groups the certificates issued for signer by node name
// (CN=system:node:<name>), newest first.
func nodeCerts(csrs []certificatesv1.CertificateSigningRequest, signer string) map[string][]issued {
	out := map[string][]issued{}
	for _, r := range csrs {
		if r.Spec.SignerName != signer || len(r.Status.Certificate) == 0 {
			continue
		}
		certs, err := parseCertsPEM(r.Status.Certificate)
		if err != nil {
			continue
		}
		name, ok := strings.CutPrefix(certs[0].Subject.CommonName, "system:node:")
		if !ok {
			continue
		}
		out[name] = append(out[name], issued{csr: r.Name, cert: certs[0]})
	}
	for _, l := range out {
		sort.Slice(l, func(i, j int) bool { return l[i].cert.NotBefore.After(l[j].cert.NotBefore) })
	}
	return out
}

// checkNodeToHub: node client certificates, bootstrap tokens, pending CSRs.
func (c *Checker) checkNodeToHub(ctx context.Context, e *env) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	csrs, csrErr := c.client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	switch {
	case e.nodesErr != nil:
		c.unknown(PathNodeToHub, "node client certificates", "nodes", e.nodesErr, "")
	case csrErr != nil:
		c.unknown(PathNodeToHub, "node client certificates", "nodes", csrErr, "")
	default:
		c.nodeClientCerts(e, nodeCerts(csrs.Items, certificatesv1.KubeAPIServerClientKubeletSignerName))
	}
	c.bootstrapTokens(ctx)
	if csrErr != nil {
		c.unknown(PathNodeToHub, "no CSRs pending too long", "csrs", csrErr, "")
	} else {
		c.pendingCSRs(csrs.Items)
	}
}

// nodeClientCerts reports each node's newest client certificate: issuer,
// expiry and whether it is being rotated (inferred from the CSR history).
func (c *Checker) nodeClientCerts(e *env, certs map[string][]issued) {
	const name = "client certificate (issuer, expiry, rotation)"
	now := c.cfg.Now()
	if len(e.nodes) == 0 {
		c.add(Finding{Path: PathNodeToHub, Check: name, Target: "nodes", State: Pass, Evidence: "no nodes registered"})
		return
	}
	for _, n := range e.nodes {
		l := certs[n.Name]
		if len(l) == 0 {
			c.add(Finding{Path: PathNodeToHub, Check: name, Target: n.Name, Node: n.Name, State: Unknown, Risk: RiskLow,
				Evidence: "could not verify: no certificate for system:node:" + n.Name + " was issued through a CSR that still exists (provisioned credentials, or CSRs garbage-collected); the node's certificate is only visible on the node",
				Fix:      "on the node: openssl x509 -noout -issuer -enddate -in <data-dir>/pki/kubelet-client-current.pem"})
			continue
		}
		cur := l[0].cert
		ev := fmt.Sprintf("newest from CSR %s: %s; %d certificate(s) issued for this node", l[0].csr, certSummary(cur, now), len(l))
		if e.caErr != nil {
			c.add(Finding{Path: PathNodeToHub, Check: name, Target: n.Name, Node: n.Name, State: Unknown, Evidence: "could not verify the issuer: " + e.caErr.Error() + "; " + ev})
			continue
		}
		if err := verifyChain([]*x509.Certificate{cur}, e.caPool, x509.ExtKeyUsageClientAuth, now); err != nil && cur.NotAfter.After(now) {
			c.add(Finding{Path: PathNodeToHub, Check: name, Target: n.Name, Node: n.Name, State: Warn, Risk: RiskMedium,
				Evidence: "not issued by the cluster CA the kubeconfig trusts: " + err.Error() + "; " + ev,
				Fix:      "check the hub's --cluster-signing-* CA; node client certificates should chain to the cluster CA"})
			continue
		}
		state, risk, exp := c.expiry(cur)
		fix := ""
		if state != Pass {
			fix = "the node must rotate its client certificate (tether agent does so at ~80% of its lifetime); if it cannot, re-join it with a fresh bootstrap token: tether token create"
		}
		// kubelet and tether agent renew at 70–90% of the lifetime.
		life := cur.NotAfter.Sub(cur.NotBefore)
		due := cur.NotBefore.Add(life * 9 / 10)
		rot := fmt.Sprintf("rotation (inferred from CSRs): %d issued; next renewal due by %s", len(l), due.UTC().Format(time.RFC3339))
		if state == Pass && now.After(due) {
			state, risk = Warn, RiskMedium
			rot = fmt.Sprintf("rotation appears off (inferred): past 90%% of the lifetime (%s) and no newer CSR", due.UTC().Format(time.RFC3339))
			fix = "enable client certificate rotation on the node (kubelet: rotateCertificates: true; tether agent always rotates)"
		}
		if state != Pass {
			rot = exp + "; " + rot
		}
		c.add(Finding{Path: PathNodeToHub, Check: name, Target: n.Name, Node: n.Name, State: state, Risk: risk, Evidence: rot + "; " + ev, Fix: fix})
	}
}

// bootstrapTokens flags never-expiring and expired-but-present tokens.
func (c *Checker) bootstrapTokens(ctx context.Context) {
	const name = "bootstrap tokens expire"
	secrets, err := c.client.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{FieldSelector: "type=" + string(corev1.SecretTypeBootstrapToken)})
	if err != nil {
		c.unknown(PathNodeToHub, name, "bootstrap tokens", err, "")
		return
	}
	for _, f := range classifyTokens(secrets.Items, c.cfg.Now()) {
		c.add(f)
	}
}

// classifyTokens rates each bootstrap-token Secret.
func classifyTokens(secrets []corev1.Secret, now time.Time) []Finding {
	const name = "bootstrap tokens expire"
	var out []Finding
	for _, s := range secrets {
		if s.Type != corev1.SecretTypeBootstrapToken {
			continue
		}
		id := string(s.Data["token-id"])
		del := fmt.Sprintf("tether token delete %s (kubectl -n kube-system delete secret %s)", id, s.Name)
		exp, ok := s.Data["expiration"]
		if !ok || len(exp) == 0 {
			out = append(out, Finding{Path: PathNodeToHub, Check: name, Target: s.Name, State: Fail, Risk: RiskHigh,
				Evidence: "token " + id + " never expires (no expiration): anyone who learns it can request node credentials forever",
				Fix:      del + "; create join tokens with a TTL: tether token create --ttl 1h"})
			continue
		}
		t, err := time.Parse(time.RFC3339, string(exp))
		switch {
		case err != nil:
			out = append(out, Finding{Path: PathNodeToHub, Check: name, Target: s.Name, State: Warn, Risk: RiskMedium,
				Evidence: fmt.Sprintf("token %s has an unreadable expiration %q (the authenticator rejects it)", id, exp), Fix: del})
		case !t.After(now):
			out = append(out, Finding{Path: PathNodeToHub, Check: name, Target: s.Name, State: Warn, Risk: RiskMedium,
				Evidence: "token " + id + " expired " + fmtTime(t, now) + " but is still stored (the token cleaner should have removed it)", Fix: del})
		default:
			out = append(out, Finding{Path: PathNodeToHub, Check: name, Target: s.Name, State: Pass,
				Evidence: "token " + id + " expires " + fmtTime(t, now)})
		}
	}
	if len(out) == 0 {
		out = append(out, Finding{Path: PathNodeToHub, Check: name, Target: "bootstrap tokens", State: Pass, Evidence: "no bootstrap tokens stored in kube-system"})
	}
	return out
}

// pendingCSRs reports CSRs neither approved nor denied for too long.
func (c *Checker) pendingCSRs(csrs []certificatesv1.CertificateSigningRequest) {
	const name = "no CSRs pending too long"
	now := c.cfg.Now()
	var old []string
	for _, r := range csrs {
		if csrDecided(&r) || now.Sub(r.CreationTimestamp.Time) < c.cfg.PendingCSRAge {
			continue
		}
		old = append(old, fmt.Sprintf("%s (%s, by %s, pending %s)", r.Name, r.Spec.SignerName, r.Spec.Username, now.Sub(r.CreationTimestamp.Time).Round(time.Minute)))
	}
	if len(old) == 0 {
		c.add(Finding{Path: PathNodeToHub, Check: name, Target: "csrs", State: Pass,
			Evidence: fmt.Sprintf("%d CSR(s), none pending longer than %s", len(csrs), c.cfg.PendingCSRAge)})
		return
	}
	c.add(Finding{Path: PathNodeToHub, Check: name, Target: "csrs", State: Warn, Risk: RiskMedium,
		Evidence: "pending longer than " + c.cfg.PendingCSRAge.String() + ": " + strings.Join(old, "; "),
		Fix:      "review each: kubectl certificate approve|deny <name> (a node waiting for its serving certificate cannot serve logs/exec)"})
}

func csrDecided(r *certificatesv1.CertificateSigningRequest) bool {
	for _, c := range r.Status.Conditions {
		switch c.Type {
		case certificatesv1.CertificateApproved, certificatesv1.CertificateDenied, certificatesv1.CertificateFailed:
			return true
		}
	}
	return false
}

package check

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-dev/tether/internal/hub"
)

// kubeletProbe is what one node's kubelet showed.
type kubeletProbe struct {
	addr     string
	chain    []*x509.Certificate // as served when dialled directly
	dialErr  error
	proxyErr error // GET nodes/<name>/proxy/healthz through the hub
}

// nodeProxy asks the hub to reach node's kubelet (through its egress, with
// its kubelet TLS settings); nil error means the hub got an answer.
func (c *Checker) nodeProxy(ctx context.Context, e *env, node string) error {
	if err, ok := e.proxied[node]; ok {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	body, err := c.client.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", node, "proxy", "healthz").DoRaw(ctx)
	if msg := statusMessage(body); err != nil && msg != "" && !strings.Contains(err.Error(), msg) {
		// The hub's reason (egress, dial or TLS error) is in the body.
		err = fmt.Errorf("%w: %s", err, msg)
	}
	if e.proxied == nil {
		e.proxied = map[string]error{}
	}
	e.proxied[node] = err
	return err
}

func (c *Checker) probeKubelet(ctx context.Context, e *env, n *corev1.Node) *kubeletProbe {
	p := &kubeletProbe{addr: kubeletAddr(n)}
	if p.addr == "" {
		p.dialErr = fmt.Errorf("node %s publishes no kubelet address and port", n.Name)
	} else {
		st, err := handshake(ctx, p.addr, &tls.Config{InsecureSkipVerify: true}, c.cfg.Timeout) //nolint:gosec // verified by the checks
		if err != nil {
			p.dialErr = fmt.Errorf("kubelet %s not reachable from this machine: %w", p.addr, err)
		} else {
			p.chain = st.PeerCertificates
		}
	}
	p.proxyErr = c.nodeProxy(ctx, e, n.Name)
	return p
}

// checkHubToKubelet: hub verifies kubelets; each kubelet serves a cluster-CA
// certificate naming its node; kubelet refuses anonymous requests and
// authorizes the authenticated ones.
func (c *Checker) checkHubToKubelet(ctx context.Context, e *env) {
	if e.nodesErr != nil {
		c.unknown(PathHubKubelet, "kubelet serving certificates", "nodes", e.nodesErr, "")
		c.kubeletVerification(e, nil)
		return
	}
	var servingCSRs map[string][]issued
	if l, err := c.client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{}); err == nil {
		servingCSRs = nodeCerts(l.Items, certificatesv1.KubeletServingSignerName)
	}
	probes := map[string]*kubeletProbe{}
	for i := range e.nodes {
		n := &e.nodes[i]
		p := c.probeKubelet(ctx, e, n)
		probes[n.Name] = p
		c.kubeletServingCert(e, n, p, servingCSRs[n.Name])
		c.kubeletAnonymous(ctx, n, p)
		c.kubeletAuthz(ctx, e, n, p)
	}
	c.kubeletVerification(e, probes)
}

func (c *Checker) kubeletServingCert(e *env, n *corev1.Node, p *kubeletProbe, csrs []issued) {
	const issuer = "kubelet serving certificate issued by the cluster CA"
	const names = "kubelet serving certificate names the node"
	now := c.cfg.Now()
	fixIssuer := "let the node request its serving certificate from the hub (tether agent: drop --tls-cert-file; kubelet: serverTLSBootstrap: true) so it chains to the cluster CA"
	viaHub := p.proxyErr == nil && e.discovery != nil && e.discovery[hub.DiscoveryKubeletTLSVerify] == "true" && e.discovery[hub.DiscoveryKubeletCA] == "cluster-ca"
	switch {
	case p.chain != nil && e.caErr != nil:
		c.add(Finding{Path: PathHubKubelet, Check: issuer, Target: n.Name, Node: n.Name, State: Unknown, Evidence: "could not verify: " + e.caErr.Error()})
	case p.chain != nil:
		ev := "served at " + p.addr + ": " + certSummary(p.chain[0], now)
		if err := verifyChain(p.chain, e.caPool, x509.ExtKeyUsageServerAuth, now); err != nil {
			c.add(Finding{Path: PathHubKubelet, Check: issuer, Target: n.Name, Node: n.Name, State: Fail, Risk: RiskHigh,
				Evidence: ev + ": does not chain to the cluster CA: " + err.Error(), Fix: fixIssuer})
		} else {
			state, risk, exp := c.expiry(p.chain[0])
			fix := ""
			if state != Pass {
				ev += "; " + exp
				fix = "the node rotates its serving certificate by kubelet-serving CSR; check that its CSRs are approved (kubectl get csr)"
			}
			c.add(Finding{Path: PathHubKubelet, Check: issuer, Target: n.Name, Node: n.Name, State: state, Risk: risk, Evidence: ev, Fix: fix})
		}
	case viaHub:
		c.add(Finding{Path: PathHubKubelet, Check: issuer, Target: n.Name, Node: n.Name, State: Pass,
			Evidence: "verified through the hub: its node proxy reached the kubelet while it verifies kubelets against the cluster CA (" + explain(p.dialErr) + ")"})
	default:
		c.add(Finding{Path: PathHubKubelet, Check: issuer, Target: n.Name, Node: n.Name, State: Unknown,
			Evidence: "could not verify: " + explain(p.dialErr) + "; hub node proxy: " + errText(p.proxyErr),
			Fix:      "run tether check from the node network to dial the kubelet directly"})
	}

	want := "system:node:" + n.Name
	switch {
	case p.chain != nil:
		leaf := p.chain[0]
		host, _, _ := net.SplitHostPort(p.addr)
		ev := fmt.Sprintf("served at %s: CN %q, SANs %s", p.addr, leaf.Subject.CommonName, join(sans(leaf)))
		var problems []string
		if leaf.Subject.CommonName != want && !slices.Contains(leaf.DNSNames, n.Name) {
			problems = append(problems, "names neither "+want+" nor DNS "+n.Name)
		}
		if err := leaf.VerifyHostname(host); err != nil {
			problems = append(problems, "not valid for the address the hub dials ("+host+")")
		}
		if len(problems) > 0 {
			c.add(Finding{Path: PathHubKubelet, Check: names, Target: n.Name, Node: n.Name, State: Warn, Risk: RiskMedium,
				Evidence: ev + ": " + strings.Join(problems, "; "),
				Fix:      "issue the serving certificate for CN=" + want + " with the node's addresses as SANs (kubelet-serving CSR)"})
		} else {
			c.add(Finding{Path: PathHubKubelet, Check: names, Target: n.Name, Node: n.Name, State: Pass, Evidence: ev})
		}
	case viaHub && len(csrs) > 0 && csrs[0].cert.Subject.CommonName == want:
		c.add(Finding{Path: PathHubKubelet, Check: names, Target: n.Name, Node: n.Name, State: Pass,
			Evidence: fmt.Sprintf("the hub verified the kubelet's address; newest kubelet-serving CSR %s (inferred): CN %q, SANs %s", csrs[0].csr, csrs[0].cert.Subject.CommonName, join(sans(csrs[0].cert)))})
	default:
		c.add(Finding{Path: PathHubKubelet, Check: names, Target: n.Name, Node: n.Name, State: Unknown,
			Evidence: "could not verify: " + explain(p.dialErr)})
	}
}

// kubeletGet sends GET /pods to the kubelet, with bearer token if non-empty.
func (c *Checker) kubeletGet(ctx context.Context, addr, token string) (int, string, error) {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true} //nolint:gosec // probe; the token is a 10-minute one of a powerless identity
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/pods", nil)
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Transport: tr, Timeout: c.cfg.Timeout}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	msg := resp.Status
	if m := statusMessage(b); m != "" && !strings.HasSuffix(resp.Status, m) {
		msg += ": " + m
	}
	return resp.StatusCode, msg, nil
}

func (c *Checker) kubeletAnonymous(ctx context.Context, n *corev1.Node, p *kubeletProbe) {
	const name = "kubelet refuses anonymous requests"
	if p.chain == nil {
		c.add(Finding{Path: PathHubKubelet, Check: name, Target: n.Name, Node: n.Name, State: Unknown,
			Evidence: "could not verify: " + explain(p.dialErr) + " (the hub's node proxy authenticates as the hub, so it cannot test this)",
			Fix:      "run tether check from the node network"})
		return
	}
	code, status, err := c.kubeletGet(ctx, p.addr, "")
	ev := "GET https://" + p.addr + "/pods without credentials → " + status
	switch {
	case err != nil:
		c.unknown(PathHubKubelet, name, n.Name, err, "")
	case code == http.StatusUnauthorized:
		c.add(Finding{Path: PathHubKubelet, Check: name, Target: n.Name, Node: n.Name, State: Pass, Evidence: ev})
	default:
		c.add(Finding{Path: PathHubKubelet, Check: name, Target: n.Name, Node: n.Name, State: Fail, Risk: RiskHigh, Evidence: ev,
			Fix: "turn kubelet anonymous auth off (kubelet: --anonymous-auth=false / authentication.anonymous.enabled: false; tether agent: always off)"})
	}
}

func (c *Checker) kubeletAuthz(ctx context.Context, e *env, n *corev1.Node, p *kubeletProbe) {
	const name = "kubelet authorizes requests (SubjectAccessReview)"
	if p.chain == nil {
		c.add(Finding{Path: PathHubKubelet, Check: name, Target: n.Name, Node: n.Name, State: Unknown,
			Evidence: "could not verify: " + explain(p.dialErr), Fix: "run tether check from the node network"})
		return
	}
	tok, err := c.probeToken(ctx, e)
	if err != nil {
		c.unknown(PathHubKubelet, name, n.Name, err, "")
		return
	}
	code, status, err := c.kubeletGet(ctx, p.addr, tok)
	ev := "GET https://" + p.addr + "/pods as system:serviceaccount:default:default (no nodes/* permissions) → " + status
	switch {
	case err != nil:
		c.unknown(PathHubKubelet, name, n.Name, err, "")
	case code == http.StatusForbidden:
		c.add(Finding{Path: PathHubKubelet, Check: name, Target: n.Name, Node: n.Name, State: Pass, Evidence: ev})
	case code == http.StatusUnauthorized:
		c.add(Finding{Path: PathHubKubelet, Check: name, Target: n.Name, Node: n.Name, State: Unknown, Risk: RiskLow,
			Evidence: "could not verify: the kubelet does not accept service-account tokens (webhook authentication off), so authorization was not reached: " + ev})
	default:
		c.add(Finding{Path: PathHubKubelet, Check: name, Target: n.Name, Node: n.Name, State: Fail, Risk: RiskHigh, Evidence: ev,
			Fix: "set kubelet authorization to Webhook (kubelet: --authorization-mode=Webhook; tether agent: always on)"})
	}
}

// kubeletVerification: the hub verifies kubelet serving certificates
// (published by tether; contradicted live when the hub reaches a kubelet
// whose certificate does not chain to the CA).
func (c *Checker) kubeletVerification(e *env, probes map[string]*kubeletProbe) {
	const name = "hub verifies kubelet serving certificates"
	fix := "restart the hub without --insecure-kubelet-tls (kube-apiserver: set --kubelet-certificate-authority)"
	var contradicted []string
	if e.caErr == nil && (e.discovery == nil || e.discovery[hub.DiscoveryKubeletCA] != "custom") {
		for name, p := range probes {
			if p.chain != nil && p.proxyErr == nil && verifyChain(p.chain, e.caPool, x509.ExtKeyUsageServerAuth, c.cfg.Now()) != nil {
				contradicted = append(contradicted, name)
			}
		}
		slices.Sort(contradicted)
	}
	switch {
	case len(contradicted) > 0:
		c.add(Finding{Path: PathHubKubelet, Check: name, State: Fail, Risk: RiskHigh,
			Evidence: "the hub's node proxy reached " + join(contradicted) + " although their serving certificates do not chain to the cluster CA: the hub does not verify kubelets", Fix: fix})
	case e.discoveryErr != nil:
		c.unknown(PathHubKubelet, name, "hub", e.discoveryErr, "")
	case e.discovery == nil:
		c.add(Finding{Path: PathHubKubelet, Check: name, State: Unknown,
			Evidence: "could not verify: the hub publishes no kube-system/" + hub.DiscoveryConfigMap + " (not tether?); no node contradicted verification",
			Fix:      "kube-apiserver: make sure --kubelet-certificate-authority is set"})
	case e.discovery[hub.DiscoveryKubeletTLSVerify] == "false":
		c.add(Finding{Path: PathHubKubelet, Check: name, State: Fail, Risk: RiskHigh,
			Evidence: "kube-system/" + hub.DiscoveryConfigMap + " kubeletTLSVerify=false: the hub accepts any certificate from kubelets (a man in the middle sees logs, exec sessions)", Fix: fix})
	default:
		c.add(Finding{Path: PathHubKubelet, Check: name, State: Pass,
			Evidence: fmt.Sprintf("kube-system/%s kubeletTLSVerify=%s, CA %s; no node contradicts it", hub.DiscoveryConfigMap, e.discovery[hub.DiscoveryKubeletTLSVerify], e.discovery[hub.DiscoveryKubeletCA])})
	}
}

func errText(err error) string {
	if err == nil {
		return "answered"
	}
	return explain(err)
}

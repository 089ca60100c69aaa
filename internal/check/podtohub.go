package check

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// checkPodToHub: the kubernetes Service and its Endpoints lead to the live
// hub, service-account tokens are bound, no legacy token Secrets.
func (c *Checker) checkPodToHub(ctx context.Context, e *env) {
	c.kubernetesService(ctx, e)
	c.boundTokens(ctx, e)
	c.legacyTokenSecrets(ctx)
}

// kubernetesService verifies every endpoint of default/kubernetes by TLS:
// it must present a certificate the cluster CA verifies for the Service's
// ClusterIP and kubernetes.default.svc (what pods check), ideally the same
// hub the admin reaches.
func (c *Checker) kubernetesService(ctx context.Context, e *env) {
	const name = "kubernetes Service and Endpoints lead to the hub"
	rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	svc, err := c.client.CoreV1().Services(metav1.NamespaceDefault).Get(rctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		c.unknown(PathPodToHub, name, "default/kubernetes", err, "")
		return
	}
	eps, err := c.client.CoreV1().Endpoints(metav1.NamespaceDefault).Get(rctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		c.unknown(PathPodToHub, name, "default/kubernetes", err, "")
		return
	}
	var addrs []string
	for _, ss := range eps.Subsets {
		for _, a := range ss.Addresses {
			for _, p := range ss.Ports {
				addrs = append(addrs, net.JoinHostPort(a.IP, strconv.Itoa(int(p.Port))))
			}
		}
	}
	ev := fmt.Sprintf("Service ClusterIP %s port %s; Endpoints %s", svc.Spec.ClusterIP, servicePorts(svc), join(addrs))
	if len(addrs) == 0 {
		c.add(Finding{Path: PathPodToHub, Check: name, Target: "default/kubernetes", State: Fail, Risk: RiskHigh,
			Evidence: ev + ": pods have no way to reach the hub", Fix: "restart the hub: it reconciles the kubernetes Endpoints with its --advertise-address"})
		return
	}
	if e.caErr != nil {
		c.add(Finding{Path: PathPodToHub, Check: name, Target: "default/kubernetes", State: Unknown, Evidence: "could not verify: " + e.caErr.Error() + "; " + ev})
		return
	}
	hubCert, hubErr := handshake(ctx, e.host, &tls.Config{InsecureSkipVerify: true}, c.cfg.Timeout) //nolint:gosec // compared below
	var bad, unreachable, other []string
	for _, a := range addrs {
		st, err := handshake(ctx, a, &tls.Config{InsecureSkipVerify: true}, c.cfg.Timeout) //nolint:gosec // verified below
		if err != nil {
			unreachable = append(unreachable, a+" ("+explain(err)+")")
			continue
		}
		if err := verifyChain(st.PeerCertificates, e.caPool, x509.ExtKeyUsageServerAuth, c.cfg.Now()); err != nil {
			bad = append(bad, a+": "+err.Error())
			continue
		}
		for _, n := range []string{svc.Spec.ClusterIP, "kubernetes.default.svc"} {
			if n != "" && n != "None" && st.PeerCertificates[0].VerifyHostname(n) != nil {
				bad = append(bad, fmt.Sprintf("%s: certificate not valid for %s, which pods dial", a, n))
			}
		}
		if hubErr == nil && !bytes.Equal(st.PeerCertificates[0].Raw, hubCert.PeerCertificates[0].Raw) {
			other = append(other, a)
		}
	}
	switch {
	case len(bad) > 0:
		c.add(Finding{Path: PathPodToHub, Check: name, Target: "default/kubernetes", State: Fail, Risk: RiskHigh,
			Evidence: ev + "; " + strings.Join(bad, "; "),
			Fix:      "the Endpoints must list only live hubs whose serving certificate (cluster CA) names the Service IP and kubernetes.default.svc; restart the hub to reconcile them"})
	case len(unreachable) > 0:
		c.add(Finding{Path: PathPodToHub, Check: name, Target: "default/kubernetes", State: Unknown,
			Evidence: "could not verify: endpoint(s) unreachable from this machine: " + strings.Join(unreachable, "; ") + "; " + ev,
			Fix:      "run tether check from a machine on the node network, or remove stale hub addresses from the Endpoints"})
	default:
		note := "every endpoint presents a cluster-CA certificate valid for the Service IP and kubernetes.default.svc"
		if len(other) > 0 {
			note += "; " + join(other) + " serve(s) a different certificate than the hub you reached (another hub of an HA set?)"
		} else {
			note += ", the same one as the hub you reached"
		}
		c.add(Finding{Path: PathPodToHub, Check: name, Target: "default/kubernetes", State: Pass, Evidence: ev + "; " + note})
	}
}

func servicePorts(s *corev1.Service) string {
	var p []string
	for _, sp := range s.Spec.Ports {
		p = append(p, fmt.Sprintf("%s/%d→%s", sp.Name, sp.Port, sp.TargetPort.String()))
	}
	return join(p)
}

// probeTokenAudienceless requests a short-lived token for default/default
// (nothing is stored: TokenRequest only signs). Cached per run.
func (c *Checker) probeToken(ctx context.Context, e *env) (string, error) {
	if e.tokenDone {
		return e.token, e.tokenErr
	}
	e.tokenDone = true
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	exp := int64(600)
	tr, err := c.client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).CreateToken(ctx, "default",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		e.tokenErr = fmt.Errorf("TokenRequest for default/default: %w", err)
		return "", e.tokenErr
	}
	e.token = tr.Status.Token
	return e.token, nil
}

// jwtClaims decodes (without verifying) the claims of a JWT.
func jwtClaims(tok string) (map[string]any, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("not a JWT (%d parts)", len(parts))
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("JWT claims: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("JWT claims: %w", err)
	}
	return m, nil
}

// boundTokens checks that a requested token carries an expiry close to what
// was asked and an audience (bound token), as pods get.
func (c *Checker) boundTokens(ctx context.Context, e *env) {
	const name = "service-account tokens are bound (expiry, audience)"
	tok, err := c.probeToken(ctx, e)
	if err != nil {
		c.unknown(PathPodToHub, name, "serviceaccounts", err, "")
		return
	}
	claims, err := jwtClaims(tok)
	if err != nil {
		c.unknown(PathPodToHub, name, "serviceaccounts", err, "")
		return
	}
	exp, _ := claims["exp"].(float64)
	iat, _ := claims["iat"].(float64)
	ev := fmt.Sprintf("TokenRequest (600s) for default/default returned iss=%v aud=%v exp-iat=%s", claims["iss"], claims["aud"], time.Duration(exp-iat)*time.Second)
	switch {
	case exp == 0:
		c.add(Finding{Path: PathPodToHub, Check: name, Target: "serviceaccounts", State: Fail, Risk: RiskHigh, Evidence: ev + ": no expiry",
			Fix: "the token issuer must set exp (kube-apiserver: --service-account-max-token-expiration)"})
	case exp-iat > 48*3600:
		c.add(Finding{Path: PathPodToHub, Check: name, Target: "serviceaccounts", State: Warn, Risk: RiskMedium, Evidence: ev + ": far longer than requested",
			Fix: "lower --service-account-max-token-expiration; disable extended tokens (--service-account-extend-token-expiration=false)"})
	default:
		c.add(Finding{Path: PathPodToHub, Check: name, Target: "serviceaccounts", State: Pass, Evidence: ev})
	}
}

// legacyTokenSecrets lists kubernetes.io/service-account-token Secrets:
// long-lived tokens that never expire.
func (c *Checker) legacyTokenSecrets(ctx context.Context) {
	const name = "no legacy long-lived service-account token Secrets"
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	l, err := c.client.CoreV1().Secrets(metav1.NamespaceAll).List(ctx, metav1.ListOptions{FieldSelector: "type=" + string(corev1.SecretTypeServiceAccountToken)})
	if err != nil {
		c.unknown(PathPodToHub, name, "secrets", err, "")
		return
	}
	var names []string
	for _, s := range l.Items {
		if s.Type == corev1.SecretTypeServiceAccountToken {
			names = append(names, s.Namespace+"/"+s.Name+" (for "+s.Annotations[corev1.ServiceAccountNameKey]+")")
		}
	}
	if len(names) == 0 {
		c.add(Finding{Path: PathPodToHub, Check: name, Target: "secrets", State: Pass, Evidence: "no Secrets of type kubernetes.io/service-account-token in any namespace"})
		return
	}
	c.add(Finding{Path: PathPodToHub, Check: name, Target: "secrets", State: Warn, Risk: RiskMedium,
		Evidence: fmt.Sprintf("%d legacy token Secret(s), valid until deleted: %s", len(names), strings.Join(names, ", ")),
		Fix:      "delete them (kubectl -n <ns> delete secret <name>) and use bound tokens: projected volumes or kubectl create token"})
}

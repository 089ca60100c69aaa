package check

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/tether-dev/tether/internal/hub"
)

// env is what several checks share, read once.
type env struct {
	host      string // host:port of the API server
	serverURL *url.URL
	caPool    *x509.CertPool // the CA the admin trusts for the hub (cluster CA)
	caCerts   []*x509.Certificate
	caErr     error

	nodes    []corev1.Node
	nodesErr error

	discovery    map[string]string // kube-system/tether-hub; nil when absent
	discoveryErr error             // nil also when absent (not tether)

	// probe token (TokenRequest for default/default), requested once.
	tokenDone bool
	token     string
	tokenErr  error

	proxied map[string]error // node proxy results by node

	rbac    *rbacState
	rbacErr error
}

// gather reads what several checks need; failures are kept for the
// checks to report.
func (c *Checker) gather(ctx context.Context) *env {
	e := c.gatherURL()
	e.caPool, e.caCerts, e.caErr = caFromConfig(c.cfg.REST)

	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	nodes, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		e.nodesErr = err
	} else {
		e.nodes = nodes.Items
		for _, n := range nodes.Items {
			c.report.Nodes = append(c.report.Nodes, Node{Name: n.Name, Ready: nodeReady(&n)})
		}
	}
	cm, err := c.client.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, hub.DiscoveryConfigMap, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		e.discoveryErr = err
	default:
		e.discovery = cm.Data
		if e.discovery == nil {
			e.discovery = map[string]string{}
		}
	}
	return e
}

// gatherURL fills the hub address from the configured URL (valid: New
// checked it).
func (c *Checker) gatherURL() *env {
	e := &env{}
	e.serverURL, _ = url.Parse(c.cfg.REST.Host)
	e.host = e.serverURL.Host
	if e.serverURL.Port() == "" {
		e.host = net.JoinHostPort(e.serverURL.Hostname(), "443")
	}
	return e
}

// egressMode is the hub's published egress mode, or "" when unknown.
func (e *env) egressMode() string {
	if e.discovery == nil {
		return ""
	}
	return e.discovery[hub.DiscoveryEgress]
}

// caFromConfig returns the CA bundle the kubeconfig trusts for the hub.
func caFromConfig(rc *rest.Config) (*x509.CertPool, []*x509.Certificate, error) {
	data := rc.CAData
	if len(data) == 0 && rc.CAFile != "" {
		var err error
		if data, err = os.ReadFile(rc.CAFile); err != nil {
			return nil, nil, fmt.Errorf("kubeconfig CA: %w", err)
		}
	}
	if len(data) == 0 {
		return nil, nil, errors.New("the kubeconfig names no certificate authority for the hub (system roots are not the cluster CA)")
	}
	certs, err := parseCertsPEM(data)
	if err != nil {
		return nil, nil, fmt.Errorf("kubeconfig CA: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, certs, nil
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// kubeletAddr is where the hub would dial node's kubelet (InternalIP first,
// as tether and kube-apiserver prefer), or "".
func kubeletAddr(n *corev1.Node) string {
	port := n.Status.DaemonEndpoints.KubeletEndpoint.Port
	if port == 0 {
		return ""
	}
	for _, t := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP, corev1.NodeHostName} {
		for _, a := range n.Status.Addresses {
			if a.Type == t && a.Address != "" {
				return net.JoinHostPort(a.Address, fmt.Sprint(port))
			}
		}
	}
	return ""
}

// explain turns an error into the reason a check could not be carried out.
func explain(err error) string {
	var se apierrors.APIStatus
	switch {
	case err == nil:
		return "no error"
	case apierrors.IsUnauthorized(err):
		return "the API server rejected the admin credentials (401 Unauthorized): are they expired or revoked? Renew the kubeconfig's client certificate or token"
	case apierrors.IsForbidden(err):
		msg := err.Error()
		if errors.As(err, &se) {
			msg = se.Status().Message
		}
		return "permission denied (403): " + msg + " — run tether check as a cluster admin"
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out: " + err.Error()
	}
	var cie x509.CertificateInvalidError
	if errors.As(err, &cie) && cie.Reason == x509.Expired {
		return "certificate expired: " + err.Error()
	}
	var oe *net.OpError
	if errors.As(err, &oe) || strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "no such host") {
		return "hub unreachable: " + err.Error()
	}
	return err.Error()
}

// handshake dials addr and completes a TLS handshake with cfg.
func handshake(ctx context.Context, addr string, cfg *tls.Config, timeout time.Duration) (*tls.ConnectionState, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	st := conn.(*tls.Conn).ConnectionState()
	return &st, nil
}

// fmtTime prints t with how far away it is.
func fmtTime(t, now time.Time) string {
	d := t.Sub(now).Round(time.Minute)
	if d < 0 {
		return fmt.Sprintf("%s (expired %s ago)", t.UTC().Format(time.RFC3339), (-d).String())
	}
	return fmt.Sprintf("%s (in %s)", t.UTC().Format(time.RFC3339), humanDuration(d))
}

func humanDuration(d time.Duration) string {
	if d >= 48*time.Hour {
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
	return d.String()
}

// Package proxy is the hub's control-plane → node path: the pods/log,
// pods/exec, pods/attach and pods/portforward subresources that stream to the
// kubelet API, and the nodes/proxy, pods/proxy and services/proxy
// subresources. Every connection is dialled through the egress dialer; the
// kubelet's serving certificate is verified by default and must name the
// node the hub meant to reach.
package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"

	"github.com/tether-dev/tether/internal/egress"
)

// Getter reads one object by name (a generic registry Store satisfies it).
type Getter interface {
	Get(ctx context.Context, name string, options *metav1.GetOptions) (runtime.Object, error)
}

// KubeletConfig is how the hub reaches kubelets.
type KubeletConfig struct {
	// Dialer is the egress dialer for the cluster network. Required.
	Dialer egress.Dialer
	// ClientCertFile/ClientKeyFile: the hub's kubelet-client identity.
	ClientCertFile, ClientKeyFile string
	// CAFile verifies kubelet serving certificates (--kubelet-certificate-authority);
	// the cluster CA by default.
	CAFile string
	// InsecureSkipTLSVerify restores Kubernetes' old default of not verifying
	// the kubelet (--insecure-kubelet-tls). Warned at start and per connection.
	InsecureSkipTLSVerify bool
	// PreferredAddressTypes orders node addresses; zero value
	// Hostname-free InternalIP, ExternalIP (tether never resolves names).
	PreferredAddressTypes []corev1.NodeAddressType
	// AllowLoopbackNodes lets nodes/proxy reach node addresses on loopback:
	// only for a purely local cluster whose hub itself is on loopback.
	AllowLoopbackNodes bool
	Logger             *slog.Logger
}

// kubelet builds transports to individual kubelets.
type kubelet struct {
	cfg  KubeletConfig
	pool *x509.CertPool
	cert tls.Certificate
}

func newKubelet(cfg KubeletConfig) (*kubelet, error) {
	if cfg.Dialer == nil {
		return nil, errors.New("proxy: an egress dialer is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if len(cfg.PreferredAddressTypes) == 0 {
		cfg.PreferredAddressTypes = []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP}
	}
	k := &kubelet{cfg: cfg}
	cert, err := tls.LoadX509KeyPair(cfg.ClientCertFile, cfg.ClientKeyFile)
	if err != nil {
		return nil, fmt.Errorf("proxy: kubelet client certificate: %w", err)
	}
	k.cert = cert
	if !cfg.InsecureSkipTLSVerify {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("proxy: kubelet certificate authority: %w", err)
		}
		k.pool = x509.NewCertPool()
		if !k.pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("proxy: no certificates in %s", cfg.CAFile)
		}
	} else {
		cfg.Logger.Warn("INSECURE: --insecure-kubelet-tls: kubelet serving certificates are not verified; anyone on the path to a node can impersonate its kubelet")
	}
	return k, nil
}

// nodeTarget is where a node's kubelet listens.
type nodeTarget struct {
	Name string
	Host string // an IP literal
	Port int
}

// target picks the node's address by preference and its kubelet port.
func (k *kubelet) target(node *corev1.Node) (nodeTarget, error) {
	port := int(node.Status.DaemonEndpoints.KubeletEndpoint.Port)
	if port <= 0 || port > 65535 {
		port = 10250
	}
	for _, t := range k.cfg.PreferredAddressTypes {
		for _, a := range node.Status.Addresses {
			if a.Type == t && net.ParseIP(a.Address) != nil {
				return nodeTarget{Name: node.Name, Host: a.Address, Port: port}, nil
			}
		}
	}
	return nodeTarget{}, apierrors.NewServiceUnavailable(fmt.Sprintf("node %q has no address of types %v", node.Name, k.cfg.PreferredAddressTypes))
}

func (t nodeTarget) hostPort() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }

// transport returns a transport that reaches exactly this node's kubelet:
// dialled through egress, the serving certificate chained to the kubelet CA,
// valid for the address dialled, and issued to system:node:<name>.
func (k *kubelet) transport(t nodeTarget) *http.Transport {
	tc := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{k.cert},
		ServerName:   t.Host,
		RootCAs:      k.pool,
	}
	if k.cfg.InsecureSkipTLSVerify {
		tc.InsecureSkipVerify = true
		log := k.cfg.Logger
		tc.VerifyConnection = func(tls.ConnectionState) error {
			log.Warn("INSECURE: connecting to kubelet without verifying its certificate", "node", t.Name, "address", t.hostPort())
			return nil
		}
	} else {
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return &kubeletCertError{node: t.Name, msg: "presented no certificate"}
			}
			leaf := cs.PeerCertificates[0]
			if want := "system:node:" + t.Name; leaf.Subject.CommonName != want {
				return &kubeletCertError{node: t.Name, msg: fmt.Sprintf("presented a certificate for %q, not %q", leaf.Subject.CommonName, want)}
			}
			return nil
		}
	}
	dial := k.cfg.Dialer
	return &http.Transport{
		DialContext:           dial.DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 0,
		// One transport per request: no idle connections left behind.
		DisableKeepAlives: true,
		ForceAttemptHTTP2: false,
	}
}

// kubeletCertError says why a kubelet was not trusted.
type kubeletCertError struct{ node, msg string }

func (e *kubeletCertError) Error() string {
	return fmt.Sprintf("kubelet on node %q %s", e.node, e.msg)
}

// badGateway turns a failure to reach a backend into a 502 Status that
// names the reason (untrusted kubelet certificate, egress failure, …).
func badGateway(err error) error {
	var se apierrors.APIStatus
	if errors.As(err, &se) {
		return err
	}
	var unknownAuthority x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	msg := err.Error()
	switch {
	case errors.As(err, &unknownAuthority):
		msg = "kubelet certificate is not signed by the kubelet certificate authority (self-signed or foreign CA): " + err.Error()
	case errors.As(err, &hostErr):
		msg = "kubelet certificate does not name the address dialled: " + err.Error()
	case errors.As(err, &invalid):
		msg = "kubelet certificate is invalid (expired or not yet valid?): " + err.Error()
	}
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusBadGateway, Reason: metav1.StatusReasonServiceUnavailable,
		Message: "error trying to reach backend: " + msg,
	}}
}

func namespaced(ctx context.Context, ns string) context.Context {
	return genericapirequest.WithNamespace(ctx, ns)
}

// Package tunnel runs the node's Konnectivity agent: when the hub says its
// egress is Konnectivity (the kube-public/tether-konnectivity ConfigMap), the
// node dials out to the hub's Konnectivity server with its own node client
// certificate and serves the hub's connections to this node's kubelet and
// pods — so the hub never needs a route to the node.
package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-dev/tether/internal/konnectivity/agent"
	"github.com/tether-dev/tether/internal/konnectivity/wire"
)

// ConfigMap and key where the hub publishes its agent address.
const (
	ConfigMapNamespace = "kube-public"
	ConfigMapName      = "tether-konnectivity"
)

// Config configures the tunnel.
type Config struct {
	// Client reads the ConfigMap (node identity). Required unless Server is set.
	Client kubernetes.Interface
	// Server is host:port of the Konnectivity agent port; "" discovers it.
	Server string
	// CertFile holds the node's client certificate and key (PEM, both in one
	// file, re-read at every handshake so rotation applies). Required.
	CertFile string
	// CAPEM verifies the server. Required.
	CAPEM []byte
	// NodeName is the agent ID. Required.
	NodeName string
	// Addresses are the node's IPs, announced and allowed as destinations.
	Addresses []netip.Addr
	// PodCIDRs are announced and allowed as destinations.
	PodCIDRs []netip.Prefix
	// PollInterval is how often to look for the ConfigMap; zero value 30s.
	PollInterval time.Duration
	Logger       *slog.Logger
}

// Tunnel is the node's Konnectivity agent.
type Tunnel struct{ cfg Config }

// New validates cfg.
func New(cfg Config) (*Tunnel, error) {
	if cfg.CertFile == "" || len(cfg.CAPEM) == 0 || cfg.NodeName == "" {
		return nil, errors.New("tunnel: cert file, CA and node name are required")
	}
	if cfg.Server == "" && cfg.Client == nil {
		return nil, errors.New("tunnel: a client is required to discover the server")
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Tunnel{cfg: cfg}, nil
}

// discover returns the published server address, or "" when the hub does
// not use Konnectivity.
func (t *Tunnel) discover(ctx context.Context) (string, error) {
	if t.cfg.Server != "" {
		return t.cfg.Server, nil
	}
	cm, err := t.cfg.Client.CoreV1().ConfigMaps(ConfigMapNamespace).Get(ctx, ConfigMapName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return cm.Data["server"], nil
}

// Run waits until the hub publishes a server, then keeps the agent connected
// until ctx ends.
func (t *Tunnel) Run(ctx context.Context) error {
	var server string
	for {
		s, err := t.discover(ctx)
		if err != nil && ctx.Err() == nil {
			t.cfg.Logger.Debug("konnectivity discovery", "err", err)
		}
		if s != "" {
			server = s
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(t.cfg.PollInterval):
		}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(t.cfg.CAPEM) {
		return errors.New("tunnel: no CA certificate")
	}
	certFile := t.cfg.CertFile
	tc := &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := tls.LoadX509KeyPair(certFile, certFile)
			if err != nil {
				return nil, fmt.Errorf("node client certificate: %w", err)
			}
			return &c, nil
		},
	}
	ids := wire.Identifiers{Hosts: []string{t.cfg.NodeName}, CIDRs: t.cfg.PodCIDRs}
	var allowed []netip.Prefix
	for _, a := range t.cfg.Addresses {
		if a.Is4() {
			ids.IPv4 = append(ids.IPv4, a)
		} else {
			ids.IPv6 = append(ids.IPv6, a)
		}
		allowed = append(allowed, netip.PrefixFrom(a, a.BitLen()))
	}
	allowed = append(allowed, t.cfg.PodCIDRs...)
	a, err := agent.New(agent.Config{
		Logger:              t.cfg.Logger.With("component", "konnectivity-agent"),
		Servers:             []string{server},
		TLS:                 tc,
		AgentID:             t.cfg.NodeName,
		Identifiers:         ids,
		AllowedDestinations: allowed,
	})
	if err != nil {
		return fmt.Errorf("tunnel: %w", err)
	}
	t.cfg.Logger.Info("konnectivity agent dialling out", "server", server, "node", t.cfg.NodeName)
	return a.Run(ctx)
}

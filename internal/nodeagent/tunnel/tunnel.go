// Package tunnel runs the node's Konnectivity agent: when the hub says its
// egress is Konnectivity (the kube-public/tether-konnectivity ConfigMap), the
// node dials out to the hub's Konnectivity server with its own node client
// certificate and serves the hub's connections to this node's kubelet and
// pods — so the hub never needs a route to the node. With several hub
// replicas (each with its own in-process Konnectivity server) the agent
// connects to every live replica listed in the `kubernetes` Endpoints, so a
// dial from any replica reaches the node and a replica's death costs nothing.
package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sort"
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

// discover returns the Konnectivity servers to connect to, or nil when the
// hub does not use Konnectivity: the published address and, when it is
// collocated with the API server (same host as an address of the
// `kubernetes` Endpoints), the same port on every live replica.
func (t *Tunnel) discover(ctx context.Context) ([]string, error) {
	if t.cfg.Server != "" {
		return []string{t.cfg.Server}, nil
	}
	cm, err := t.cfg.Client.CoreV1().ConfigMaps(ConfigMapNamespace).Get(ctx, ConfigMapName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	server := cm.Data["server"]
	host, port, err := net.SplitHostPort(server)
	if err != nil {
		return nil, fmt.Errorf("published konnectivity server %q: %w", server, err)
	}
	ep, err := t.cfg.Client.CoreV1().Endpoints(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.cfg.Logger.Debug("konnectivity discovery: kubernetes Endpoints", "err", err)
		return []string{server}, nil
	}
	var replicas []string
	collocated := false
	for _, ss := range ep.Subsets {
		for _, a := range ss.Addresses {
			replicas = append(replicas, net.JoinHostPort(a.IP, port))
			collocated = collocated || a.IP == host
		}
	}
	if !collocated {
		return []string{server}, nil
	}
	sort.Strings(replicas)
	return replicas, nil
}

// Run waits until the hub publishes a server, then keeps the agent connected
// to every discovered server until ctx ends, restarting it with the new set
// when a replica appears.
func (t *Tunnel) Run(ctx context.Context) error {
	var running []string
	var stop context.CancelFunc = func() {}
	done := make(chan error, 1)
	defer func() {
		stop()
		if running != nil {
			<-done
		}
	}()
	for {
		servers, err := t.discover(ctx)
		if err != nil && ctx.Err() == nil {
			t.cfg.Logger.Debug("konnectivity discovery", "err", err)
		}
		// Restart only when a server appears: a replica that left is just
		// retried by the agent, so live tunnels through the others survive.
		if len(servers) > 0 && slices.ContainsFunc(servers, func(s string) bool { return !slices.Contains(running, s) }) {
			if running != nil {
				stop()
				<-done
				t.cfg.Logger.Info("konnectivity servers changed", "servers", servers)
			}
			a, err := t.newAgent(servers)
			if err != nil {
				return err
			}
			actx, cancel := context.WithCancel(ctx)
			stop, running = cancel, servers
			go func() { done <- a.Run(actx) }()
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-done:
			running = nil
			if err != nil {
				return err
			}
		case <-time.After(t.cfg.PollInterval):
		}
	}
}

func (t *Tunnel) newAgent(servers []string) (*agent.Agent, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(t.cfg.CAPEM) {
		return nil, errors.New("tunnel: no CA certificate")
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
		Servers:             servers,
		TLS:                 tc,
		AgentID:             t.cfg.NodeName,
		Identifiers:         ids,
		AllowedDestinations: allowed,
	})
	if err != nil {
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	t.cfg.Logger.Info("konnectivity agent dialling out", "servers", servers, "node", t.cfg.NodeName)
	return a, nil
}

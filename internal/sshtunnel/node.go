package sshtunnel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"golang.org/x/crypto/ssh"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// NodeEndpointConfig wires an Endpoint into a node agent.
type NodeEndpointConfig struct {
	// Client has the node's identity (required).
	Client kubernetes.Interface
	// NodeName is this node (required).
	NodeName string
	// Address to listen on, e.g. ":2222" (required).
	Address string
	// HostKeyFile; generated (ed25519, 0600) when missing (required).
	HostKeyFile string
	// KubeletPort is the allowed kubelet destination port (required).
	KubeletPort int
	// PollInterval for the hub key and Node addresses; zero value 30s.
	PollInterval time.Duration
	// Logger; zero value slog.Default().
	Logger *slog.Logger
}

// NodeEndpoint publishes the node's SSH host key on its Node, follows the
// hub key in kube-system/tether-ssh and serves the restricted Endpoint.
type NodeEndpoint struct {
	cfg NodeEndpointConfig
	key ssh.Signer
}

// NewNodeEndpoint loads or creates the host key.
func NewNodeEndpoint(cfg NodeEndpointConfig) (*NodeEndpoint, error) {
	if cfg.Client == nil || cfg.NodeName == "" || cfg.Address == "" || cfg.HostKeyFile == "" {
		return nil, errors.New("sshtunnel: NodeEndpointConfig needs Client, NodeName, Address and HostKeyFile")
	}
	if cfg.KubeletPort < 1 || cfg.KubeletPort > 65535 {
		return nil, fmt.Errorf("sshtunnel: kubelet port %d out of range", cfg.KubeletPort)
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	key, err := LoadOrCreateKey(cfg.HostKeyFile)
	if err != nil {
		return nil, err
	}
	return &NodeEndpoint{cfg: cfg, key: key}, nil
}

// Run listens, publishes the host key (before serving, so the hub never
// sees an unpublished key) and serves until ctx ends.
func (n *NodeEndpoint) Run(ctx context.Context) error {
	log := n.cfg.Logger
	ln, err := net.Listen("tcp", n.cfg.Address)
	if err != nil {
		return fmt.Errorf("sshtunnel: listen %s: %w", n.cfg.Address, err)
	}
	var ep *Endpoint
	ep, err = NewEndpoint(EndpointConfig{Listener: ln, HostKey: n.key, Logger: log,
		// A refused destination re-reads the Node first: its pod CIDR
		// may have been allocated after the last poll.
		Recheck: func(ctx context.Context) { n.destinations(ctx, ep) }})
	if err != nil {
		ln.Close()
		return err
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	// Publish first; poll until the Node exists and the write succeeds.
	for attempt := 0; ; attempt++ {
		err := n.publish(ctx, port)
		if err == nil {
			break
		}
		if attempt%10 == 0 {
			log.Info("ssh endpoint: publishing host key", "err", err)
		}
		select {
		case <-ctx.Done():
			ln.Close()
			return nil
		case <-time.After(time.Second):
		}
	}
	haveKey := n.refresh(ctx, ep)
	errc := make(chan error, 1)
	go func() { errc <- ep.Run(ctx) }()
	log.Info("ssh endpoint serving", "addr", ln.Addr().String(), "hostKey", ssh.FingerprintSHA256(n.key.PublicKey()))
	for {
		// Poll quickly until the hub has published its key.
		delay := n.cfg.PollInterval
		if !haveKey {
			delay = min(delay, time.Second)
		}
		timer := time.NewTimer(delay)
		select {
		case err := <-errc:
			timer.Stop()
			return err
		case <-timer.C:
			haveKey = n.refresh(ctx, ep) || haveKey
		}
	}
}

// publish writes the host key and SSH port annotations on the own Node.
func (n *NodeEndpoint) publish(ctx context.Context, port string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
		HostKeyAnnotation: AuthorizedKey(n.key.PublicKey()),
		PortAnnotation:    port,
	}}})
	if err != nil {
		return fmt.Errorf("sshtunnel: %w", err)
	}
	if _, err := n.cfg.Client.CoreV1().Nodes().Patch(ctx, n.cfg.NodeName, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("sshtunnel: publish host key on node %q: %w", n.cfg.NodeName, err)
	}
	return nil
}

// refresh reloads the hub key and the allowed destinations; it reports
// whether a hub key was loaded.
func (n *NodeEndpoint) refresh(ctx context.Context, ep *Endpoint) bool {
	log := n.cfg.Logger
	loaded := false
	cm, err := n.cfg.Client.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, ConfigMapName, metav1.GetOptions{})
	if err != nil {
		log.Info("ssh endpoint: reading hub key", "err", err)
	} else if k, err := ParseAuthorizedKey(cm.Data[ConfigMapKey]); err != nil {
		log.Warn("ssh endpoint: bad hub key", "err", err)
	} else {
		ep.SetAuthorizedKeys(k)
		loaded = true
	}
	n.destinations(ctx, ep)
	return loaded
}

// destinations re-reads the own Node and sets the allowed destinations.
func (n *NodeEndpoint) destinations(ctx context.Context, ep *Endpoint) {
	node, err := n.cfg.Client.CoreV1().Nodes().Get(ctx, n.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		n.cfg.Logger.Info("ssh endpoint: reading node", "err", err)
		return
	}
	ep.SetDestinations(NodeDestinations(node, n.cfg.KubeletPort))
}

// NodeDestinations allows the kubelet port on the node's IPs and its pod CIDRs.
func NodeDestinations(node *corev1.Node, kubeletPort int) Destinations {
	d := Destinations{Ports: []uint16{uint16(kubeletPort)}}
	if p := node.Status.DaemonEndpoints.KubeletEndpoint.Port; p > 0 && p != int32(kubeletPort) && p <= 65535 {
		d.Ports = append(d.Ports, uint16(p))
	}
	for _, a := range node.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			d.IPs = append(d.IPs, ip.Unmap())
		}
	}
	cidrs := node.Spec.PodCIDRs
	if len(cidrs) == 0 && node.Spec.PodCIDR != "" {
		cidrs = []string{node.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			d.Prefixes = append(d.Prefixes, p.Masked())
		}
	}
	return d
}

package hub

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-dev/tether/internal/konnectivity/client"
	"github.com/tether-dev/tether/internal/konnectivity/server"
	"github.com/tether-dev/tether/internal/konnectivity/wire"
	"github.com/tether-dev/tether/internal/pki"
	"github.com/tether-dev/tether/internal/tlspolicy"
)

// KonnectivityConfigMap (in kube-public) tells node agents where the hub's
// in-process Konnectivity server takes agents: key "server" = host:port.
const KonnectivityConfigMap = "tether-konnectivity"

// KonnectivityConfig runs a Konnectivity server inside the hub.
type KonnectivityConfig struct {
	// Enabled starts the in-process server; --egress=konnectivity without an
	// external server socket turns it on.
	Enabled bool
	// AgentPort is the mTLS port agents dial; zero value 8132.
	AgentPort int
	// BindAddress for the agent port; zero value: the hub's bind address.
	BindAddress net.IP
}

// konnectivity is the in-process server and its frontend socket.
type konnectivity struct {
	srv    *server.Server
	uds    string
	listen server.ListenConfig
	addr   string // advertised agent address
}

// newKonnectivity prepares the in-process server: agents authenticate with
// their node client certificate (CN=system:node:<name>) and may serve only
// their own name and addresses; the API server's egress dials it over a
// Unix socket in the data dir.
func (h *Hub) newKonnectivity(cluster *pki.Cluster, servingChain string, nodes func(string) (*corev1.Node, error)) (*konnectivity, error) {
	kc := h.cfg.Konnectivity
	port := kc.AgentPort
	if port == 0 {
		port = 8132
	}
	bind := kc.BindAddress
	if bind == nil {
		bind = h.cfg.BindAddress
	}
	srv, err := server.New(server.Config{
		Logger:     h.cfg.Logger.With("component", "konnectivity-server"),
		Strategies: []server.Strategy{server.StrategyNodeName, server.StrategyDestHost},
		Authenticator: server.CertAuthenticator{Allow: func(cn string) error {
			if !strings.HasPrefix(cn, "system:node:") {
				return fmt.Errorf("%q is not a node identity", cn)
			}
			return nil
		}},
		Entitled: func(identity, agentID string, ids wire.Identifiers) error {
			return entitled(identity, agentID, ids, nodes)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("konnectivity: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(servingChain, cluster.ServingKeyFile)
	if err != nil {
		return nil, fmt.Errorf("konnectivity: %w", err)
	}
	suites := h.cfg.CipherSuites
	if suites == nil {
		suites = tlspolicy.Default()
	}
	pool := x509.NewCertPool()
	pool.AddCert(cluster.CA.Cert)
	uds := filepath.Join(h.cfg.DataDir, "konnectivity.sock")
	_ = os.Remove(uds) // a stale socket from a crashed run
	return &konnectivity{
		srv: srv,
		uds: uds,
		listen: server.ListenConfig{
			// gRPC on the in-process socket: unlike HTTP CONNECT over a Unix
			// socket it can tell the hub's dialer that a connection ended
			// abnormally (a socket cannot carry a reset), so a truncated
			// transfer never looks complete.
			Mode:      server.ModeGRPC,
			UDSName:   uds,
			AgentAddr: net.JoinHostPort(bind.String(), strconv.Itoa(port)),
			AgentTLS: &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: suites, Certificates: []tls.Certificate{cert},
				ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert},
		},
		addr: net.JoinHostPort(h.cfg.AdvertiseAddress.String(), strconv.Itoa(port)),
	}, nil
}

// dialer is the frontend the egress selector uses.
func (k *konnectivity) dialer() client.Config {
	return client.Config{Mode: client.ModeGRPC, UDSName: k.uds}
}

// entitled: a node's agent must use the node's name as agentID and announce
// only the node's own name, addresses and pod CIDRs.
func entitled(identity, agentID string, ids wire.Identifiers, nodes func(string) (*corev1.Node, error)) error {
	name, ok := strings.CutPrefix(identity, "system:node:")
	if !ok {
		return fmt.Errorf("%q is not a node", identity)
	}
	if agentID != name {
		return fmt.Errorf("node %q may not register as agent %q", name, agentID)
	}
	for _, host := range ids.Hosts {
		if host != name {
			return fmt.Errorf("node %q may not claim host %q", name, host)
		}
	}
	if len(ids.IPv4)+len(ids.IPv6)+len(ids.CIDRs) == 0 && !ids.DefaultRoute {
		return nil
	}
	if ids.DefaultRoute {
		return fmt.Errorf("node %q may not claim the default route", name)
	}
	node, err := nodes(name)
	if err != nil {
		return fmt.Errorf("node %q: %w", name, err)
	}
	own := map[netip.Addr]bool{}
	for _, a := range node.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			own[ip.Unmap()] = true
		}
	}
	for _, ip := range append(append([]netip.Addr{}, ids.IPv4...), ids.IPv6...) {
		if !own[ip.Unmap()] {
			return fmt.Errorf("node %q may not claim address %s", name, ip)
		}
	}
	for _, c := range ids.CIDRs {
		okCIDR := false
		for _, pc := range append([]string{node.Spec.PodCIDR}, node.Spec.PodCIDRs...) {
			if p, err := netip.ParsePrefix(pc); err == nil && p.Bits() <= c.Bits() && p.Contains(c.Addr()) {
				okCIDR = true
			}
		}
		if !okCIDR {
			return fmt.Errorf("node %q may not claim %s (not within its pod CIDRs)", name, c)
		}
	}
	return nil
}

// publishKonnectivity writes where agents connect, readable by nodes and
// joining nodes only.
func publishKonnectivity(ctx context.Context, c kubernetes.Interface, addr string) error {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: KonnectivityConfigMap, Namespace: metav1.NamespacePublic},
		Data: map[string]string{"server": addr}}
	cur, err := c.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(ctx, cm.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if _, err := c.CoreV1().ConfigMaps(metav1.NamespacePublic).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			return err
		}
	case err != nil:
		return err
	case cur.Data["server"] != addr:
		cur.Data = cm.Data
		if _, err := c.CoreV1().ConfigMaps(metav1.NamespacePublic).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "tether:konnectivity-reader", Namespace: metav1.NamespacePublic},
		Rules: []rbacv1.PolicyRule{{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{KonnectivityConfigMap}}}}
	if _, err := c.RbacV1().Roles(metav1.NamespacePublic).Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "tether:konnectivity-reader", Namespace: metav1.NamespacePublic},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:nodes"},
			{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:bootstrappers"}}}
	if _, err := c.RbacV1().RoleBindings(metav1.NamespacePublic).Create(ctx, rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// waitSocket waits (bounded) until the frontend socket exists.
func waitSocket(ctx context.Context, path string, ready <-chan struct{}) error {
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-t.C:
		return fmt.Errorf("konnectivity: %s not ready after 30s", path)
	case <-ctx.Done():
		return ctx.Err()
	}
}

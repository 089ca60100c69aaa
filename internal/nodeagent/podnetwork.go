package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-dev/tether/internal/nodeagent/podnet"
	"github.com/tether-dev/tether/internal/nodeagent/servicenet"
)

// Pod network and service proxy modes (Config.PodNetwork, Config.ServiceProxy).
const (
	PodNetworkAuto  = "auto"  // netns as root, else host
	PodNetworkNetns = "netns" // own network namespace per pod (root)
	PodNetworkHost  = "host"  // pods share the agent's network

	ServiceProxyAuto      = "auto"      // nftables as root, else userspace
	ServiceProxyNftables  = "nftables"  // kernel DNAT (root)
	ServiceProxyUserspace = "userspace" // listeners on the VIPs
)

// resolveNetworkModes turns auto into a concrete mode and refuses modes
// that need root without it.
func resolveNetworkModes(cfg *Config) error {
	root := os.Geteuid() == 0
	switch cfg.PodNetwork {
	case "", PodNetworkAuto:
		cfg.PodNetwork = PodNetworkHost
		if root {
			cfg.PodNetwork = PodNetworkNetns
		}
	case PodNetworkNetns:
		if !root {
			return errors.New("--pod-network=netns needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN); use host or run as root")
		}
	case PodNetworkHost:
	default:
		return fmt.Errorf("--pod-network %q: want auto, netns or host", cfg.PodNetwork)
	}
	switch cfg.ServiceProxy {
	case "", ServiceProxyAuto:
		cfg.ServiceProxy = ServiceProxyUserspace
		if root {
			cfg.ServiceProxy = ServiceProxyNftables
		}
	case ServiceProxyNftables:
		if !root {
			return errors.New("--service-proxy=nftables needs root (CAP_NET_ADMIN); use userspace or run as root")
		}
	case ServiceProxyUserspace:
	default:
		return fmt.Errorf("--service-proxy %q: want auto, nftables or userspace", cfg.ServiceProxy)
	}
	for _, p := range []netip.Prefix{cfg.ClusterCIDR, cfg.ServiceCIDR} {
		if p.IsValid() && !p.Addr().Is4() {
			return fmt.Errorf("CIDR %s: only IPv4 ranges are supported by the pod network", p)
		}
	}
	return nil
}

// kernelConfig is the service proxy's nftables configuration, or nil for
// the userspace proxy.
func (a *Agent) kernelConfig() *servicenet.Kernel {
	if a.cfg.ServiceProxy != ServiceProxyNftables {
		return nil
	}
	prefix := podnet.Prefix(a.cfg.NodeName, a.cfg.DataDir)
	k := &servicenet.Kernel{Table: "tether-" + prefix, ClusterCIDR: a.cfg.ClusterCIDR}
	if a.cfg.PodNetwork == PodNetworkNetns {
		k.Bridge = prefix + "br"
	}
	return k
}

// podNetwork implements runtime.Network once the node's podCIDR is known.
type podNetwork struct {
	a      *Agent
	client kubernetes.Interface

	ready chan struct{}
	once  sync.Once
	mu    sync.Mutex
	net   *podnet.Network
}

func newPodNetwork(a *Agent, client kubernetes.Interface) *podNetwork {
	return &podNetwork{a: a, client: client, ready: make(chan struct{})}
}

// run waits for spec.podCIDR (set by the hub's node IPAM controller), then
// sets the network up.
func (p *podNetwork) run(ctx context.Context) error {
	var cidr netip.Prefix
	logged := false
	for cidr == (netip.Prefix{}) {
		node, err := p.client.CoreV1().Nodes().Get(ctx, p.a.cfg.NodeName, metav1.GetOptions{})
		if err == nil && node.Spec.PodCIDR != "" {
			c, perr := netip.ParsePrefix(node.Spec.PodCIDR)
			if perr != nil {
				return fmt.Errorf("node spec.podCIDR %q: %w", node.Spec.PodCIDR, perr)
			}
			cidr = c
			break
		}
		if !logged {
			p.a.log.Info("waiting for the node's podCIDR (the hub's node IPAM controller sets it)")
			logged = true
		}
		t := time.NewTimer(500 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
	var unreachable []netip.Prefix
	for _, c := range []netip.Prefix{p.a.cfg.ClusterCIDR, p.a.cfg.ServiceCIDR} {
		if c.IsValid() {
			unreachable = append(unreachable, c)
		}
	}
	n, err := podnet.New(podnet.Config{NodeName: p.a.cfg.NodeName, DataDir: p.a.cfg.DataDir, PodCIDR: cidr,
		Unreachable: unreachable, Logger: p.a.log.With("component", "pod-network")})
	if err != nil {
		return err
	}
	podsDir := filepath.Join(p.a.cfg.DataDir, "pods")
	if err := n.Setup(func(uid string) bool {
		_, err := os.Stat(filepath.Join(podsDir, uid))
		return err == nil
	}); err != nil {
		return err
	}
	// In a network namespace of its own (one per node), the agent forwards
	// for its pods in both directions; in the machine's initial namespace
	// only traffic coming from the pod bridge is forwarded (see podnet).
	if !servicenet.InInitialNetns() {
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/all/forwarding", []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enable forwarding in the agent's network namespace: %w", err)
		}
	}
	p.mu.Lock()
	p.net = n
	p.mu.Unlock()
	p.once.Do(func() { close(p.ready) })
	p.a.log.Info("pod network ready", "podCIDR", cidr, "bridge", n.Bridge(), "gateway", n.Gateway())
	<-ctx.Done()
	return nil
}

// Add implements runtime.Network.
func (p *podNetwork) Add(ctx context.Context, uid types.UID) (string, net.IP, error) {
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-p.ready:
	case <-ctx.Done():
		return "", nil, ctx.Err()
	case <-t.C:
		return "", nil, errors.New("the node has no podCIDR yet (waiting for the hub's node IPAM controller)")
	}
	p.mu.Lock()
	n := p.net
	p.mu.Unlock()
	pod, err := n.Add(string(uid))
	if err != nil {
		return "", nil, err
	}
	return pod.Netns, net.IP(pod.IP.AsSlice()), nil
}

// Remove implements runtime.Network.
func (p *podNetwork) Remove(uid types.UID) {
	p.mu.Lock()
	n := p.net
	p.mu.Unlock()
	if n != nil {
		n.Remove(string(uid))
	}
}

// close removes the bridge, the pods' networks and this agent's routes
// (after the runtime stopped every pod).
func (p *podNetwork) close() {
	p.mu.Lock()
	n := p.net
	p.net = nil
	p.mu.Unlock()
	if n != nil {
		n.Close()
	}
}

// hostUnreachable adds the unreachable routes for ClusterCIDR and
// ServiceCIDR when pods use the host network (with a pod network, podnet's
// Setup does it); nil when neither is set.
func (a *Agent) hostUnreachable() (func(), error) {
	var ps []netip.Prefix
	for _, c := range []netip.Prefix{a.cfg.ClusterCIDR, a.cfg.ServiceCIDR} {
		if c.IsValid() {
			ps = append(ps, c)
		}
	}
	if len(ps) == 0 {
		return nil, nil
	}
	return podnet.AddUnreachable(a.cfg.DataDir, ps, a.log.With("component", "routes"))
}

// Package podnet gives process pods their own network namespace when the
// node agent runs as root: one bridge per agent carrying the first address
// of the node's pod CIDR, and per pod a named network namespace with a veth
// pair (host end on the bridge, pod end "eth0" with the pod IP and a default
// route via the bridge) and its loopback up.
//
// It works inside whatever network namespace the agent runs in. Every
// bridge, veth and namespace name starts with a prefix derived from the node
// name and data directory, so agents running side by side never touch each
// other's devices, and a restarted agent finds (and cleans) its own stale
// ones. Pod IPs are recorded under the data directory, so pods that outlive
// the agent keep their address when it adopts them again.
package podnet

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Config configures a Network. Zero values are documented per field.
type Config struct {
	// NodeName and DataDir name this agent's devices (see Prefix); DataDir
	// also keeps the pod IP records. Required.
	NodeName, DataDir string
	// PodCIDR is the node's spec.podCIDR (IPv4); required.
	PodCIDR netip.Prefix
	// Unreachable ranges (cluster CIDR, service CIDR) get an `unreachable`
	// route in the agent's namespace unless one is there already, so that
	// nothing addressed to them leaves through another interface. Only
	// routes this agent added are removed again.
	Unreachable []netip.Prefix
	Logger      *slog.Logger
}

// Network manages the bridge and the pods' namespaces.
type Network struct {
	cfg    Config
	log    *slog.Logger
	prefix string
	bridge string
	gw     netip.Addr

	mu    sync.Mutex
	h     *netlink.Handle
	used  map[netip.Addr]string // pod IP → uid
	byUID map[string]netip.Addr
	added []netip.Prefix // unreachable routes this agent added
}

// Pod is a pod's network.
type Pod struct {
	// Netns is the path of the pod's network namespace (/run/netns/...).
	Netns string
	IP    netip.Addr
}

// Prefix is the name prefix of an agent's devices: "t" and 5 hex digits of
// a hash of the node name and data directory (interface names are limited
// to 15 bytes).
func Prefix(nodeName, dataDir string) string {
	if abs, err := filepath.Abs(dataDir); err == nil {
		dataDir = abs
	}
	sum := sha256.Sum256([]byte(nodeName + "\x00" + dataDir))
	return "t" + hex.EncodeToString(sum[:])[:5]
}

func shortID(uid string) string {
	sum := sha256.Sum256([]byte(uid))
	return hex.EncodeToString(sum[:])[:8]
}

// NetnsDir is where named network namespaces live (as with `ip netns`).
const NetnsDir = "/run/netns"

// New validates cfg and opens a netlink handle in the calling thread's
// network namespace (the agent's).
func New(cfg Config) (*Network, error) {
	if cfg.NodeName == "" || cfg.DataDir == "" {
		return nil, errors.New("podnet: node name and data dir are required")
	}
	if !cfg.PodCIDR.IsValid() || !cfg.PodCIDR.Addr().Is4() || cfg.PodCIDR.Bits() > 30 {
		return nil, fmt.Errorf("podnet: pod CIDR %q must be an IPv4 CIDR of /30 or larger", cfg.PodCIDR)
	}
	cfg.PodCIDR = cfg.PodCIDR.Masked()
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("podnet: netlink: %w", err)
	}
	p := Prefix(cfg.NodeName, cfg.DataDir)
	return &Network{cfg: cfg, log: cfg.Logger, prefix: p, bridge: p + "br", gw: cfg.PodCIDR.Addr().Next(), h: h,
		used: map[netip.Addr]string{}, byUID: map[string]netip.Addr{}}, nil
}

// Bridge is the bridge's name; Gateway its address (the pods' default
// route).
func (n *Network) Bridge() string      { return n.bridge }
func (n *Network) Gateway() netip.Addr { return n.gw }
func (n *Network) NamePrefix() string  { return n.prefix }

func (n *Network) stateDir() string { return filepath.Join(n.cfg.DataDir, "podnet") }

func (n *Network) netnsName(uid string) string { return n.prefix + "-" + uid }

// Setup removes this agent's stale namespaces and veths except those of
// pods for which keep returns true, then creates the bridge and the
// unreachable routes.
func (n *Network) Setup(keep func(uid string) bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := os.MkdirAll(filepath.Join(n.stateDir(), "pods"), 0o700); err != nil {
		return fmt.Errorf("podnet: %w", err)
	}
	// Pod IP records: kept pods keep their address.
	kept := map[string]bool{}
	entries, _ := os.ReadDir(filepath.Join(n.stateDir(), "pods"))
	for _, e := range entries {
		uid := e.Name()
		data, err := os.ReadFile(filepath.Join(n.stateDir(), "pods", uid))
		ip, perr := netip.ParseAddr(strings.TrimSpace(string(data)))
		if err != nil || perr != nil || !n.cfg.PodCIDR.Contains(ip) || !keep(uid) {
			n.removeLocked(uid)
			continue
		}
		n.used[ip], n.byUID[uid] = uid, ip
		kept[shortID(uid)] = true
	}
	// Stale devices and namespaces of this agent.
	if links, err := n.h.LinkList(); err == nil {
		for _, l := range links {
			name := l.Attrs().Name
			if id, ok := strings.CutPrefix(name, n.prefix+"v"); ok && !kept[id] {
				n.log.Info("removing stale pod veth", "link", name)
				_ = n.h.LinkDel(l)
			}
		}
	}
	if ents, err := os.ReadDir(NetnsDir); err == nil {
		for _, e := range ents {
			uid, ok := strings.CutPrefix(e.Name(), n.prefix+"-")
			if ok && !kept[shortID(uid)] {
				n.log.Info("removing stale pod network namespace", "netns", e.Name())
				_ = netns.DeleteNamed(e.Name())
			}
		}
	}
	if err := n.ensureBridge(); err != nil {
		return err
	}
	return n.addUnreachable()
}

func (n *Network) ensureBridge() error {
	br, err := n.h.LinkByName(n.bridge)
	if err != nil {
		la := netlink.NewLinkAttrs()
		la.Name = n.bridge
		if err := n.h.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("podnet: create bridge %s: %w", n.bridge, err)
		}
		if br, err = n.h.LinkByName(n.bridge); err != nil {
			return fmt.Errorf("podnet: bridge %s: %w", n.bridge, err)
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: n.gw.AsSlice(), Mask: net.CIDRMask(n.cfg.PodCIDR.Bits(), 32)}}
	if err := n.h.AddrReplace(br, addr); err != nil {
		return fmt.Errorf("podnet: address %s on %s: %w", addr.IPNet, n.bridge, err)
	}
	if err := n.h.LinkSetUp(br); err != nil {
		return fmt.Errorf("podnet: bridge up: %w", err)
	}
	// Pods reach services whose endpoints are elsewhere (other nodes'
	// bridges, a hub in another namespace) only by forwarding; the flag is
	// per input interface, so only traffic coming from the pods is
	// forwarded, and the service proxy's forward filter lets through only
	// what it translated or what stays in the cluster. route_localnet lets
	// a pod's connection to a service be translated to an endpoint on the
	// node's loopback (e.g. a hub listening on 127.0.0.1); the service
	// proxy drops any other packet from the pods to 127.0.0.0/8
	// (CVE-2020-8558).
	for _, key := range []string{"forwarding", "route_localnet"} {
		if err := writeSysctl("/proc/sys/net/ipv4/conf/"+n.bridge+"/"+key, "1"); err != nil {
			return fmt.Errorf("podnet: %w", err)
		}
	}
	return nil
}

func writeSysctl(path, value string) error {
	return os.WriteFile(path, []byte(value), 0o644)
}

// addUnreachable adds the unreachable routes that are missing and records
// them (so a restarted agent removes them too).
func (n *Network) addUnreachable() error {
	recorded := n.readAdded()
	for _, p := range n.cfg.Unreachable {
		p = p.Masked()
		if !p.Addr().Is4() {
			continue
		}
		dst := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
		existing, err := n.h.RouteListFiltered(unix.AF_INET, &netlink.Route{Dst: dst, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("podnet: list routes: %w", err)
		}
		if len(existing) > 0 {
			if recorded[p] {
				n.added = append(n.added, p)
			}
			continue
		}
		if err := n.h.RouteAdd(&netlink.Route{Dst: dst, Type: unix.RTN_UNREACHABLE, Table: unix.RT_TABLE_MAIN}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("podnet: unreachable route %s: %w", p, err)
		}
		n.log.Info("added unreachable route", "dst", p)
		n.added = append(n.added, p)
	}
	return n.writeAdded()
}

func (n *Network) readAdded() map[netip.Prefix]bool {
	out := map[netip.Prefix]bool{}
	data, err := os.ReadFile(filepath.Join(n.stateDir(), "routes"))
	if err != nil {
		return out
	}
	for _, l := range strings.Fields(string(data)) {
		if p, err := netip.ParsePrefix(l); err == nil {
			out[p] = true
		}
	}
	return out
}

func (n *Network) writeAdded() error {
	var b strings.Builder
	for _, p := range n.added {
		b.WriteString(p.String() + "\n")
	}
	return os.WriteFile(filepath.Join(n.stateDir(), "routes"), []byte(b.String()), 0o600)
}

// Add creates (or finds again) the network of pod uid.
func (n *Network) Add(uid string) (Pod, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	name := n.netnsName(uid)
	path := filepath.Join(NetnsDir, name)
	if ip, ok := n.byUID[uid]; ok {
		if _, err := os.Stat(path); err == nil {
			return Pod{Netns: path, IP: ip}, nil
		}
	}
	ip, err := n.allocate(uid)
	if err != nil {
		return Pod{}, err
	}
	if err := n.create(uid, name, ip); err != nil {
		n.removeLocked(uid)
		return Pod{}, err
	}
	return Pod{Netns: path, IP: ip}, nil
}

func (n *Network) allocate(uid string) (netip.Addr, error) {
	if ip, ok := n.byUID[uid]; ok {
		return ip, nil
	}
	last := lastAddr(n.cfg.PodCIDR)
	for ip := n.gw.Next(); ip.IsValid() && ip.Less(last); ip = ip.Next() {
		if _, taken := n.used[ip]; taken {
			continue
		}
		if err := os.WriteFile(filepath.Join(n.stateDir(), "pods", uid), []byte(ip.String()+"\n"), 0o600); err != nil {
			return netip.Addr{}, fmt.Errorf("podnet: %w", err)
		}
		n.used[ip], n.byUID[uid] = uid, ip
		return ip, nil
	}
	return netip.Addr{}, fmt.Errorf("podnet: pod CIDR %s has no free address", n.cfg.PodCIDR)
}

// lastAddr is the broadcast address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	hostBits := 32 - p.Bits()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= (1 << hostBits) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func (n *Network) create(uid, name string, ip netip.Addr) error {
	_ = netns.DeleteNamed(name) // a half-made one from a crash
	podNS, err := newNamedNetns(name)
	if err != nil {
		return fmt.Errorf("podnet: network namespace %s: %w", name, err)
	}
	defer podNS.Close()
	id := shortID(uid)
	hostName, peerName := n.prefix+"v"+id, n.prefix+"p"+id
	if l, err := n.h.LinkByName(hostName); err == nil {
		_ = n.h.LinkDel(l)
	}
	br, err := n.h.LinkByName(n.bridge)
	if err != nil {
		return fmt.Errorf("podnet: bridge %s: %w", n.bridge, err)
	}
	la := netlink.NewLinkAttrs()
	la.Name, la.MasterIndex = hostName, br.Attrs().Index
	veth := &netlink.Veth{LinkAttrs: la, PeerName: peerName, PeerNamespace: netlink.NsFd(podNS)}
	if err := n.h.LinkAdd(veth); err != nil {
		return fmt.Errorf("podnet: veth %s: %w", hostName, err)
	}
	host, err := n.h.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("podnet: veth %s: %w", hostName, err)
	}
	if err := n.h.LinkSetUp(host); err != nil {
		return fmt.Errorf("podnet: veth %s up: %w", hostName, err)
	}
	ph, err := netlink.NewHandleAt(podNS)
	if err != nil {
		return fmt.Errorf("podnet: netlink in %s: %w", name, err)
	}
	defer ph.Close()
	lo, err := ph.LinkByName("lo")
	if err == nil {
		err = ph.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("podnet: loopback in %s: %w", name, err)
	}
	peer, err := ph.LinkByName(peerName)
	if err != nil {
		return fmt.Errorf("podnet: veth peer in %s: %w", name, err)
	}
	if err := ph.LinkSetName(peer, "eth0"); err != nil {
		return fmt.Errorf("podnet: rename veth peer: %w", err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(n.cfg.PodCIDR.Bits(), 32)}}
	if err := ph.AddrAdd(peer, addr); err != nil {
		return fmt.Errorf("podnet: pod address %s: %w", ip, err)
	}
	if err := ph.LinkSetUp(peer); err != nil {
		return fmt.Errorf("podnet: pod eth0 up: %w", err)
	}
	if err := ph.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: n.gw.AsSlice()}); err != nil {
		return fmt.Errorf("podnet: pod default route: %w", err)
	}
	return nil
}

// newNamedNetns creates a named network namespace without leaving any
// thread of the agent in it.
func newNamedNetns(name string) (netns.NsHandle, error) {
	goruntime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		goruntime.UnlockOSThread()
		return netns.None(), err
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		// This thread is stuck in another namespace: let it die with the
		// goroutine instead of returning it to the scheduler.
		if ns.IsOpen() {
			ns.Close()
		}
		return netns.None(), fmt.Errorf("restore network namespace: %w", serr)
	}
	goruntime.UnlockOSThread()
	if err != nil {
		_ = netns.DeleteNamed(name)
		return netns.None(), err
	}
	return ns, nil
}

// Remove deletes pod uid's namespace, veth and address record.
func (n *Network) Remove(uid string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.removeLocked(uid)
}

func (n *Network) removeLocked(uid string) {
	if l, err := n.h.LinkByName(n.prefix + "v" + shortID(uid)); err == nil {
		_ = n.h.LinkDel(l)
	}
	name := n.netnsName(uid)
	if _, err := os.Stat(filepath.Join(NetnsDir, name)); err == nil {
		if err := netns.DeleteNamed(name); err != nil {
			n.log.Warn("removing pod network namespace", "netns", name, "err", err)
		}
	}
	if ip, ok := n.byUID[uid]; ok {
		delete(n.used, ip)
		delete(n.byUID, uid)
	}
	_ = os.Remove(filepath.Join(n.stateDir(), "pods", uid))
}

// Close removes every pod network, the bridge and the routes this agent
// added (the agent stops together with its pods).
func (n *Network) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for uid := range n.byUID {
		n.removeLocked(uid)
	}
	if br, err := n.h.LinkByName(n.bridge); err == nil {
		_ = n.h.LinkDel(br)
	}
	n.removeRoutes()
	n.h.Close()
}

func (n *Network) removeRoutes() {
	for _, p := range n.added {
		dst := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
		if err := n.h.RouteDel(&netlink.Route{Dst: dst, Type: unix.RTN_UNREACHABLE, Table: unix.RT_TABLE_MAIN}); err != nil {
			n.log.Warn("removing unreachable route", "dst", p, "err", err)
		}
	}
	n.added = nil
	_ = os.Remove(filepath.Join(n.stateDir(), "routes"))
}

// AddUnreachable adds (without a pod network: host-network pods) the
// unreachable routes for prefixes that are missing, recorded under dataDir
// like Setup does; the returned func removes the ones this agent added.
func AddUnreachable(dataDir string, prefixes []netip.Prefix, log *slog.Logger) (func(), error) {
	if log == nil {
		log = slog.Default()
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("podnet: netlink: %w", err)
	}
	n := &Network{cfg: Config{DataDir: dataDir, Unreachable: prefixes}, log: log, h: h}
	if err := os.MkdirAll(n.stateDir(), 0o700); err != nil {
		h.Close()
		return nil, fmt.Errorf("podnet: %w", err)
	}
	if err := n.addUnreachable(); err != nil {
		h.Close()
		return nil, err
	}
	return func() {
		n.removeRoutes()
		h.Close()
	}, nil
}

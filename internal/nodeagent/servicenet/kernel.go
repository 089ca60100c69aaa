package servicenet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"

	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Kernel configures the kernel data path (nftables DNAT, as kube-proxy's
// nftables mode). It needs root (CAP_NET_ADMIN) in the agent's network
// namespace.
type Kernel struct {
	// Table is the name of this agent's nftables table (ip family); it is
	// replaced as a whole on every change and deleted on stop. Required.
	Table string
	// Bridge is the pod bridge (see package podnet): packets from it to
	// 127.0.0.0/8 that were not translated are dropped (route_localnet is
	// on for the bridge), and it is the only interface whose traffic is
	// forwarded, and only when translated or addressed to the cluster.
	Bridge string
	// ClusterCIDR is the pod range pods may reach without translation;
	// zero: only their own node's bridge.
	ClusterCIDR netip.Prefix
}

// kernelPath programs nftables and the local routes of the VIPs.
type kernelPath struct {
	cfg Kernel

	mu     sync.Mutex
	routes map[netip.Addr]bool // VIP /32 local routes this agent added
	h      *netlink.Handle
}

// target is one ClusterIP:port and its endpoints.
type target struct {
	vip      netip.Addr
	port     uint16
	backends []netip.AddrPort
}

func newKernelPath(cfg Kernel) (*kernelPath, error) {
	if cfg.Table == "" {
		return nil, errors.New("servicenet: kernel data path needs a table name")
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("servicenet: netlink: %w", err)
	}
	k := &kernelPath{cfg: cfg, routes: map[netip.Addr]bool{}, h: h}
	// Fail early and clearly when the kernel has no nftables.
	if err := k.apply(nil); err != nil {
		h.Close()
		return nil, fmt.Errorf("servicenet: the kernel data path needs nftables (nf_tables, nf_nat) in this kernel: %w", err)
	}
	return k, nil
}

var zero4 = []byte{0, 0, 0, 0}

func ifname(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

func nativeU32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}

func be16(v uint16) []byte {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, v)
	return b
}

// ipsDstNAT is IPS_DST_NAT of the conntrack status.
const ipsDstNAT = 1 << 5

func ctDNAT(translated bool) []expr.Any {
	op := expr.CmpOpNeq
	if !translated {
		op = expr.CmpOpEq
	}
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nativeU32(ipsDstNAT), Xor: zero4},
		&expr.Cmp{Op: op, Register: 1, Data: zero4},
	}
}

func iif(name string) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)}}
}

func oifNot(name string) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(name)}}
}

// ipIn matches the IPv4 source (off 12) or destination (off 16) in p.
func ipIn(off uint32, p netip.Prefix) []expr.Any {
	mask := net.CIDRMask(p.Bits(), 32)
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: zero4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

func verdict(k expr.VerdictKind) expr.Any { return &expr.Verdict{Kind: k} }

// apply replaces the table with rules for targets in one transaction.
func (k *kernelPath) apply(targets []target) error {
	conn, err := nftables.New()
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: k.cfg.Table}
	conn.AddTable(t)
	conn.DelTable(t)
	conn.AddTable(t)
	accept := nftables.ChainPolicyAccept
	services := conn.AddChain(&nftables.Chain{Name: "services", Table: t})
	pre := conn.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	out := conn.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
	post := conn.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	input := conn.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	fwd := conn.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	// The node's own connections, and those of this agent's pods only (so
	// that agents sharing a namespace never translate each other's pods).
	jump := &expr.Verdict{Kind: expr.VerdictJump, Chain: services.Name}
	conn.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: []expr.Any{jump}})
	if k.cfg.Bridge != "" {
		conn.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: append(iif(k.cfg.Bridge), jump)})
	}
	tcp := []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}}}
	for _, tg := range targets {
		match := append(append(ipIn(16, netip.PrefixFrom(tg.vip, 32)), tcp...),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(tg.port)})
		n := len(tg.backends)
		for i, b := range tg.backends {
			// Endpoint i is picked with probability 1/(n-i) among the rest:
			// uniform over all, as kube-proxy's iptables mode does.
			e := append([]expr.Any{}, match...)
			if left := n - i; left > 1 {
				e = append(e, &expr.Numgen{Register: 1, Modulus: uint32(left), Type: unix.NFT_NG_RANDOM},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: nativeU32(0)})
			}
			e = append(e,
				&expr.Immediate{Register: 1, Data: b.Addr().AsSlice()},
				&expr.Immediate{Register: 2, Data: be16(b.Port())},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true})
			conn.AddRule(&nftables.Rule{Table: t, Chain: services, Exprs: e})
		}
	}
	// Translated connections leaving through a real interface take the
	// node's address (hairpin, endpoints in other namespaces or nodes);
	// those to a local endpoint never pass postrouting.
	conn.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: append(append(ctDNAT(true), oifNot("lo")...), &expr.Masq{})})
	// A VIP that is not translated (no such port, no endpoints) is not a
	// way into the node: VIPs are local addresses only for the output path.
	// (Replies to the node's own translated connections are addressed to
	// the VIP and belong to a translated connection.)
	for _, tg := range uniqueVIPs(targets) {
		conn.AddRule(&nftables.Rule{Table: t, Chain: input, Exprs: append(append(ipIn(16, netip.PrefixFrom(tg, 32)), ctDNAT(false)...), verdict(expr.VerdictDrop))})
	}
	if k.cfg.Bridge != "" {
		// CVE-2020-8558: with route_localnet on the bridge, only translated
		// connections may reach the node's loopback.
		loop := netip.MustParsePrefix("127.0.0.0/8")
		conn.AddRule(&nftables.Rule{Table: t, Chain: input, Exprs: append(append(append(iif(k.cfg.Bridge), ipIn(16, loop)...), ctDNAT(false)...), verdict(expr.VerdictDrop))})
		// Forwarding is on for the bridge only: replies, translated
		// connections and traffic to the cluster's pods pass; anything
		// else from the pods is dropped, so nothing leaves the node.
		state := []expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nativeU32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: zero4},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: zero4},
		}
		conn.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: append(append(iif(k.cfg.Bridge), state...), verdict(expr.VerdictAccept))})
		conn.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: append(append(iif(k.cfg.Bridge), ctDNAT(true)...), verdict(expr.VerdictAccept))})
		if k.cfg.ClusterCIDR.IsValid() && k.cfg.ClusterCIDR.Addr().Is4() {
			conn.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: append(append(iif(k.cfg.Bridge), ipIn(16, k.cfg.ClusterCIDR)...), verdict(expr.VerdictAccept))})
		}
		conn.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: append(iif(k.cfg.Bridge), verdict(expr.VerdictDrop))})
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables table %s: %w", k.cfg.Table, err)
	}
	return k.syncRoutes(targets)
}

func uniqueVIPs(targets []target) []netip.Addr {
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	for _, t := range targets {
		if !seen[t.vip] {
			seen[t.vip] = true
			out = append(out, t.vip)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

// syncRoutes keeps a local /32 route (table local) per VIP, so the node's
// own connections to a VIP find a route (the output hook then translates
// them); VIPs never leave the node. Routes present already are left alone.
func (k *kernelPath) syncRoutes(targets []target) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	want := map[netip.Addr]bool{}
	for _, v := range uniqueVIPs(targets) {
		if v.IsLoopback() {
			continue // 127/8 is local already
		}
		want[v] = true
		if k.routes[v] {
			continue
		}
		r := k.localRoute(v)
		if err := k.h.RouteAdd(r); err != nil {
			if errors.Is(err, unix.EEXIST) {
				continue
			}
			return fmt.Errorf("local route for %s: %w", v, err)
		}
		k.routes[v] = true
	}
	for v := range k.routes {
		if !want[v] {
			_ = k.h.RouteDel(k.localRoute(v))
			delete(k.routes, v)
		}
	}
	return nil
}

func (k *kernelPath) localRoute(v netip.Addr) *netlink.Route {
	lo, err := k.h.LinkByName("lo")
	idx := 1
	if err == nil {
		idx = lo.Attrs().Index
	}
	return &netlink.Route{LinkIndex: idx, Dst: &net.IPNet{IP: v.AsSlice(), Mask: net.CIDRMask(32, 32)},
		Type: unix.RTN_LOCAL, Table: unix.RT_TABLE_LOCAL, Scope: netlink.SCOPE_HOST}
}

// close removes the table and the routes this agent added.
func (k *kernelPath) close() {
	if conn, err := nftables.New(); err == nil {
		t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: k.cfg.Table}
		conn.AddTable(t)
		conn.DelTable(t)
		_ = conn.Flush()
	}
	_ = k.syncRoutes(nil)
	k.h.Close()
}

// targetsFrom converts the proxy's "ip:port" → backends map.
func targetsFrom(want map[string][]string) []target {
	var out []target
	for key, backends := range want {
		ap, err := netip.ParseAddrPort(key)
		if err != nil || !ap.Addr().Is4() || len(backends) == 0 {
			continue
		}
		tg := target{vip: ap.Addr(), port: ap.Port()}
		for _, b := range backends {
			if bp, err := netip.ParseAddrPort(b); err == nil && bp.Addr().Unmap().Is4() {
				tg.backends = append(tg.backends, netip.AddrPortFrom(bp.Addr().Unmap(), bp.Port()))
			}
		}
		if len(tg.backends) > 0 {
			out = append(out, tg)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].vip != out[j].vip {
			return out[i].vip.Less(out[j].vip)
		}
		return out[i].port < out[j].port
	})
	return out
}

// InInitialNetns reports whether this process runs in the machine's initial
// network namespace (that of pid 1).
func InInitialNetns() bool {
	self, err1 := os.Readlink("/proc/self/ns/net")
	init, err2 := os.Readlink("/proc/1/ns/net")
	return err1 == nil && err2 == nil && self == init
}

// Package isolation builds the isolated-node network topology of
// `tether up --isolate-nodes`: the hub in a "control-plane network"
// namespace, every node in a "node network" namespace of its own, and a
// router namespace between them whose nftables rules let nodes open
// connections to the hub's ports and drop every connection the hub tries
// to open (except, when asked, exactly the node SSH port). The hub has no
// route to node or pod addresses: node connections reach it masqueraded
// as the router's address.
//
// Everything it creates carries a per-run prefix, is recorded in a state
// file before it is created, and is removed by Close or, after a crash, by
// CleanStale at the next start. It never touches what it did not create.
package isolation

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config describes the topology.
type Config struct {
	// StateFile records what this run creates (required), so that a crashed
	// run's namespaces and routes can be removed at the next start.
	StateFile string
	// CIDR is the IPv4 /16 all topology addresses come from; zero value
	// 100.72.0.0/16. It must not overlap the machine's own networks.
	CIDR netip.Prefix
	// Nodes is the number of node namespaces (1…250).
	Nodes int
	// HubPorts are the TCP ports of the hub nodes may connect to.
	HubPorts []uint16
	// HubToNodePorts are TCP ports on nodes the hub may connect to (the
	// SSH endpoint for --egress=ssh); empty: none, and the hub gets no
	// route to nodes at all.
	HubToNodePorts []uint16
	// Prefix names every namespace and link; zero value "tt" + the pid in
	// base 36 (unique per run on this machine).
	Prefix string
	// Logger; zero value discards.
	Logger *slog.Logger
}

// Node is one node network.
type Node struct {
	Name  string     // node name (node-1, …)
	NetNS string     // network namespace name
	IP    netip.Addr // the node's address
}

// Topology is a created topology; Close removes it.
type Topology struct {
	cfg    Config
	Router string // router namespace
	HubNS  string // control-plane network namespace
	HubIP  netip.Addr
	Nodes  []Node
	// Enforcement says how hub-initiated connections are stopped
	// ("nftables" or "routing only").
	Enforcement string

	state state
}

// Check reports why isolation is impossible here (not root, no ip(8)), or nil.
func Check() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("isolating nodes needs root (CAP_NET_ADMIN to create network namespaces, veth pairs and nftables rules); running as uid %d", os.Geteuid())
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("isolating nodes needs ip(8) from iproute2 (apt-get install iproute2)")
	}
	return nil
}

// Create builds the topology. On error, whatever was created is removed.
func Create(ctx context.Context, cfg Config) (*Topology, error) {
	if cfg.StateFile == "" {
		return nil, errors.New("isolation: StateFile is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if !cfg.CIDR.IsValid() {
		cfg.CIDR = netip.MustParsePrefix("100.72.0.0/16")
	}
	if !cfg.CIDR.Addr().Is4() || cfg.CIDR.Bits() > 16 {
		return nil, fmt.Errorf("isolation: CIDR %s must be an IPv4 /16 or larger", cfg.CIDR)
	}
	cfg.CIDR = netip.PrefixFrom(cfg.CIDR.Addr(), 16).Masked()
	for _, own := range []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("127.0.0.0/8")} {
		if cfg.CIDR.Overlaps(own) {
			return nil, fmt.Errorf("isolation: CIDR %s overlaps %s", cfg.CIDR, own)
		}
	}
	if cfg.Nodes < 1 || cfg.Nodes > 250 {
		return nil, fmt.Errorf("isolation: %d nodes; 1…250 fit the topology", cfg.Nodes)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "tt" + strconv.FormatInt(int64(os.Getpid()), 36)
	}
	if len(cfg.Prefix)+4+len(strconv.Itoa(cfg.Nodes)) > 15 {
		return nil, fmt.Errorf("isolation: prefix %q too long for interface names", cfg.Prefix)
	}
	t := &Topology{cfg: cfg, Router: "tether-" + cfg.Prefix + "-rtr", HubNS: "tether-" + cfg.Prefix + "-hub", HubIP: t16(cfg.CIDR, 0, 2)}
	for i := 1; i <= cfg.Nodes; i++ {
		t.Nodes = append(t.Nodes, Node{Name: "node-" + strconv.Itoa(i), NetNS: "tether-" + cfg.Prefix + "-node-" + strconv.Itoa(i), IP: t16(cfg.CIDR, i, 2)})
	}
	t.state = state{PID: os.Getpid(), Prefix: cfg.Prefix, NetNS: append([]string{t.Router, t.HubNS}, t.nodeNS()...)}
	// Record first: a crash half-way leaves nothing unrecorded.
	if err := t.state.save(cfg.StateFile); err != nil {
		return nil, err
	}
	if err := t.create(ctx); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

func (t *Topology) nodeNS() []string {
	var ns []string
	for _, n := range t.Nodes {
		ns = append(ns, n.NetNS)
	}
	return ns
}

// t16 is the address cidr.x.y.
func t16(cidr netip.Prefix, x, y int) netip.Addr {
	b := cidr.Addr().As4()
	b[2], b[3] = byte(x), byte(y)
	return netip.AddrFrom4(b)
}

// HubLink and NodeLink are the interface names inside the namespaces; the
// router side adds "r".
func (t *Topology) hubLink() string         { return t.cfg.Prefix + "h" }
func (t *Topology) nodeLink(i int) string   { return t.cfg.Prefix + "n" + strconv.Itoa(i) }
func routerSide(link string) string         { return link + "r" }
func (t *Topology) CIDR() netip.Prefix      { return t.cfg.CIDR }
func (t *Topology) Prefix() string          { return t.cfg.Prefix }
func (t *Topology) nodeIP(i int) netip.Addr { return t16(t.cfg.CIDR, i, 2) }

func (t *Topology) create(ctx context.Context) error {
	log := t.cfg.Logger
	// Root namespace: nothing in the range may leave the machine.
	if err := t.addUnreachable(ctx); err != nil {
		return err
	}
	addNS := func(ns string) error {
		if err := ip(ctx, "netns", "add", ns); err != nil {
			return err
		}
		return ip(ctx, "-n", ns, "link", "set", "lo", "up")
	}
	link := func(ns, name string, x int) error {
		// Both ends are created inside their namespaces: no veth ever
		// appears in the root namespace.
		if err := ip(ctx, "link", "add", name, "netns", ns, "type", "veth", "peer", "name", routerSide(name), "netns", t.Router); err != nil {
			return err
		}
		for _, c := range [][]string{
			{"-n", ns, "addr", "add", t16(t.cfg.CIDR, x, 2).String() + "/24", "dev", name},
			{"-n", ns, "link", "set", name, "up"},
			{"-n", t.Router, "addr", "add", t16(t.cfg.CIDR, x, 1).String() + "/24", "dev", routerSide(name)},
			{"-n", t.Router, "link", "set", routerSide(name), "up"},
		} {
			if err := ip(ctx, c...); err != nil {
				return err
			}
		}
		return nil
	}
	// The router first (it also sets up /run/netns), then the hub and
	// every node side by side.
	if err := addNS(t.Router); err != nil {
		return err
	}
	errs := make([]error, 1+len(t.Nodes))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if errs[0] = addNS(t.HubNS); errs[0] != nil {
			return
		}
		if errs[0] = link(t.HubNS, t.hubLink(), 0); errs[0] != nil {
			return
		}
		if len(t.cfg.HubToNodePorts) > 0 {
			// Only for SSH egress: the hub may reach the node network (the
			// router lets exactly the SSH port through).
			errs[0] = ip(ctx, "-n", t.HubNS, "route", "add", t.cfg.CIDR.String(), "via", t16(t.cfg.CIDR, 0, 1).String())
		}
	}()
	for i, n := range t.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errs[i+1] = addNS(n.NetNS); errs[i+1] != nil {
				return
			}
			if errs[i+1] = link(n.NetNS, t.nodeLink(i+1), i+1); errs[i+1] != nil {
				return
			}
			errs[i+1] = ip(ctx, "-n", n.NetNS, "route", "add", "default", "via", t16(t.cfg.CIDR, i+1, 1).String())
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := writeSysctl(t.Router, "/proc/sys/net/ipv4/ip_forward", "1"); err != nil {
		return fmt.Errorf("isolation: enable forwarding in %s: %w", t.Router, err)
	}
	if err := t.installRules(); err != nil {
		if len(t.cfg.HubToNodePorts) > 0 {
			return fmt.Errorf("isolation: nftables rules (needed to limit the hub to the SSH port): %w", err)
		}
		// Without a drop rule the hub still has no route to nodes; and
		// without masquerading it could not answer them either, so this
		// is an error too.
		return fmt.Errorf("isolation: nftables rules: %w (the kernel needs nf_tables with conntrack and NAT)", err)
	}
	t.Enforcement = "nftables"
	log.Debug("isolated topology created", "router", t.Router, "hub", t.HubNS, "nodes", len(t.Nodes), "cidr", t.cfg.CIDR)
	return nil
}

// addUnreachable adds `unreachable CIDR` in the root namespace unless a
// route for exactly that prefix exists; only an added one is recorded (and
// removed later).
func (t *Topology) addUnreachable(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, "ip", "route", "show", "table", "all", "exact", t.cfg.CIDR.String()).Output()
	if err == nil && len(bytes.TrimSpace(out)) > 0 {
		return nil
	}
	if err := ip(ctx, "route", "add", "unreachable", t.cfg.CIDR.String()); err != nil {
		return err
	}
	t.state.Routes = append(t.state.Routes, t.cfg.CIDR.String())
	return t.state.save(t.cfg.StateFile)
}

// Close stops every process left in the namespaces, removes the
// namespaces (their veths and rules go with them) and the routes this run
// added, then the state file.
func (t *Topology) Close() error {
	err := t.state.remove(t.cfg.Logger)
	if err == nil {
		_ = os.Remove(t.cfg.StateFile)
	}
	return err
}

// Command returns a command that runs argv inside namespace ns.
func Command(ctx context.Context, ns string, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
}

func ip(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

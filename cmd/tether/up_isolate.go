package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tether-dev/tether/internal/egress"
	"github.com/tether-dev/tether/internal/hub"
	"github.com/tether-dev/tether/internal/isolation"
)

// isolateFlags are `tether up --isolate-nodes` and its address range.
type isolateFlags struct {
	enabled bool
	cidr    string
}

func addIsolateFlags(fs *pflag.FlagSet) *isolateFlags {
	o := &isolateFlags{}
	fs.BoolVar(&o.enabled, "isolate-nodes", false, "run the hub and every node in network namespaces of their own: nodes reach the hub, the hub cannot reach nodes (root; falls back to loopback otherwise)")
	fs.StringVar(&o.cidr, "isolate-cidr", "100.72.0.0/16", "IPv4 /16 for the isolated topology's control-plane and node networks (with --isolate-nodes)")
	return o
}

// run starts the isolated topology when asked for and possible. handled is
// false when `tether up` should run the loopback topology instead.
func (o *isolateFlags) run(cmd *cobra.Command, cfg hub.Config, nodes int, verbose bool) (handled bool, err error) {
	if !o.enabled {
		return false, nil
	}
	out := cmd.OutOrStdout()
	if err := isolation.Check(); err != nil {
		fmt.Fprintf(out, "! --isolate-nodes: %v.\n! Falling back to the loopback topology: hub and nodes share this machine's loopback, so the hub CAN reach every node directly (not isolated).\n", err)
		return false, nil
	}
	if nodes < 1 {
		return true, errors.New("--isolate-nodes needs --nodes 1 or more")
	}
	cidr, err := netip.ParsePrefix(o.cidr)
	if err != nil {
		return true, fmt.Errorf("--isolate-cidr: %w", err)
	}
	u := &isoUp{out: out, cfg: cfg, nodes: nodes, verbose: verbose, cidr: cidr, start: time.Now()}
	if u.serverArgs, err = forwardedServerFlags(cmd.Flags()); err != nil {
		return true, err
	}
	// Pod CIDRs come from the upper half of the topology's range unless
	// chosen: covered by its unreachable route and, like node
	// addresses, never routed from the hub.
	if f := cmd.Flags().Lookup("cluster-cidr"); f != nil && !f.Changed {
		b := cidr.Masked().Addr().As4()
		b[2] = 128
		u.podCIDR = netip.PrefixFrom(netip.AddrFrom4(b), 17).String()
		u.serverArgs = append(u.serverArgs, "--cluster-cidr="+u.podCIDR)
	}
	return true, u.run(cmd.Context())
}

// forwardedServerFlags are the flags the user set on `tether up` that
// `tether server` also has (flags, TETHER_* env and --config keys all end
// up as set flags), minus the ones the isolated topology chooses itself.
func forwardedServerFlags(fs *pflag.FlagSet) ([]string, error) {
	server := newServerCmd().Flags()
	own := map[string]bool{"data-dir": true, "bind-address": true, "advertise-address": true, "service-cluster-ip-range": true, "config": true}
	var args []string
	fs.Visit(func(f *pflag.Flag) {
		if own[f.Name] || server.Lookup(f.Name) == nil {
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			for _, v := range sv.GetSlice() {
				args = append(args, "--"+f.Name+"="+v)
			}
			return
		}
		args = append(args, "--"+f.Name+"="+f.Value.String())
	})
	return args, nil
}

// isoUp is one run of the isolated topology.
type isoUp struct {
	out        io.Writer
	cfg        hub.Config
	nodes      int
	verbose    bool
	cidr       netip.Prefix
	serverArgs []string
	podCIDR    string // set when tether up chose it
	start      time.Time

	topo   *isolation.Topology
	hub    *child
	agents []*child
}

// child is a `tether server` / `tether agent` process inside a namespace.
type child struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
	err    error
}

func (u *isoUp) step(format string, args ...any) {
	fmt.Fprintf(u.out, "• [%5.1fs] %s\n", time.Since(u.start).Seconds(), fmt.Sprintf(format, args...))
}

func (u *isoUp) run(ctx context.Context) (err error) {
	dir := u.cfg.DataDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	stateFile := filepath.Join(dir, "isolation.json")
	if err := isolation.CleanStale(stateFile, nil); err != nil {
		return err
	}
	token, err := upToken(dir)
	if err != nil {
		return err
	}
	mode := u.cfg.Egress.Mode
	if mode == "" {
		mode = egress.ModeDirect
	}
	if u.cfg.Egress.SelectorConfigFile != "" || u.cfg.Egress.Konnectivity.UDSName != "" {
		return errors.New("--isolate-nodes runs the hub's own Konnectivity server; --egress-selector-config-file and --konnectivity-uds are not supported with it")
	}
	konnPort := u.cfg.Konnectivity.AgentPort
	if konnPort == 0 {
		konnPort = 8132
	}
	topoCfg := isolation.Config{StateFile: stateFile, CIDR: u.cidr, Nodes: u.nodes, HubPorts: []uint16{uint16(u.cfg.SecurePort)}}
	if mode == egress.ModeKonnectivity {
		topoCfg.HubPorts = append(topoCfg.HubPorts, uint16(konnPort))
	}
	if mode == egress.ModeSSH {
		topoCfg.HubToNodePorts = []uint16{uint16(u.cfg.SSH.Port)}
	}
	u.step("creating network namespaces: control-plane network, %d node network(s), router (%s)", u.nodes, u.cidr)
	u.topo, err = isolation.Create(ctx, topoCfg)
	if err != nil {
		return err
	}
	defer func() {
		u.stopChildren()
		if cerr := u.topo.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("removing the isolated topology: %w", cerr))
		} else {
			u.step("network namespaces, veths, rules and routes removed")
		}
	}()

	// The admin API in the root namespace: a TCP forwarder whose
	// connections are opened inside the control-plane network.
	hubAddr := net.JoinHostPort(u.topo.HubIP.String(), strconv.Itoa(u.cfg.SecurePort))
	ln, err := net.Listen("tcp", net.JoinHostPort(u.cfg.BindAddress.String(), strconv.Itoa(u.cfg.SecurePort)))
	if err != nil {
		return fmt.Errorf("admin API forwarder in the root namespace: %w (choose another --secure-port)", err)
	}
	defer ln.Close()
	go forwardInto(ln, u.topo.HubNS, hubAddr)
	publicHost := u.cfg.BindAddress.String()
	if u.cfg.BindAddress.IsUnspecified() {
		publicHost = "127.0.0.1"
	}
	publicURL := "https://" + net.JoinHostPort(publicHost, strconv.Itoa(u.cfg.SecurePort))

	hubDir := filepath.Join(dir, "hub")
	if err := os.MkdirAll(hubDir, 0o700); err != nil {
		return err
	}
	args := append([]string{"server", "--data-dir", hubDir, "--bind-address", u.topo.HubIP.String(),
		"--advertise-address", u.topo.HubIP.String(), "--service-cluster-ip-range", u.cfg.ServiceClusterIPRange.String(),
		"--bootstrap-token", token}, u.serverArgs...)
	u.step("starting hub (tether server) in %s at %s", u.topo.HubNS, hubAddr)
	if u.hub, err = u.spawn("hub", u.topo.HubNS, filepath.Join(hubDir, "server.log"), args); err != nil {
		return err
	}
	admin, err := u.waitHub(ctx, filepath.Join(hubDir, "admin.kubeconfig"), publicURL)
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(dir, "admin.kubeconfig")
	if err := writeAdminKubeconfig(filepath.Join(hubDir, "admin.kubeconfig"), kubeconfig, publicURL); err != nil {
		return err
	}
	u.step("hub ready; admin API forwarded to %s (kubeconfig %s)", publicURL, kubeconfig)

	server := "https://" + hubAddr
	for _, n := range u.topo.Nodes {
		ndir := filepath.Join(dir, "nodes", n.Name)
		if err := os.MkdirAll(ndir, 0o700); err != nil {
			return err
		}
		args := []string{"agent", "--server", server, "--token", token, "--ca-cert", filepath.Join(hubDir, "pki", "ca.crt"),
			"--node-name", n.Name, "--data-dir", ndir, "--node-ip", n.IP.String(), "--kubelet-address", n.IP.String(),
			"--kubelet-port", "10250", "--stop-pods-on-exit",
			// The isolated workload runs host-network pods (on the node
			// address); --pod-network=netns works here too (see docs/node-agent.md).
			"--pod-network=host"}
		if mode == egress.ModeSSH {
			args = append(args, "--ssh-endpoint", net.JoinHostPort(n.IP.String(), strconv.Itoa(u.cfg.SSH.Port)))
		}
		if u.verbose {
			args = append(args, "-v")
		}
		u.step("starting %s (tether agent) in %s at %s", n.Name, n.NetNS, n.IP)
		a, err := u.spawn(n.Name, n.NetNS, filepath.Join(ndir, "agent.log"), args)
		if err != nil {
			return err
		}
		u.agents = append(u.agents, a)
	}
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		return err
	}
	if err := u.waitNodes(ctx, cs); err != nil {
		return err
	}
	if mode != egress.ModeDirect {
		if err := u.waitEgress(ctx, cs, mode); err != nil {
			return err
		}
	}
	verdict, err := u.verifyIsolated(ctx)
	if err != nil {
		return err
	}
	u.step("isolation verified: %s", verdict)
	if mode == egress.ModeDirect {
		fmt.Fprintln(u.out, "! --egress=direct: the hub has no route to the node networks, so logs, exec, attach, port-forward, cp and the node/pod/service proxies will fail. Use --egress=konnectivity (or ssh).")
	}
	u.printStatus(ctx, cs, mode, publicURL, kubeconfig)
	fmt.Fprintf(u.out, "\nCluster is up (isolated nodes). In another shell:\n\n  export KUBECONFIG=%s\n  kubectl get nodes\n\nCtrl-C stops the cluster and removes its namespaces; `tether up --isolate-nodes --data-dir %s` resumes it.\n", kubeconfig, dir)
	ready := filepath.Join(dir, "up.ready")
	if err := os.WriteFile(ready, []byte(publicURL+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(ready)
	return u.wait(ctx)
}

// spawn starts `tether <args>` inside ns with output to logPath.
func (u *isoUp) spawn(name, ns, logPath string, args []string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := isolation.Command(context.Background(), ns, append([]string{self}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// ip netns exec execs tether in place: the death signal stays with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		logf.Close()
		close(c.exited)
	}()
	return c, nil
}

func (c *child) failed() error {
	b, _ := os.ReadFile(c.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return fmt.Errorf("%s exited: %v (log %s):\n%s", c.name, c.err, c.log, b)
}

// stop sends SIGTERM and waits (bounded) before killing.
func (c *child) stop() {
	if c == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(20 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

func (u *isoUp) stopChildren() {
	var wg sync.WaitGroup
	for _, a := range u.agents {
		wg.Add(1)
		go func() { defer wg.Done(); a.stop() }()
	}
	wg.Wait()
	u.hub.stop()
}

// exitedChild returns the first child that has exited, or nil.
func (u *isoUp) exitedChild() *child {
	for _, c := range append([]*child{u.hub}, u.agents...) {
		select {
		case <-c.exited:
			return c
		default:
		}
	}
	return nil
}

// poll calls f every 100ms until it returns true or an error, a child
// exits, ctx ends or d passes.
func (u *isoUp) poll(ctx context.Context, d time.Duration, what string, f func() (bool, error)) error {
	deadline := time.Now().Add(d)
	var last error
	for {
		if c := u.exitedChild(); c != nil {
			return c.failed()
		}
		ok, err := f()
		if ok {
			return nil
		}
		last = err
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not done within %s: %v", what, d, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitHub waits for the hub's admin kubeconfig and /readyz through the
// root-namespace forwarder.
func (u *isoUp) waitHub(ctx context.Context, hubKubeconfig, publicURL string) (*rest.Config, error) {
	var cfg *rest.Config
	err := u.poll(ctx, 2*time.Minute, "hub ready", func() (bool, error) {
		if cfg == nil {
			c, err := clientcmd.BuildConfigFromFlags("", hubKubeconfig)
			if err != nil {
				return false, err
			}
			c.Host, c.Timeout, c.QPS, c.Burst = publicURL, 10*time.Second, 50, 100
			cfg = c
		}
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return false, err
		}
		b, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && strings.TrimSpace(string(b)) == "ok", err
	})
	return cfg, err
}

// writeAdminKubeconfig copies the hub's admin kubeconfig with the server
// set to the root-namespace forwarder.
func writeAdminKubeconfig(from, to, server string) error {
	kc, err := clientcmd.LoadFromFile(from)
	if err != nil {
		return err
	}
	for _, c := range kc.Clusters {
		c.Server = server
	}
	return clientcmd.WriteToFile(*kc, to)
}

// waitNodes reports each node as it joins (Ready) until all have.
func (u *isoUp) waitNodes(ctx context.Context, cs kubernetes.Interface) error {
	joined := map[string]bool{}
	ours := map[string]bool{}
	for _, n := range u.topo.Nodes {
		ours[n.Name] = true
	}
	// A resumed cluster still has last run's Nodes: only a heartbeat from
	// this run counts.
	since := time.Now().Add(-time.Second)
	return u.poll(ctx, 2*time.Minute, "nodes Ready", func() (bool, error) {
		list, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, n := range list.Items {
			if ours[n.Name] && !joined[n.Name] && readySince(&n, since) && n.Status.DaemonEndpoints.KubeletEndpoint.Port != 0 {
				joined[n.Name] = true
				u.step("%s joined (TLS bootstrap, Ready, kubelet %s:%d)", n.Name, nodeIP(&n), n.Status.DaemonEndpoints.KubeletEndpoint.Port)
			}
		}
		if len(joined) < len(u.topo.Nodes) {
			return false, fmt.Errorf("%d of %d nodes Ready", len(joined), len(u.topo.Nodes))
		}
		return true, nil
	})
}

// waitEgress waits until the hub reaches every node's kubelet through the
// egress (nodes/<name>/proxy/healthz).
func (u *isoUp) waitEgress(ctx context.Context, cs kubernetes.Interface, mode string) error {
	for _, n := range u.topo.Nodes {
		err := u.poll(ctx, time.Minute, n.Name+" through "+mode, func() (bool, error) {
			b, err := cs.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes/" + n.Name + "/proxy/healthz").DoRaw(ctx)
			return err == nil && strings.TrimSpace(string(b)) == "ok", err
		})
		if err != nil {
			return err
		}
		u.step("%s reachable through %s (nodes/%s/proxy/healthz ok)", n.Name, mode, n.Name)
	}
	return nil
}

// verifyIsolated dials every node's kubelet port directly from the
// control-plane network; any success means the topology is not isolated.
func (u *isoUp) verifyIsolated(ctx context.Context) (string, error) {
	type result struct {
		addr string
		err  error
	}
	res := make([]result, len(u.topo.Nodes))
	var wg sync.WaitGroup
	for i, n := range u.topo.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr := net.JoinHostPort(n.IP.String(), "10250")
			dctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
			defer cancel()
			c, err := isolation.DialContext(dctx, u.topo.HubNS, addr)
			if err == nil {
				c.Close()
			}
			res[i] = result{addr, err}
		}()
	}
	wg.Wait()
	for i, r := range res {
		if r.err == nil {
			return "", fmt.Errorf("not isolated: a direct dial from the control-plane network to %s kubelet %s succeeded; refusing to run", u.topo.Nodes[i].Name, r.addr)
		}
	}
	msg := fmt.Sprintf("direct dial hub → %s kubelet %s failed: %v", u.topo.Nodes[0].Name, res[0].addr, res[0].err)
	if d, err := u.topo.Dropped(); err == nil && d > 0 {
		msg += fmt.Sprintf(" (router dropped %d hub-initiated packets)", d)
	}
	return msg, nil
}

// wait runs until ctx ends (Ctrl-C, SIGTERM) or a child exits.
func (u *isoUp) wait(ctx context.Context) error {
	cases := make(chan *child, 1+len(u.agents))
	for _, c := range append([]*child{u.hub}, u.agents...) {
		go func() {
			select {
			case <-c.exited:
				cases <- c
			case <-ctx.Done():
			}
		}()
	}
	select {
	case <-ctx.Done():
		u.step("stopping")
		return nil
	case c := <-cases:
		return c.failed()
	}
}

// printStatus is the closing table: hub, egress, isolation and nodes.
func (u *isoUp) printStatus(ctx context.Context, cs kubernetes.Interface, mode, publicURL, kubeconfig string) {
	w := tabwriter.NewWriter(u.out, 0, 4, 2, ' ', 0)
	defer w.Flush()
	fmt.Fprintf(w, "\nHUB\t%s\tcontrol-plane network %s (netns %s)\tegress=%s\tkubeconfig=%s\n", publicURL, u.topo.HubIP, u.topo.HubNS, mode, kubeconfig)
	pods := ""
	if u.podCIDR != "" {
		pods = " (pods " + u.podCIDR + ")"
	}
	fmt.Fprintf(w, "ISOLATION\t%s%s\trouter netns %s\tenforced by %s (table inet %s)\tlogs in %s\n", u.topo.CIDR(), pods, u.topo.Router, u.topo.Enforcement, isolation.TableName, u.cfg.DataDir)
	list, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(w, "NODES\tcould not list: %v\n", err)
		return
	}
	ns := map[string]string{}
	for _, n := range u.topo.Nodes {
		ns[n.Name] = n.NetNS
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	for _, n := range list.Items {
		ready := "NotReady"
		if nodeReady(&n) {
			ready = "Ready"
		}
		where := "netns " + ns[n.Name]
		if ns[n.Name] == "" {
			where = "not started by this run"
		}
		fmt.Fprintf(w, "NODE\t%s\t%s\t%s:%d\t%s\n", n.Name, ready, nodeIP(&n), n.Status.DaemonEndpoints.KubeletEndpoint.Port, where)
	}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

func readySince(n *corev1.Node, t time.Time) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue && !c.LastHeartbeatTime.Time.Before(t.Truncate(time.Second)) {
			return true
		}
	}
	return false
}

func nodeIP(n *corev1.Node) string {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	return ""
}

// forwardInto accepts on ln (root namespace) and connects each client to
// target from inside namespace ns.
func forwardInto(ln net.Listener, ns, target string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			up, err := isolation.DialContext(ctx, ns, target)
			cancel()
			if err != nil {
				return
			}
			defer up.Close()
			done := make(chan struct{}, 2)
			pipe := func(dst, src net.Conn) {
				_, _ = io.Copy(dst, src)
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
				done <- struct{}{}
			}
			go pipe(up, c)
			go pipe(c, up)
			<-done
			<-done
		}()
	}
}

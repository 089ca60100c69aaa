package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tether-dev/tether/internal/bootstraptoken"
	"github.com/tether-dev/tether/internal/egress"
	"github.com/tether-dev/tether/internal/hub"
	"github.com/tether-dev/tether/internal/nodeagent"
)

func newUpCmd() *cobra.Command {
	var f hubFlags
	var nodes int
	var iso *isolateFlags
	var ha *haFlags
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start a whole local cluster (hub + nodes) with embedded etcd; Ctrl-C stops it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nodes < 0 {
				return errors.New("--nodes must be >= 0")
			}
			cfg, err := f.config()
			if err != nil {
				return err
			}
			if handled, err := iso.run(cmd, cfg, nodes, f.verbose); handled {
				return err
			}
			if ha.enabled() {
				return ha.run(cmd.Context(), cmd.OutOrStdout(), cfg, nodes, f.verbose)
			}
			return runUp(cmd.Context(), cmd.OutOrStdout(), cfg, nodes, f.verbose)
		},
	}
	f.add(cmd.Flags(), defaultStateDir())
	cmd.Flags().IntVar(&nodes, "nodes", 0, "number of node agents to start")
	iso = addIsolateFlags(cmd.Flags())
	ha = addHAFlags(cmd.Flags())
	// A local cluster listens on loopback unless told otherwise; its service
	// VIPs are loopback addresses without root (the userspace proxy serves
	// them), a real range with root (kernel DNAT, see upServiceRange).
	for flag, value := range map[string]string{"bind-address": "127.0.0.1", "service-cluster-ip-range": upServiceRange()} {
		_ = cmd.Flags().Set(flag, value)
		cmd.Flags().Lookup(flag).Changed = false
		cmd.Flags().Lookup(flag).DefValue = value
	}
	return withConfig(cmd)
}

func runUp(ctx context.Context, out io.Writer, cfg hub.Config, nodes int, verbose bool) error {
	start := time.Now()
	if cfg.AdvertiseAddress == nil && cfg.BindAddress.IsLoopback() {
		cfg.AdvertiseAddress = cfg.BindAddress
	}
	logFile, err := openLog(cfg.DataDir)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cfg.Logger = newLoggerTo(logFile, verbose)
	fmt.Fprintf(out, "• data dir %s (log: %s)\n", cfg.DataDir, logFile.Name())
	// Nodes join the way remote nodes do: by bootstrap token (TLS
	// bootstrapping), pinning the cluster CA. The token is kept in the data
	// dir so a resumed cluster reuses it.
	token, err := upToken(cfg.DataDir)
	if err != nil {
		return err
	}
	if nodes > 0 {
		cfg.BootstrapTokens = append(cfg.BootstrapTokens, token)
	}
	h, err := hub.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	fmt.Fprintln(out, "• starting hub (PKI, embedded etcd, API server)…")
	go func() { done <- h.Run(ctx) }()
	select {
	case <-h.Ready():
	case err := <-done:
		if err == nil {
			err = errors.New("hub stopped before it was ready")
		}
		return err
	}
	fmt.Fprintf(out, "• hub ready at %s in %s\n", h.Server(), time.Since(start).Round(time.Millisecond))
	agents, err := startNodes(ctx, out, cfg, []string{h.Server()}, token, nodes, done)
	if err != nil {
		cancel()
		<-done
		return err
	}
	if nodes > 0 {
		fmt.Fprintf(out, "• %d node(s) ready in %s\n", nodes, time.Since(start).Round(time.Millisecond))
	}
	printStatus(ctx, out, cfg, h)
	fmt.Fprintf(out, "\nCluster is up. In another shell:\n\n  export KUBECONFIG=%s\n  kubectl get nodes\n\nCtrl-C stops the cluster; `tether up --data-dir %s` resumes it.\n", h.AdminKubeconfig(), cfg.DataDir)
	if err := os.WriteFile(filepath.Join(cfg.DataDir, "up.ready"), []byte(h.Server()+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(filepath.Join(cfg.DataDir, "up.ready"))
	err = <-done
	cancel()
	for _, a := range agents {
		<-a
	}
	fmt.Fprintln(out, "• cluster stopped")
	return err
}

// upToken returns the bootstrap token of this local cluster, creating it once.
func upToken(dir string) (string, error) {
	path := filepath.Join(dir, "up.token")
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	tok, err := bootstraptoken.Generate()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return tok, os.WriteFile(path, []byte(tok+"\n"), 0o600)
}

// startNodes runs n node agents in this process, each joined by bootstrap
// token with its own data dir and kubelet port, and waits until they are
// running. The returned channels close when each agent has stopped.
func startNodes(ctx context.Context, out io.Writer, cfg hub.Config, servers []string, token string, n int, hubDone <-chan error) ([]chan struct{}, error) {
	var stopped []chan struct{}
	caFile := filepath.Join(cfg.DataDir, "pki", "ca.crt")
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("node-%d", i)
		ln, err := net.Listen("tcp", net.JoinHostPort(cfg.BindAddress.String(), "0"))
		if err != nil {
			return stopped, err
		}
		// With SSH egress every node runs the restricted SSH endpoint on a
		// free port of its address (published on its Node).
		var sshEndpoint string
		if needSSH, _ := egress.NeedsSSH(cfg.Egress); needSSH { // a bad file already failed the hub
			sshEndpoint = net.JoinHostPort(cfg.AdvertiseAddress.String(), "0")
		}
		a, err := nodeagent.New(nodeagent.Config{
			SSHEndpoint: sshEndpoint,
			Server:      servers[0], Servers: servers[1:], NodeName: name, DataDir: filepath.Join(cfg.DataDir, "nodes", name),
			Token: token, CACertFile: caFile, NodeIP: cfg.AdvertiseAddress, KubeletListener: ln,
			StopPodsOnExit: true, Konnectivity: "auto",
			// In-process agents share this process's network namespace: pods
			// run on the host network; the service proxy is nftables as root.
			PodNetwork:  nodeagent.PodNetworkHost,
			ClusterCIDR: prefixOf(cfg.ClusterCIDR, hub.DefaultClusterCIDR), ServiceCIDR: prefixOf(cfg.ServiceClusterIPRange, ""),
			Logger: cfg.Logger.With("node", name),
		})
		if err != nil {
			ln.Close()
			return stopped, err
		}
		done := make(chan struct{})
		errc := make(chan error, 1)
		go func() {
			defer close(done)
			if err := a.Run(ctx); err != nil {
				errc <- err
			}
		}()
		stopped = append(stopped, done)
		select {
		case <-a.Ready():
			fmt.Fprintf(out, "• %s joined (kubelet %s)\n", name, ln.Addr())
		case err := <-errc:
			return stopped, fmt.Errorf("%s: %w", name, err)
		case err := <-hubDone:
			return stopped, fmt.Errorf("hub stopped: %v", err)
		case <-ctx.Done():
			return stopped, ctx.Err()
		}
	}
	return stopped, nil
}

func openLog(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return os.OpenFile(filepath.Join(dir, "tether.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
}

// printStatus ends start-up with a table: the hub, the egress mode and every
// node with its address and readiness, as the API reports them.
func printStatus(ctx context.Context, out io.Writer, cfg hub.Config, h *hub.Hub) {
	mode := cfg.Egress.Mode
	if mode == "" {
		mode = "direct"
	}
	if ssh, _ := egress.NeedsSSH(cfg.Egress); ssh {
		mode = "ssh(deprecated:use-konnectivity)"
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer w.Flush()
	fmt.Fprintf(w, "\nHUB\t%s\tegress=%s\tkubeconfig=%s\n", h.Server(), mode, h.AdminKubeconfig())
	printNodes(ctx, w, h.AdminKubeconfig())
}

// printNodes adds a NODE row per node (name, readiness, kubelet endpoint),
// as the API reports them, to a status table.
func printNodes(ctx context.Context, w io.Writer, kubeconfig string) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return
	}
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return
	}
	nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(w, "NODES\tcould not list: %v\n", err)
		return
	}
	for _, n := range nodes.Items {
		ready, addr := "NotReady", ""
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				ready = "Ready"
			}
		}
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				addr = a.Address
			}
		}
		fmt.Fprintf(w, "NODE\t%s\t%s\t%s:%d\n", n.Name, ready, addr, n.Status.DaemonEndpoints.KubeletEndpoint.Port)
	}
}

package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/tether-dev/tether/internal/nodeagent"
	"github.com/tether-dev/tether/internal/tlspolicy"
)

// newAgentCmd is `tether agent`: the node agent (kubelet-compatible API,
// process pods, TLS bootstrapping, Node registration and Lease).
func newAgentCmd() *cobra.Command {
	var (
		cfg            nodeagent.Config
		nodeIP         string
		verbose        bool
		certLifetime   time.Duration
		kubeletAddress string
		clusterCIDR    string
		serviceCIDR    string
		cipherSuites   []string
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a node: join the hub (bootstrap token or client credentials), run pods, serve the kubelet API",
		Example: `  # join with a bootstrap token (print one with 'tether token create' on the hub)
  tether agent --server https://hub:6443 --token abcdef.0123456789abcdef \
    --ca-cert-hash sha256:<hash> --node-name node1 --data-dir /var/lib/tether-agent

  # join with provisioned client credentials (CN=system:node:node1, O=system:nodes)
  tether agent --kubeconfig node1.kubeconfig --node-name node1 --data-dir /var/lib/tether-agent`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.DataDir == "" {
				return errors.New("--data-dir is required")
			}
			if nodeIP != "" {
				if cfg.NodeIP = net.ParseIP(nodeIP); cfg.NodeIP == nil {
					return fmt.Errorf("--node-ip %q is not an IP address", nodeIP)
				}
			}
			for _, c := range []struct {
				flag, value string
				dst         *netip.Prefix
			}{{"--cluster-cidr", clusterCIDR, &cfg.ClusterCIDR}, {"--service-cidr", serviceCIDR, &cfg.ServiceCIDR}} {
				if c.value == "" {
					continue
				}
				p, err := netip.ParsePrefix(c.value)
				if err != nil {
					return fmt.Errorf("%s: %w", c.flag, err)
				}
				*c.dst = p.Masked()
			}
			cfg.CertificateLifetime = certLifetime
			cfg.KubeletAddress = kubeletAddress
			suites, err := tlspolicy.Parse("--tls-cipher-suites", cipherSuites)
			if err != nil {
				return err
			}
			cfg.TLSCipherSuites = suites
			cfg.Logger = newLogger(verbose)
			a, err := nodeagent.New(cfg)
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	fs := cmd.Flags()
	fs.StringSliceVar(&cfg.Servers, "server", nil, "hub URL, https://HOST:PORT (default: the server of --kubeconfig); repeat it or give a comma list for several hub replicas: the agent fails over between them")
	fs.StringVar(&cfg.NodeName, "node-name", "", "name of this node (default: hostname)")
	fs.StringVar(&cfg.DataDir, "data-dir", filepath.Join(defaultStateDir(), "agent"), "directory for node credentials, kubeconfig and pod state")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "provisioned client credentials (CN=system:node:<name>, O=system:nodes)")
	fs.StringVar(&cfg.BootstrapKubeconfig, "bootstrap-kubeconfig", "", "kubeconfig with bootstrap credentials used only to request the node certificate")
	fs.StringVar(&cfg.Token, "token", "", "bootstrap token id.secret for TLS bootstrapping")
	fs.StringVar(&cfg.CACertHash, "ca-cert-hash", "", "sha256:<hex> of the cluster CA public key; the hub is verified against it")
	fs.StringVar(&cfg.CACertFile, "ca-cert", "", "cluster CA certificate file (instead of, or in addition to, --ca-cert-hash)")
	fs.DurationVar(&certLifetime, "certificate-lifetime", 0, "requested lifetime of node certificates (default: the hub's signing duration)")
	fs.StringVar(&nodeIP, "node-ip", "", "node address for the Node object and serving certificate (default: first non-loopback IPv4)")
	fs.IntVar(&cfg.KubeletPort, "kubelet-port", 10250, "HTTPS port of the kubelet API (there is no read-only port)")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert-file", "", "kubelet serving certificate to use instead of requesting one by kubelet-serving CSR (with --tls-private-key-file)")
	fs.StringVar(&cfg.TLSKeyFile, "tls-private-key-file", "", "key of --tls-cert-file")
	fs.StringSliceVar(&cipherSuites, "tls-cipher-suites", nil, "TLS 1.2 cipher suites of the kubelet API (default: ECDHE with AES-GCM or ChaCha20-Poly1305 only; others warn)")
	fs.StringVar(&kubeletAddress, "kubelet-address", "", "bind address of the kubelet API (default: all addresses)")
	fs.StringVar(&cfg.Konnectivity, "konnectivity", "auto", "Konnectivity agent: auto (when the hub publishes a server), off, or host:port of the server's agent port")
	fs.StringVar(&cfg.SSHEndpoint, "ssh-endpoint", "", "run the restricted SSH endpoint for the hub's SSH egress on this address, e.g. :2222 (default: off)")
	fs.StringVar(&cfg.PodNetwork, "pod-network", "auto", "pod networking: netns (own network namespace and IP from the node's podCIDR per pod; root), host (pods share the node's network), or auto (netns as root, else host)")
	fs.StringVar(&cfg.ServiceProxy, "service-proxy", "auto", "ClusterIP data path: nftables (kernel DNAT; root), userspace (listeners on the VIPs), or auto (nftables as root)")
	fs.StringVar(&clusterCIDR, "cluster-cidr", "", "the cluster's pod range (the hub's --cluster-cidr): pods may reach it directly, and it gets an unreachable route here")
	fs.StringVar(&serviceCIDR, "service-cidr", "", "the cluster's service range (the hub's --service-cluster-ip-range): gets an unreachable route here")
	fs.BoolVar(&cfg.StopPodsOnExit, "stop-pods-on-exit", false, "kill all pods when the agent stops (default: pods keep running and are re-adopted)")
	fs.BoolVarP(&verbose, "verbose", "v", false, "debug logging")
	return withConfig(cmd)
}

package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"

	"github.com/tether-dev/tether/internal/egress"
	"github.com/tether-dev/tether/internal/hub"
	konnectivityclient "github.com/tether-dev/tether/internal/konnectivity/client"
	"github.com/tether-dev/tether/internal/storage"
	"github.com/tether-dev/tether/internal/tlspolicy"
)

// hubFlags are the flags shared by `tether server` and `tether up`.
type hubFlags struct {
	dataDir, bindAddress, advertiseAddress, serviceCIDR string
	clusterCIDR                                         string
	securePort                                          int
	etcdServers                                         []string
	etcdCA, etcdCert, etcdKey                           string
	anonymous                                           bool
	caCert, caKey, servingCert, servingKey, saKey       string
	verbose                                             bool
	signingDuration, tokenTTL                           time.Duration
	bootstrapTokens                                     []string
	egress, egressConfig, kubeletCA                     string
	insecureKubeletTLS                                  bool
	kubeletAddressTypes                                 []string
	konnectivityUDS                                     string
	konnectivityPort                                    int
	ssh                                                 hub.SSHConfig
	tlsSANs                                             []string
	cipherSuites                                        []string
	leaderElection                                      hub.LeaderElectionConfig
}

func (f *hubFlags) add(fs *pflag.FlagSet, defaultDataDir string) {
	fs.StringVar(&f.dataDir, "data-dir", defaultDataDir, "directory for the cluster PKI, embedded etcd and admin.kubeconfig")
	fs.StringVar(&f.bindAddress, "bind-address", "0.0.0.0", "IP address the HTTPS API listens on")
	fs.IntVar(&f.securePort, "secure-port", 6443, "HTTPS port of the API (there is no plain-HTTP port)")
	fs.StringVar(&f.advertiseAddress, "advertise-address", "", "address published to nodes in the kubernetes Endpoints (default: first non-loopback IPv4)")
	fs.StringVar(&f.serviceCIDR, "service-cluster-ip-range", "10.96.0.0/12", "CIDR for service cluster IPs; the first address is the kubernetes Service")
	fs.StringVar(&f.clusterCIDR, "cluster-cidr", hub.DefaultClusterCIDR, "pod range; every Node gets a /24 of it as spec.podCIDR")
	fs.StringSliceVar(&f.etcdServers, "etcd-servers", nil, "external etcd client URLs (default: embedded etcd under --data-dir)")
	fs.StringVar(&f.etcdCA, "etcd-cafile", "", "CA bundle for external etcd")
	fs.StringVar(&f.etcdCert, "etcd-certfile", "", "client certificate for external etcd")
	fs.StringVar(&f.etcdKey, "etcd-keyfile", "", "client key for external etcd")
	fs.BoolVar(&f.anonymous, "anonymous-auth", false, "INSECURE: serve unauthenticated requests as system:anonymous")
	fs.StringVar(&f.caCert, "ca-cert-file", "", "operator-provided cluster CA certificate (with --ca-key-file)")
	fs.StringVar(&f.caKey, "ca-key-file", "", "operator-provided cluster CA key")
	fs.StringVar(&f.servingCert, "tls-cert-file", "", "operator-provided serving certificate (with --tls-private-key-file)")
	fs.StringVar(&f.servingKey, "tls-private-key-file", "", "operator-provided serving key")
	fs.StringVar(&f.saKey, "service-account-key-file", "", "operator-provided service-account signing key")
	fs.DurationVar(&f.signingDuration, "cluster-signing-duration", 365*24*time.Hour, "maximum validity of certificates signed for CSRs")
	fs.StringSliceVar(&f.bootstrapTokens, "bootstrap-token", nil, "bootstrap token(s) id.secret to create at start, for nodes to join")
	fs.DurationVar(&f.tokenTTL, "bootstrap-token-ttl", 24*time.Hour, "lifetime of tokens created with --bootstrap-token")
	fs.StringVar(&f.egress, "egress", "direct", "how the hub reaches nodes, pods and services: direct, ssh (deprecated) or konnectivity")
	fs.StringVar(&f.egressConfig, "egress-selector-config-file", "", "upstream EgressSelectorConfiguration file (apiserver.k8s.io/v1beta1); overrides --egress for the names it lists")
	fs.StringVar(&f.konnectivityUDS, "konnectivity-uds", "", "Konnectivity server frontend socket for --egress=konnectivity (gRPC)")
	fs.IntVar(&f.konnectivityPort, "konnectivity-agent-port", 8132, "mTLS port of the in-process Konnectivity server for node agents (with --egress=konnectivity)")
	fs.StringVar(&f.ssh.User, "ssh-user", "tether", "user the hub logs in as on nodes (--egress=ssh)")
	fs.StringVar(&f.ssh.KeyFile, "ssh-keyfile", "", "hub SSH private key (--egress=ssh; default: <data-dir>/pki/ssh_hub_ed25519, generated)")
	fs.IntVar(&f.ssh.Port, "ssh-port", 22, "SSH port on nodes (--egress=ssh; a node's tether.io/ssh-port annotation overrides it)")
	fs.StringVar(&f.ssh.KnownHostsFile, "ssh-known-hosts", "", "OpenSSH known_hosts file with node host keys (--egress=ssh; default: keys nodes publish on their Node)")
	fs.BoolVar(&f.ssh.InsecureSkipHostKeyCheck, "insecure-ssh-skip-host-key-check", false, "INSECURE: accept any node SSH host key (labs only)")
	fs.StringVar(&f.kubeletCA, "kubelet-certificate-authority", "", "CA that kubelet serving certificates must chain to (default: the cluster CA)")
	fs.BoolVar(&f.insecureKubeletTLS, "insecure-kubelet-tls", false, "INSECURE: do not verify kubelet serving certificates (Kubernetes' old default)")
	fs.StringSliceVar(&f.kubeletAddressTypes, "kubelet-preferred-address-types", []string{"InternalIP", "ExternalIP"}, "node address types to reach kubelets by, in order")
	fs.BoolVarP(&f.verbose, "verbose", "v", false, "debug logging")
	fs.StringSliceVar(&f.cipherSuites, "tls-cipher-suites", nil, "TLS 1.2 cipher suites of the API and Konnectivity agent ports (default: ECDHE with AES-GCM or ChaCha20-Poly1305 only; others warn)")
	fs.StringSliceVar(&f.tlsSANs, "tls-san", nil, "more DNS names / IPs for the generated serving certificate (e.g. a load balancer in front of several replicas)")
	fs.DurationVar(&f.leaderElection.LeaseDuration, "leader-elect-lease-duration", 8*time.Second, "controllers' leader election: how long a lease is valid")
	fs.DurationVar(&f.leaderElection.RenewDeadline, "leader-elect-renew-deadline", 6*time.Second, "controllers' leader election: the leader gives up if it cannot renew within this")
	fs.DurationVar(&f.leaderElection.RetryPeriod, "leader-elect-retry-period", 2*time.Second, "controllers' leader election: interval between attempts")
}

func (f *hubFlags) config() (hub.Config, error) {
	cfg := hub.Config{
		DataDir: f.dataDir, SecurePort: f.securePort, EtcdServers: f.etcdServers,
		EtcdCAFile: f.etcdCA, EtcdCertFile: f.etcdCert, EtcdKeyFile: f.etcdKey, AnonymousAuth: f.anonymous,
		CACertFile: f.caCert, CAKeyFile: f.caKey, ServingCertFile: f.servingCert, ServingKeyFile: f.servingKey,
		ServiceAccountKeyFile: f.saKey, ClusterSigningDuration: f.signingDuration,
		BootstrapTokens: f.bootstrapTokens, BootstrapTokenTTL: f.tokenTTL,
		Egress: egress.Config{Mode: f.egress, SelectorConfigFile: f.egressConfig,
			Konnectivity: konnectivityclient.Config{UDSName: f.konnectivityUDS}},
		KubeletCertificateAuthority: f.kubeletCA, InsecureKubeletTLS: f.insecureKubeletTLS,
		SSH: f.ssh, ExtraSANs: f.tlsSANs, LeaderElection: f.leaderElection,
		// --egress=konnectivity without an external server: run it in the hub.
		Konnectivity: hub.KonnectivityConfig{Enabled: f.egress == "konnectivity" && f.konnectivityUDS == "" && f.egressConfig == "", AgentPort: f.konnectivityPort},
	}
	for _, t := range f.kubeletAddressTypes {
		switch corev1.NodeAddressType(t) {
		case corev1.NodeInternalIP, corev1.NodeExternalIP, corev1.NodeHostName, corev1.NodeInternalDNS, corev1.NodeExternalDNS:
			cfg.KubeletPreferredAddressTypes = append(cfg.KubeletPreferredAddressTypes, corev1.NodeAddressType(t))
		default:
			return cfg, fmt.Errorf("--kubelet-preferred-address-types: unknown type %q", t)
		}
	}
	if cfg.BindAddress = net.ParseIP(f.bindAddress); cfg.BindAddress == nil {
		return cfg, fmt.Errorf("--bind-address %q is not an IP address", f.bindAddress)
	}
	if f.advertiseAddress != "" {
		if cfg.AdvertiseAddress = net.ParseIP(f.advertiseAddress); cfg.AdvertiseAddress == nil {
			return cfg, fmt.Errorf("--advertise-address %q is not an IP address", f.advertiseAddress)
		}
	}
	if err := storage.ParseURLs(f.etcdServers); err != nil {
		return cfg, fmt.Errorf("--etcd-servers: %w", err)
	}
	_, cidr, err := net.ParseCIDR(f.serviceCIDR)
	if err != nil {
		return cfg, fmt.Errorf("--service-cluster-ip-range: %w", err)
	}
	cfg.ServiceClusterIPRange = cidr
	if cfg.ClusterCIDR, err = parseClusterCIDR(f.clusterCIDR, cidr); err != nil {
		return cfg, err
	}
	if f.ssh.Port <= 0 || f.ssh.Port > 65535 {
		return cfg, fmt.Errorf("--ssh-port %d is out of range", f.ssh.Port)
	}
	if f.konnectivityPort <= 0 || f.konnectivityPort > 65535 {
		return cfg, fmt.Errorf("--konnectivity-agent-port %d is out of range", f.konnectivityPort)
	}
	if cfg.CipherSuites, err = tlspolicy.Parse("--tls-cipher-suites", f.cipherSuites); err != nil {
		return cfg, err
	}
	if f.securePort <= 0 || f.securePort > 65535 {
		return cfg, fmt.Errorf("--secure-port %d is out of range", f.securePort)
	}
	return cfg, nil
}

// defaultStateDir is $XDG_STATE_HOME/tether, else ~/.local/state/tether.
func defaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "tether")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "tether")
	}
	return "tether-data"
}

func newServerCmd() *cobra.Command {
	var f hubFlags
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the hub: HTTPS API server with authn/authz, storage and controllers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config()
			if err != nil {
				return err
			}
			cfg.Logger = newLogger(f.verbose)
			h, err := hub.New(cfg)
			if err != nil {
				return err
			}
			return h.Run(cmd.Context())
		},
	}
	f.add(cmd.Flags(), filepath.Join(defaultStateDir(), "server"))
	return withConfig(cmd)
}

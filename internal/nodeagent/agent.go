// Package nodeagent is tether's node agent (`tether agent`): it joins the
// cluster (provisioned client credentials, or TLS bootstrapping with a
// bootstrap token pinned to the cluster CA hash), keeps its client and
// serving certificates rotated, registers its Node and renews its Lease,
// runs the pods bound to it as processes (package runtime) with their
// service-account credentials, and serves the kubelet API (package
// kubeletapi) that the hub calls for logs, exec, attach and port-forward.
package nodeagent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	certificatesv1 "k8s.io/api/certificates/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/certificate"
	"k8s.io/klog/v2"

	"github.com/tether-dev/tether/internal/nodeagent/kubeletapi"
	"github.com/tether-dev/tether/internal/nodeagent/runtime"
	"github.com/tether-dev/tether/internal/nodeagent/servicenet"
	"github.com/tether-dev/tether/internal/nodeagent/tunnel"
	"github.com/tether-dev/tether/internal/sshtunnel"
	"github.com/tether-dev/tether/internal/tlspolicy"
)

// Config configures an Agent. Zero values are documented per field.
type Config struct {
	// Server is the hub URL (https://host:port). Zero: the server of
	// Kubeconfig or BootstrapKubeconfig.
	Server string
	// Servers are more hub URLs (replicas of one cluster). The agent
	// dials Server first and fails over to these, in order, when a
	// connection cannot be made (failover.go).
	Servers []string
	// NodeName; zero: the machine's hostname.
	NodeName string
	// DataDir keeps credentials (pki/), the node kubeconfig and pod state.
	// Required.
	DataDir string

	// Credentials, in order of preference: a valid certificate already in
	// DataDir; Kubeconfig (provisioned client credentials); a bootstrap
	// token (Token with CACertHash or CACertFile) or BootstrapKubeconfig,
	// which request a node certificate through a CSR.
	Kubeconfig          string
	BootstrapKubeconfig string
	Token               string
	CACertHash          string
	CACertFile          string
	// CertificateLifetime is requested for node certificates
	// (spec.expirationSeconds); zero lets the signer decide.
	CertificateLifetime time.Duration

	// NodeIP is the node's address (Node status, serving cert SANs,
	// hostIP); zero: the first non-loopback IPv4 address, or 127.0.0.1.
	NodeIP net.IP
	// KubeletPort (zero 10250) or KubeletListener (tests) for the kubelet API.
	KubeletPort     int
	KubeletAddress  string // bind address; zero: all addresses
	KubeletListener net.Listener
	// TLSCertFile and TLSKeyFile: an operator-provided kubelet serving
	// certificate used instead of one requested by kubelet-serving CSR (as
	// kubelet's --tls-cert-file). Zero: request one from the hub.
	TLSCertFile, TLSKeyFile string
	// TLSCipherSuites for the kubelet API's TLS 1.2; nil: tlspolicy.Default().
	TLSCipherSuites []uint16

	// LeaseDuration (zero 40s) and LeaseRenewInterval (zero 10s).
	LeaseDuration, LeaseRenewInterval time.Duration
	// StatusInterval between NodeStatus posts; zero 1m (and on change).
	StatusInterval time.Duration

	// Runtime knobs (see runtime.Config).
	BackoffBase, BackoffMax time.Duration
	StopPodsOnExit          bool

	// Konnectivity is "auto" (zero value: run the Konnectivity agent when the
	// hub publishes a server), "off", or an explicit host:port.
	Konnectivity string
	// PodNetwork is auto (zero value: netns as root, else host), netns (each
	// pod gets its own network namespace with an IP of the node's podCIDR)
	// or host (pods share the agent's network). ServiceProxy is auto (zero
	// value: nftables as root, else userspace), nftables or userspace.
	PodNetwork, ServiceProxy string
	// ClusterCIDR and ServiceCIDR, when set, get `unreachable` routes in the
	// agent's namespace (with the pod network) so that nothing addressed to
	// them leaves the node; pods may reach ClusterCIDR without translation.
	ClusterCIDR, ServiceCIDR netip.Prefix
	// SSHEndpoint, when set (e.g. ":2222"), runs the restricted SSH endpoint
	// for the hub's SSH egress (see internal/sshtunnel).
	SSHEndpoint string
	Logger      *slog.Logger
}

// Agent is the node agent.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	ready  chan struct{}
	once   sync.Once
	mu     sync.Mutex
	kaddr  net.Addr
	reg    *prometheus.Registry
	caPEM  []byte
	server string
}

// New validates cfg and fills defaults.
func New(cfg Config) (*Agent, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("nodeagent: data dir is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if weak := tlspolicy.Weak(cfg.TLSCipherSuites); len(weak) > 0 {
		cfg.Logger.Warn("INSECURE: TLS 1.2 cipher suites without forward secrecy or AEAD are enabled by --tls-cipher-suites", "suites", weak)
	}
	if cfg.NodeName == "" {
		hn, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("nodeagent: node name: %w", err)
		}
		cfg.NodeName = hn
	}
	if errs := validateNodeName(cfg.NodeName); errs != nil {
		return nil, fmt.Errorf("nodeagent: node name %q: %v", cfg.NodeName, errs)
	}
	if cfg.Token != "" {
		if _, err := parseToken(cfg.Token); err != nil {
			return nil, fmt.Errorf("nodeagent: %w", err)
		}
		if cfg.CACertHash == "" && cfg.CACertFile == "" {
			return nil, errors.New("nodeagent: --token needs --ca-cert-hash or --ca-cert to verify the hub")
		}
	}
	if cfg.CACertHash != "" {
		if _, err := hashBytes(cfg.CACertHash); err != nil {
			return nil, fmt.Errorf("nodeagent: %w", err)
		}
	}
	servers := cfg.Servers
	if cfg.Server != "" {
		servers = append([]string{cfg.Server}, servers...)
	}
	for _, s := range servers {
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("nodeagent: --server %q must be an https:// URL", s)
		}
	}
	if cfg.Server == "" && len(cfg.Servers) > 0 {
		cfg.Server, cfg.Servers = cfg.Servers[0], cfg.Servers[1:]
	}
	if err := resolveNetworkModes(&cfg); err != nil {
		return nil, fmt.Errorf("nodeagent: %w", err)
	}
	if cfg.KubeletPort == 0 {
		cfg.KubeletPort = 10250
	}
	if cfg.KubeletPort < 0 || cfg.KubeletPort > 65535 {
		return nil, fmt.Errorf("nodeagent: kubelet port %d out of range", cfg.KubeletPort)
	}
	if cfg.NodeIP == nil {
		cfg.NodeIP = defaultNodeIP()
	}
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = 40 * time.Second
	}
	if cfg.LeaseRenewInterval == 0 {
		cfg.LeaseRenewInterval = 10 * time.Second
	}
	if cfg.StatusInterval == 0 {
		cfg.StatusInterval = time.Minute
	}
	return &Agent{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeName), ready: make(chan struct{}), reg: prometheus.NewRegistry()}, nil
}

// Ready is closed once the node is registered and the kubelet API serves.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// KubeletAddr is the kubelet API's listening address (valid once Ready).
func (a *Agent) KubeletAddr() net.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.kaddr
}

// NodeKubeconfig is the path of the node's kubeconfig (0600).
func (a *Agent) NodeKubeconfig() string { return filepath.Join(a.cfg.DataDir, "kubelet.kubeconfig") }

func (a *Agent) pkiDir() string { return filepath.Join(a.cfg.DataDir, "pki") }

// Run joins the cluster and runs every part of the agent until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	if err := os.MkdirAll(a.pkiDir(), 0o700); err != nil {
		return fmt.Errorf("nodeagent: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctx = klog.NewContext(ctx, klog.Background())

	clientStore, err := certificate.NewFileStore("kubelet-client", a.pkiDir(), a.pkiDir(), "", "")
	if err != nil {
		return fmt.Errorf("nodeagent: client cert store: %w", err)
	}
	base, err := a.join(ctx, clientStore)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("nodeagent: join: %w", err)
	}

	// Client certificate rotation.
	var clientMgr certificate.Manager
	nodeConfig, err := certClientConfig(base, func() *tls.Certificate { return clientMgr.Current() })
	if err != nil {
		return fmt.Errorf("nodeagent: %w", err)
	}
	nodeConfig.UserAgent = "tether-agent/" + a.cfg.NodeName
	// kubelet's defaults (kubeAPIQPS 50, kubeAPIBurst 100): pod start-up
	// costs a TokenRequest, a ConfigMap read and status writes per pod.
	nodeConfig.QPS, nodeConfig.Burst = 50, 100
	nodeConfig.WarningHandler = rest.NoWarnings{}
	client, err := kubernetes.NewForConfig(nodeConfig)
	if err != nil {
		return fmt.Errorf("nodeagent: client: %w", err)
	}
	lifetime := a.lifetime()
	clientMgr, err = certificate.NewManager(&certificate.Config{
		ClientsetFn:                  func(*tls.Certificate) (kubernetes.Interface, error) { return client, nil },
		Template:                     clientTemplate(a.cfg.NodeName),
		SignerName:                   signerClient,
		Usages:                       []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
		CertificateStore:             clientStore,
		RequestedCertificateLifetime: lifetime,
		Name:                         "kubelet-client",
		Ctx:                          &ctx,
	})
	if err != nil {
		return fmt.Errorf("nodeagent: client cert manager: %w", err)
	}
	clientMgr.Start()
	defer clientMgr.Stop()

	// Serving certificate through a kubelet-serving CSR.
	servingStore, err := certificate.NewFileStore("kubelet-server", a.pkiDir(), a.pkiDir(), "", "")
	if err != nil {
		return fmt.Errorf("nodeagent: serving cert store: %w", err)
	}
	hostnames, ips := a.servingNames()
	servingMgr, err := certificate.NewManager(&certificate.Config{
		ClientsetFn:                  func(*tls.Certificate) (kubernetes.Interface, error) { return client, nil },
		Template:                     servingTemplate(a.cfg.NodeName, hostnames, ips),
		SignerName:                   signerServing,
		Usages:                       []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth},
		CertificateStore:             servingStore,
		RequestedCertificateLifetime: lifetime,
		Name:                         "kubelet-serving",
		Ctx:                          &ctx,
	})
	if err != nil {
		return fmt.Errorf("nodeagent: serving cert manager: %w", err)
	}

	// Service proxy.
	svcProxy, err := servicenet.New(servicenet.Config{Client: client, Kernel: a.kernelConfig(), Logger: a.log.With("component", "service-proxy")})
	if err != nil {
		return fmt.Errorf("nodeagent: %w", err)
	}

	// Pod runtime.
	pods := newPodSync(a, client)
	pods.proxy = svcProxy
	var podNet *podNetwork
	var rtNet runtime.Network
	if a.cfg.PodNetwork == PodNetworkHost && a.cfg.ServiceProxy == ServiceProxyNftables {
		// Root with host-network pods: the cluster and service ranges still
		// get unreachable routes (a VIP without endpoints never leaves).
		if remove, err := a.hostUnreachable(); err != nil {
			return fmt.Errorf("nodeagent: %w", err)
		} else if remove != nil {
			defer remove()
		}
	}
	if a.cfg.PodNetwork == PodNetworkNetns {
		podNet = newPodNetwork(a, client)
		rtNet = podNet
		if a.cfg.StopPodsOnExit {
			defer podNet.close() // runs when Run returns, after every part stopped
		}
	}
	rt, err := runtime.New(runtime.Config{
		Network: rtNet,
		Dir:     a.cfg.DataDir, HostIP: a.cfg.NodeIP, OnChange: pods.enqueue,
		Env: pods.serviceEnv, PrepareVolumes: pods.prepareVolumes,
		EnvSource: envSource{client: client}, Event: pods.event, Allocatable: nodeCapacity(a.cfg.DataDir),
		BackoffBase: a.cfg.BackoffBase, BackoffMax: a.cfg.BackoffMax,
		StopPodsOnExit: a.cfg.StopPodsOnExit,
		Logger:         a.log.With("component", "runtime"),
	})
	if err != nil {
		return fmt.Errorf("nodeagent: %w", err)
	}
	pods.rt = rt

	provided, err := a.providedServingCert()
	if err != nil {
		return err
	}
	// Kubelet API.
	ln := a.cfg.KubeletListener
	if ln == nil {
		if ln, err = net.Listen("tcp", net.JoinHostPort(a.cfg.KubeletAddress, strconv.Itoa(a.cfg.KubeletPort))); err != nil {
			return fmt.Errorf("nodeagent: kubelet API: %w", err)
		}
	}
	a.mu.Lock()
	a.kaddr = ln.Addr()
	a.mu.Unlock()
	port := ln.Addr().(*net.TCPAddr).Port
	kapi, err := kubeletapi.New(kubeletapi.Config{
		NodeName: a.cfg.NodeName, Listener: ln, CipherSuites: a.cfg.TLSCipherSuites,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if provided != nil {
				return provided, nil
			}
			if c := servingMgr.Current(); c != nil {
				return c, nil
			}
			return nil, errors.New("no kubelet serving certificate yet (waiting for the kubelet-serving CSR)")
		},
		ClientCA:       a.caPEM,
		Authentication: client.AuthenticationV1(),
		Authorization:  client.AuthorizationV1(),
		Provider:       rt,
		Registry:       a.reg,
		Logger:         a.log.With("component", "kubelet-api"),
	})
	if err != nil {
		ln.Close()
		return fmt.Errorf("nodeagent: %w", err)
	}

	var wg sync.WaitGroup
	errc := make(chan error, 8)
	start := func(name string, run func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	start("service-proxy", svcProxy.Run)
	start("runtime", rt.Run)
	start("kubelet-api", kapi.Run)
	node := &nodeStatus{a: a, client: client, port: int32(port), kick: make(chan struct{}, 1)}
	if err := node.register(ctx); err != nil {
		cancel()
		wg.Wait()
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return fmt.Errorf("nodeagent: register node: %w", err)
	}
	// The serving CSR is made once the Node exists, so its SANs can be
	// checked against the Node's addresses.
	if provided == nil {
		servingMgr.Start()
		defer servingMgr.Stop()
	}
	start("node-status", node.run)
	start("lease", node.runLease)
	start("pods", pods.run)
	if podNet != nil {
		start("pod-network", podNet.run)
	}
	if a.cfg.Konnectivity != "off" {
		server := a.cfg.Konnectivity
		if server == "auto" {
			server = ""
		}
		var addrs []netip.Addr
		if ip, ok := netip.AddrFromSlice(a.cfg.NodeIP); ok {
			addrs = append(addrs, ip.Unmap())
		}
		tun, err := tunnel.New(tunnel.Config{Client: client, Server: server, NodeName: a.cfg.NodeName, Addresses: addrs,
			CertFile: filepath.Join(a.pkiDir(), "kubelet-client-current.pem"), CAPEM: a.caPEM,
			Logger: a.log.With("component", "konnectivity")})
		if err != nil {
			cancel()
			wg.Wait()
			return fmt.Errorf("nodeagent: %w", err)
		}
		start("konnectivity", tun.Run)
	}
	if a.cfg.SSHEndpoint != "" {
		ep, err := sshtunnel.NewNodeEndpoint(sshtunnel.NodeEndpointConfig{Client: client, NodeName: a.cfg.NodeName, Address: a.cfg.SSHEndpoint,
			HostKeyFile: filepath.Join(a.pkiDir(), "ssh_host_ed25519"), KubeletPort: port, Logger: a.log.With("component", "ssh-endpoint")})
		if err != nil {
			cancel()
			wg.Wait()
			return fmt.Errorf("nodeagent: %w", err)
		}
		start("ssh-endpoint", ep.Run)
	}
	a.once.Do(func() { close(a.ready) })
	a.log.Info("node agent running", "server", a.server, "kubelet", ln.Addr().String(), "nodeIP", a.cfg.NodeIP.String())

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		a.log.Error("node agent stopping", "err", runErr)
	}
	cancel()
	wg.Wait()
	return runErr
}

func (a *Agent) lifetime() *time.Duration {
	if a.cfg.CertificateLifetime <= 0 {
		return nil
	}
	d := a.cfg.CertificateLifetime
	return &d
}

// join makes sure the store holds a valid node client certificate and
// returns a server+CA-only rest.Config; it writes the node kubeconfig.
func (a *Agent) join(ctx context.Context, store certificate.Store) (*rest.Config, error) {
	caFile := filepath.Join(a.pkiDir(), "ca.crt")
	var provisioned, boot *rest.Config
	var err error
	if a.cfg.Kubeconfig != "" {
		if provisioned, err = loadKubeconfig(a.cfg.Kubeconfig); err != nil {
			return nil, err
		}
	}
	if a.cfg.BootstrapKubeconfig != "" {
		if boot, err = loadKubeconfig(a.cfg.BootstrapKubeconfig); err != nil {
			return nil, err
		}
	}
	server := a.cfg.Server
	for _, c := range []*rest.Config{provisioned, boot} {
		if server == "" && c != nil {
			server = c.Host
		}
	}
	if server == "" {
		return nil, errors.New("no hub address: pass --server (or a kubeconfig)")
	}
	// Trust: an explicit CA, the kubeconfig's CA, the CA saved at the
	// first join, or discovery pinned by hash.
	var caPEM []byte
	switch {
	case a.cfg.CACertFile != "" || (a.cfg.CACertHash != "" && a.cfg.Token != ""):
		if data, err := os.ReadFile(caFile); err == nil && a.cfg.CACertFile == "" {
			caPEM = data // already discovered at an earlier join
			break
		}
		for _, s := range append([]string{server}, a.cfg.Servers...) {
			if caPEM, err = discoverCA(ctx, s, a.cfg.CACertFile, a.cfg.CACertHash); err == nil {
				break
			}
		}
		if err != nil {
			return nil, err
		}
	case provisioned != nil:
		if caPEM, err = caPEMFromConfig(provisioned); err != nil {
			return nil, err
		}
	case boot != nil:
		if caPEM, err = caPEMFromConfig(boot); err != nil {
			return nil, err
		}
	default:
		if caPEM, err = os.ReadFile(caFile); err != nil {
			return nil, errors.New("no credentials: pass --kubeconfig, or --token with --ca-cert-hash (from `tether token create` on the hub)")
		}
	}
	if err := writeFile(caFile, caPEM, 0o644); err != nil {
		return nil, err
	}
	a.caPEM, a.server = caPEM, server
	base := &rest.Config{Host: server, TLSClientConfig: rest.TLSClientConfig{CAData: caPEM}}
	if err := a.failover(base, server); err != nil {
		return nil, err
	}

	if !validStoredCert(store, time.Now()) {
		switch {
		case provisioned != nil:
			certPEM, keyPEM, err := certPairFromConfig(provisioned)
			if err != nil {
				return nil, err
			}
			if _, err := store.Update(certPEM, keyPEM); err != nil {
				return nil, fmt.Errorf("store provisioned credentials: %w", err)
			}
			a.log.Info("using provisioned client credentials", "kubeconfig", a.cfg.Kubeconfig)
		case boot != nil || a.cfg.Token != "":
			bootCfg := rest.AnonymousClientConfig(base)
			if boot != nil {
				bootCfg = rest.CopyConfig(boot)
				bootCfg.Host = server
				bootCfg.Dial, bootCfg.TLSClientConfig.ServerName = base.Dial, base.TLSClientConfig.ServerName
			} else {
				bootCfg.BearerToken = a.cfg.Token
			}
			a.log.Info("TLS bootstrapping: requesting a node client certificate", "signer", signerClient)
			if err := retry(ctx, a.log, "TLS bootstrap", func() error {
				return bootstrapClientCert(ctx, bootCfg, a.cfg.NodeName, store, a.cfg.CertificateLifetime)
			}); err != nil {
				return nil, err
			}
			a.log.Info("TLS bootstrap complete: node client certificate issued")
		default:
			return nil, fmt.Errorf("the node client certificate in %s is missing or expired and no bootstrap credentials were given: create a bootstrap token on the hub (`tether token create`) and restart with --token and --ca-cert-hash, or pass --kubeconfig with fresh credentials", a.pkiDir())
		}
	}
	if err := a.writeNodeKubeconfig(server, caFile); err != nil {
		return nil, err
	}
	return base, nil
}

// writeNodeKubeconfig writes a kubeconfig that refers to the rotating
// kubelet-client-current.pem, as kubelet does.
func (a *Agent) writeNodeKubeconfig(server, caFile string) error {
	pair := filepath.Join(a.pkiDir(), "kubelet-client-current.pem")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["tether"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caFile}
	cfg.AuthInfos["node"] = &clientcmdapi.AuthInfo{ClientCertificate: pair, ClientKey: pair}
	cfg.Contexts["tether"] = &clientcmdapi.Context{Cluster: "tether", AuthInfo: "node"}
	cfg.CurrentContext = "tether"
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("node kubeconfig: %w", err)
	}
	return writeFile(a.NodeKubeconfig(), data, 0o600)
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// retry runs f with exponential backoff (1s..30s) until it succeeds or ctx
// ends.
func retry(ctx context.Context, log *slog.Logger, what string, f func() error) error {
	d := time.Second
	for {
		err := f()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn(what+" failed, retrying", "err", err, "in", d)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		d = min(2*d, 30*time.Second)
	}
}

// servingNames are the serving certificate's SANs: exactly the Node's
// Hostname and InternalIP addresses, so the hub can verify every SAN
// against the Node object before approving.
func (a *Agent) servingNames() ([]string, []net.IP) {
	return []string{a.cfg.NodeName}, []net.IP{a.cfg.NodeIP}
}

func defaultNodeIP() net.IP {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, addr := range addrs {
			if ipn, ok := addr.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() && !ipn.IP.IsLinkLocalUnicast() {
				return ipn.IP
			}
		}
	}
	return net.IPv4(127, 0, 0, 1)
}

// Package hub assembles the server role: PKI, storage (embedded or external
// etcd), the HTTPS API server and the hub's controllers, with one
// Run(ctx) that returns when ctx ends and leaves nothing running.
package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	restclient "k8s.io/client-go/rest"

	"github.com/tether-dev/tether/internal/apiserver"
	"github.com/tether-dev/tether/internal/apiserver/authz"
	"github.com/tether-dev/tether/internal/bootstraptoken"
	"github.com/tether-dev/tether/internal/controllers"
	"github.com/tether-dev/tether/internal/egress"
	"github.com/tether-dev/tether/internal/konnectivity/server"
	"github.com/tether-dev/tether/internal/leader"
	"github.com/tether-dev/tether/internal/pki"
	"github.com/tether-dev/tether/internal/storage"
	"github.com/tether-dev/tether/internal/tlspolicy"

	genericapiserver "k8s.io/apiserver/pkg/server"
)

// Config configures a hub. Zero values are documented per field.
type Config struct {
	// DataDir holds pki/, etcd/ and admin.kubeconfig. Required.
	DataDir string
	// BindAddress and SecurePort: where HTTPS is served; zero values
	// 0.0.0.0 and 6443.
	BindAddress net.IP
	SecurePort  int
	// AdvertiseAddress is published in the kubernetes Endpoints; zero value:
	// the machine's first non-loopback IPv4, or 127.0.0.1.
	AdvertiseAddress net.IP
	// ServiceClusterIPRange; zero value 10.96.0.0/12.
	ServiceClusterIPRange *net.IPNet
	// ClusterCIDR is the pod range; each Node gets a NodeCIDRMaskSize
	// (zero: /24) slice of it as spec.podCIDR. Zero value 10.244.0.0/16.
	ClusterCIDR      *net.IPNet
	NodeCIDRMaskSize int
	// EtcdServers: external etcd; empty means embedded etcd under DataDir/etcd.
	EtcdServers                           []string
	EtcdCAFile, EtcdCertFile, EtcdKeyFile string
	// AnonymousAuth: insecure, off by default.
	AnonymousAuth bool
	// Operator-provided PKI (optional; see pki.Options).
	CACertFile, CAKeyFile, ServingCertFile, ServingKeyFile, ServiceAccountKeyFile string
	// ClusterSigningDuration caps certificates issued for CSRs; zero value
	// one year.
	ClusterSigningDuration time.Duration
	// BootstrapTokens ("id.secret") are created at start with BootstrapTokenTTL
	// (zero: 24h) so nodes can join.
	BootstrapTokens   []string
	BootstrapTokenTTL time.Duration
	// Egress selects how the hub reaches the cluster network.
	Egress egress.Config
	// Konnectivity runs a Konnectivity server in the hub (egress through it).
	Konnectivity KonnectivityConfig
	// SSH configures the SSH tunneler when Egress.Mode is ssh.
	SSH SSHConfig
	// KubeletCertificateAuthority verifies kubelet serving certificates; zero
	// value: the cluster CA.
	KubeletCertificateAuthority string
	// InsecureKubeletTLS skips kubelet certificate verification (warns).
	InsecureKubeletTLS bool
	// CipherSuites for TLS 1.2 on the API and Konnectivity agent ports;
	// nil: tlspolicy.Default().
	CipherSuites []uint16
	// KubeletPreferredAddressTypes orders node addresses for kubelet dials.
	KubeletPreferredAddressTypes []corev1.NodeAddressType
	// ExtraSANs are more DNS names / IPs for the generated serving
	// certificate (a load balancer in front of several replicas).
	ExtraSANs []string
	// LeaderElection tunes the election of the controllers (see ha.go).
	LeaderElection LeaderElectionConfig
	// Listener overrides BindAddress:SecurePort (tests).
	Listener net.Listener
	Logger   *slog.Logger
}

// Hub is the server role.
type Hub struct {
	cfg           Config
	egress        *egress.Selector
	loopback      atomic.Pointer[kubernetes.Clientset]
	ready         chan struct{}
	readyOnce     sync.Once
	server        string
	etcdEndpoints []string
	sshKey        string      // hub SSH public key to publish (ssh egress)
	fail          func(error) // stops Run with a fatal error
	repl          atomic.Pointer[replicated]
}

// New validates cfg.
func New(cfg Config) (*Hub, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("hub: data dir is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.SecurePort == 0 {
		cfg.SecurePort = 6443
	}
	if cfg.BindAddress == nil {
		cfg.BindAddress = net.IPv4zero
	}
	if cfg.ServiceClusterIPRange == nil {
		_, cfg.ServiceClusterIPRange, _ = net.ParseCIDR("10.96.0.0/12")
	}
	if cfg.AdvertiseAddress == nil {
		cfg.AdvertiseAddress = apiserver.DefaultAdvertiseAddress()
	}
	warnInsecureEtcd(cfg)
	if weak := tlspolicy.Weak(cfg.CipherSuites); len(weak) > 0 {
		cfg.Logger.Warn("INSECURE: TLS 1.2 cipher suites without forward secrecy or AEAD are enabled by --tls-cipher-suites", "suites", weak)
	}
	return &Hub{cfg: cfg, ready: make(chan struct{})}, nil
}

// Ready is closed once the API serves and the bootstrap objects exist.
func (h *Hub) Ready() <-chan struct{} { return h.ready }

// AdminKubeconfig is the path of the admin kubeconfig (valid once Ready).
func (h *Hub) AdminKubeconfig() string { return filepath.Join(h.cfg.DataDir, "admin.kubeconfig") }

// EtcdEndpoints are the etcd client URLs in use (valid once Ready).
func (h *Hub) EtcdEndpoints() []string { return h.etcdEndpoints }

// Server is the URL clients on this machine use (valid once Ready).
func (h *Hub) Server() string { return h.server }

// ServiceIP returns the ClusterIP of the `kubernetes` Service: the first
// host address of the service range.
func ServiceIP(cidr *net.IPNet) net.IP {
	base := new(big.Int).SetBytes(cidr.IP.Mask(cidr.Mask))
	v := new(big.Int).Add(base, big.NewInt(1)).Bytes()
	ip := make(net.IP, len(cidr.IP.Mask(cidr.Mask)))
	copy(ip[len(ip)-len(v):], v)
	return ip
}

// Run starts everything and blocks until ctx ends.
func (h *Hub) Run(ctx context.Context) error {
	if err := os.MkdirAll(h.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	log := h.cfg.Logger
	serviceIP := ServiceIP(h.cfg.ServiceClusterIPRange)
	hosts := []string{h.cfg.AdvertiseAddress.String(), serviceIP.String()}
	if !h.cfg.BindAddress.IsUnspecified() {
		hosts = append(hosts, h.cfg.BindAddress.String())
	}
	if hn, err := os.Hostname(); err == nil && hn != "" {
		hosts = append(hosts, hn)
	}
	hosts = append(hosts, h.cfg.ExtraSANs...)
	cluster, err := pki.EnsureCluster(pki.Options{
		Dir: filepath.Join(h.cfg.DataDir, "pki"), ServingHosts: hosts,
		CACertFile: h.cfg.CACertFile, CAKeyFile: h.cfg.CAKeyFile,
		ServingCertFile: h.cfg.ServingCertFile, ServingKeyFile: h.cfg.ServingKeyFile,
		ServiceAccountKeyFile: h.cfg.ServiceAccountKeyFile,
	})
	if err != nil {
		return fmt.Errorf("hub: %w", err)
	}

	servingChain, err := h.servingChain(cluster)
	if err != nil {
		return err
	}
	var konn *konnectivity
	if h.cfg.Konnectivity.Enabled {
		konn, err = h.newKonnectivity(cluster, servingChain, func(name string) (*corev1.Node, error) {
			c := h.loopback.Load()
			if c == nil {
				return nil, fmt.Errorf("hub is starting")
			}
			return c.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		})
		if err != nil {
			return err
		}
		h.cfg.Egress.Mode = egress.ModeKonnectivity
		h.cfg.Egress.Konnectivity = konn.dialer()
	}
	var tunneler interface{ Run(context.Context) error }
	needSSH, err := egress.NeedsSSH(h.cfg.Egress)
	if err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	if needSSH && h.cfg.Egress.SSH == nil {
		t, key, err := h.newSSHTunneler()
		if err != nil {
			return err
		}
		tunneler, h.sshKey, h.cfg.Egress.SSH = t, key, t
	}
	if h.egress, err = egress.New(h.cfg.Egress); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	defer h.egress.Close()
	if h.egress.Mode("cluster") == egress.ModeSSH {
		log.Warn("SSH tunnels are deprecated; prefer --egress=konnectivity")
	}

	errc := make(chan error, 4)
	etcdServers := h.cfg.EtcdServers
	if len(etcdServers) == 0 {
		member, err := storage.New(storage.Config{DataDir: filepath.Join(h.cfg.DataDir, "etcd"), LogFile: filepath.Join(h.cfg.DataDir, "etcd.log"), Logger: log})
		if err != nil {
			return err
		}
		// etcd outlives the API server: it stops only after Run's deferred
		// wait, so the API server never loses its store while draining.
		etcdCtx, stopEtcd := context.WithCancel(context.Background())
		etcdDone := make(chan struct{})
		defer func() {
			stopEtcd()
			<-etcdDone
		}()
		go func() {
			defer close(etcdDone)
			if err := member.Run(etcdCtx); err != nil {
				errc <- err
			}
		}()
		select {
		case <-member.Ready():
		case err := <-errc:
			return err
		case <-ctx.Done():
			return nil
		}
		etcdServers = member.Endpoints()
	}

	h.etcdEndpoints = etcdServers

	// Registered after etcd's, so these run first: controllers and the API
	// server stop before the store does.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	h.fail = func(err error) {
		select {
		case errc <- err:
		default:
		}
		cancel()
	}

	if tunneler != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := tunneler.Run(ctx); err != nil {
				errc <- fmt.Errorf("ssh tunneler: %w", err)
			}
		}()
	}
	if konn != nil {
		up := make(chan struct{})
		konn.listen.Ready = func(server.Addrs) { close(up) }
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := konn.srv.Run(ctx, konn.listen); err != nil {
				errc <- fmt.Errorf("konnectivity server: %w", err)
			}
		}()
		if err := waitSocket(ctx, konn.uds, up); err != nil {
			return err
		}
		log.Info("konnectivity server: agents connect here", "agents", konn.listen.AgentAddr, "frontend", konn.uds)
	}

	var port int
	srv, err := apiserver.New(apiserver.Config{
		Listener:    h.cfg.Listener,
		BindAddress: h.cfg.BindAddress, SecurePort: h.cfg.SecurePort, AdvertiseAddress: h.cfg.AdvertiseAddress,
		ServingCertFile: servingChain, ServingKeyFile: cluster.ServingKeyFile, ClientCAFile: cluster.CACertFile,
		EtcdServers: etcdServers, EtcdCAFile: h.cfg.EtcdCAFile, EtcdCertFile: h.cfg.EtcdCertFile, EtcdKeyFile: h.cfg.EtcdKeyFile,
		ServiceClusterIPRange: h.cfg.ServiceClusterIPRange, CipherSuites: h.cfg.CipherSuites,
		AnonymousAuth: h.cfg.AnonymousAuth,
		Build:         h.buildAuth(cluster, "https://"+net.JoinHostPort(h.cfg.AdvertiseAddress.String(), strconv.Itoa(h.cfg.SecurePort))+"/openid/v1/jwks"),
		PostStartHooks: map[string]genericapiserver.PostStartHookFunc{
			"tether-controllers": func(hc genericapiserver.PostStartHookContext) error {
				wg.Add(1)
				go func() {
					defer wg.Done()
					h.runControllers(hc.Context, hc.LoopbackClientConfig, cluster, serviceIP, port, konn)
				}()
				return nil
			},
		},
		PreShutdownHooks: map[string]genericapiserver.PreShutdownHookFunc{"tether-apiserver-lease": h.releaseLease},
		Logger:           log,
	})
	if err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	port = srv.Port()
	h.server = "https://" + net.JoinHostPort(clientHost(h.cfg.BindAddress, h.cfg.AdvertiseAddress).String(), strconv.Itoa(port))
	if err := pki.WriteKubeconfig(h.AdminKubeconfig(), pki.Kubeconfig{
		Server: h.server, CAPEM: cluster.CA.CertPEM, UserName: "tether-admin",
		CertPEM: cluster.AdminCertPEM, KeyPEM: cluster.AdminKeyPEM,
	}); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	log.Info("hub serving", "url", h.server, "advertise", h.cfg.AdvertiseAddress, "etcd", etcdServers, "kubeconfig", h.AdminKubeconfig())
	if err := srv.Run(ctx); err != nil && ctx.Err() == nil {
		return fmt.Errorf("hub: %w", err)
	}
	cancel()
	select {
	case err := <-errc:
		return err
	default:
	}
	return nil
}

// servingChain returns the serving certificate file the API server uses. A
// hub-issued certificate is served together with the cluster CA, so a
// joining node that pins the CA by its hash can verify the hub during the
// very first TLS handshake, before it sends any secret.
func (h *Hub) servingChain(cluster *pki.Cluster) (string, error) {
	if h.cfg.ServingCertFile != "" {
		return cluster.ServingCertFile, nil
	}
	leaf, err := os.ReadFile(cluster.ServingCertFile)
	if err != nil {
		return "", fmt.Errorf("hub: %w", err)
	}
	chain := filepath.Join(h.cfg.DataDir, "pki", "apiserver-chain.crt")
	tmp := chain + ".tmp"
	if err := os.WriteFile(tmp, append(append(leaf, '\n'), cluster.CA.CertPEM...), 0o644); err != nil {
		return "", fmt.Errorf("hub: %w", err)
	}
	if err := os.Rename(tmp, chain); err != nil {
		return "", fmt.Errorf("hub: %w", err)
	}
	return chain, nil
}

// retry runs fn until it succeeds or ctx ends.
func retry(ctx context.Context, log *slog.Logger, what string, fn func() error) {
	for ctx.Err() == nil {
		err := fn()
		if err == nil {
			return
		}
		log.Debug(what+" not ready", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// identity is the loopback connection with a client certificate instead of
// the privileged loopback token.
func identity(loopback *restclient.Config, certPEM, keyPEM []byte) *restclient.Config {
	c := restclient.CopyConfig(loopback)
	c.BearerToken = ""
	c.TLSClientConfig.CertData, c.TLSClientConfig.KeyData = certPEM, keyPEM
	return c
}

// clientHost is the address local clients use to reach the hub.
func clientHost(bind, advertise net.IP) net.IP {
	switch {
	case bind.IsUnspecified() && bind.To4() != nil:
		return net.IPv4(127, 0, 0, 1)
	case bind.IsUnspecified():
		return net.IPv6loopback
	}
	return bind
}

func (h *Hub) runControllers(ctx context.Context, loopback *restclient.Config, cluster *pki.Cluster, serviceIP net.IP, port int, konn *konnectivity) {
	log := h.cfg.Logger
	loopback = restclient.CopyConfig(loopback)
	loopback.WarningHandler = restclient.NoWarnings{}
	// The API server's own bootstrap (namespaces, the kubernetes Service,
	// RBAC policy) uses the loopback identity, as kube-apiserver does; the
	// controllers use their own certificates, so RBAC applies to them.
	client, err := kubernetes.NewForConfig(loopback)
	if err != nil {
		log.Error("controllers: client", "err", err)
		return
	}
	h.loopback.Store(client)
	// The RBAC bootstrap policy is written while the hub gets ready; the
	// controllers that depend on it start once it is in place.
	policyDone := make(chan struct{})
	go func() {
		defer close(policyDone)
		retry(ctx, log, "rbac bootstrap policy", func() error { return authz.ReconcilePolicy(ctx, client) })
	}()
	kcm, err := kubernetes.NewForConfig(identity(loopback, cluster.ControllerManagerCertPEM, cluster.ControllerManagerKeyPEM))
	if err != nil {
		log.Error("controllers: client", "err", err)
		return
	}
	schedClient, err := kubernetes.NewForConfig(identity(loopback, cluster.SchedulerCertPEM, cluster.SchedulerKeyPEM))
	if err != nil {
		log.Error("controllers: client", "err", err)
		return
	}
	meta, err := metadata.NewForConfig(identity(loopback, cluster.ControllerManagerCertPEM, cluster.ControllerManagerKeyPEM))
	if err != nil {
		log.Error("controllers: metadata client", "err", err)
		return
	}
	// Every replica keeps its API server Lease and the `kubernetes`
	// Endpoints; the other controllers run on the elected leader (ha.go).
	repl, boot, err := h.newReplicated(client, kcm, port, log)
	if err != nil {
		log.Error("controllers", "err", err)
		return
	}
	h.repl.Store(repl)
	if err := checkSharedKeys(ctx, client, cluster); err != nil {
		var mismatch *keyMismatchError
		if errors.As(err, &mismatch) {
			h.fail(fmt.Errorf("hub: %w", err))
			return
		}
		log.Warn("shared keys check", "err", err)
	}
	ns, err := controllers.NewNamespace(controllers.NamespaceConfig{Client: kcm, Metadata: meta, Logger: log})
	if err != nil {
		log.Error("controllers", "err", err)
		return
	}
	csr, err := controllers.NewCSR(controllers.CSRConfig{Client: kcm, CA: cluster.CA, SigningDuration: h.cfg.ClusterSigningDuration, Logger: log})
	if err != nil {
		log.Error("controllers", "err", err)
		return
	}
	sas, err := controllers.NewServiceAccounts(controllers.ServiceAccountsConfig{Client: kcm, CABundle: cluster.CA.CertPEM, Logger: log})
	if err != nil {
		log.Error("controllers", "err", err)
		return
	}
	tokens, err := bootstraptoken.NewController(bootstraptoken.ControllerConfig{Client: kcm, CAPEM: cluster.CA.CertPEM, Logger: log,
		Server: "https://" + net.JoinHostPort(h.cfg.AdvertiseAddress.String(), strconv.Itoa(port))})
	if err != nil {
		log.Error("controllers", "err", err)
		return
	}
	sched, err := controllers.NewScheduler(controllers.SchedulerConfig{Client: schedClient, Logger: log})
	if err != nil {
		log.Error("controllers", "err", err)
		return
	}
	lifecycle, err := controllers.NewNodeLifecycle(controllers.NodeLifecycleConfig{Client: kcm, Logger: log})
	if err != nil {
		log.Error("controllers", "err", err)
		return
	}
	ipam, err := h.newNodeIPAM(kcm)
	if err != nil {
		log.Error("controllers", "err", err)
		return
	}
	// First bootstrap pass before declaring the hub ready.
	retry(ctx, log, "bootstrap", func() error { return boot.Reconcile(ctx) })
	if konn != nil {
		retry(ctx, log, "konnectivity config map", func() error { return publishKonnectivity(ctx, client, konn.addr) })
	}
	retry(ctx, log, "hub discovery config map", func() error { return publishDiscovery(ctx, client, h.discovery(konnAddr(konn))) })
	if h.sshKey != "" {
		retry(ctx, log, "ssh hub key config map", func() error { return publishSSHKey(ctx, client, h.sshKey) })
	}
	for _, tok := range h.cfg.BootstrapTokens {
		ttl := h.cfg.BootstrapTokenTTL
		if ttl == 0 {
			ttl = 24 * time.Hour
		}
		if _, err := bootstraptoken.Create(ctx, client, bootstraptoken.Options{Token: tok, TTL: ttl, Description: "created by tether server --bootstrap-token"}); err != nil {
			log.Error("bootstrap token", "err", err)
		}
	}
	// Ready means every client can act: the RBAC policy must be in place.
	select {
	case <-policyDone:
	case <-ctx.Done():
		return
	}
	h.readyOnce.Do(func() { close(h.ready) })
	// Controllers that must run on exactly one replica at a time: add new
	// ones here.
	repl.run(ctx, boot, []leader.Controller{
		{Name: "namespace", Run: ns.Run}, {Name: "csr", Run: csr.Run}, {Name: "serviceaccounts", Run: sas.Run},
		{Name: "bootstrap-tokens", Run: tokens.Run}, {Name: "scheduler", Run: sched.Run}, {Name: "node-lifecycle", Run: lifecycle.Run},
		{Name: "node-ipam", Run: ipam.Run},
	}, log)
}

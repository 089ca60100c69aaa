package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	kagent "github.com/tether-dev/tether/internal/konnectivity/agent"
	"github.com/tether-dev/tether/internal/konnectivity/leases"
	kserver "github.com/tether-dev/tether/internal/konnectivity/server"
	"github.com/tether-dev/tether/internal/konnectivity/wire"
	"github.com/tether-dev/tether/internal/tlspolicy"
)

// konnectivityServerFlags mirrors upstream proxy-server's flags (same names
// and defaults) plus tether's own, which are marked as such in their help.
type konnectivityServerFlags struct {
	serverCert, serverKey, serverCACert    string
	clusterCert, clusterKey, clusterCACert string
	mode, udsName                          string
	deleteUDSFile                          bool
	serverPort, agentPort                  int
	serverBind, agentBind                  string
	healthPort, adminPort                  int
	healthBind, adminBind                  string
	keepaliveTime, frontendKeepalive       time.Duration
	enableProfiling, enableContention      bool
	serverID                               string
	serverCount                            int
	agentNamespace, agentSA, kubeconfig    string
	kubeconfigQPS                          float32
	kubeconfigBurst                        int
	apiContentType                         string
	authAudience                           string
	proxyStrategies                        string
	cipherSuites                           []string
	tlsMinVersion                          string
	xfrChannelSize                         int
	enableLeaseController                  bool
	leaseNamespace, leaseLabel             string
	gracefulShutdown, backendDialTimeout   time.Duration
	warnOnChannelLimit                     bool
	v                                      int
	logtostderr                            bool

	// tether extensions
	insecureAgentTCP, insecureFrontendTCP bool
	agentCNPrefix                         string
	headerTimeout                         time.Duration
	maxPendingDials, maxConnsPerAgent     int
	disableConnStreams                    bool
	disableRawConns                       bool
}

func defaultID(env string) string {
	if v := os.Getenv(env); v != "" {
		return v
	}
	return uuid.New().String()
}

func newKonnectivityServerCmd() *cobra.Command {
	cmd, _ := konnectivityServerCommand()
	return cmd
}

func konnectivityServerCommand() (*cobra.Command, *konnectivityServerFlags) {
	f := &konnectivityServerFlags{}
	cmd := &cobra.Command{
		Use:   "konnectivity-server",
		Short: "Konnectivity server: drop-in for upstream proxy-server (same flags), without head-of-line blocking",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := newLogger(f.v >= 4)
			cfg, lc, err := f.config(log)
			if err != nil {
				return err
			}
			s, err := kserver.New(cfg)
			if err != nil {
				return err
			}
			pub, err := f.leasePublisher(log)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			var wg sync.WaitGroup
			var pubErr error
			lc.Ready = func(a kserver.Addrs) {
				log.Info("konnectivity server ready", "serverID", s.ID(), "mode", lc.Mode, "uds", a.UDS,
					"frontend", addrString(a.Frontend), "agent", addrString(a.Agent), "health", addrString(a.Health), "admin", addrString(a.Admin))
				if pub != nil {
					log.Info("publishing server lease", "lease", f.leaseNamespace+"/"+pub.Name())
					wg.Go(func() { pubErr = pub.Run(ctx) })
				}
			}
			err = s.Run(ctx, lc)
			cancel()
			wg.Wait()
			return errors.Join(err, pubErr)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.serverCert, "server-cert", "", "If non-empty secure communication with this cert.")
	fl.StringVar(&f.serverKey, "server-key", "", "If non-empty secure communication with this key.")
	fl.StringVar(&f.serverCACert, "server-ca-cert", "", "If non-empty the CA we use to validate KAS clients.")
	fl.StringVar(&f.clusterCert, "cluster-cert", "", "If non-empty secure communication with this cert.")
	fl.StringVar(&f.clusterKey, "cluster-key", "", "If non-empty secure communication with this key.")
	fl.StringVar(&f.clusterCACert, "cluster-ca-cert", "", "If non-empty the CA we use to validate Agent clients.")
	fl.StringVar(&f.mode, "mode", "grpc", "mode can be either 'grpc' or 'http-connect'.")
	fl.StringVar(&f.udsName, "uds-name", "", "uds-name should be empty for TCP traffic. For UDS set to its name.")
	fl.BoolVar(&f.deleteUDSFile, "delete-existing-uds-file", true, "If true and if file UdsName already exists, delete the file before listen on that UDS file.")
	fl.IntVar(&f.serverPort, "server-port", 8090, "Port we listen for server connections on. Set to 0 for UDS.")
	fl.StringVar(&f.serverBind, "server-bind-address", "", "Bind address for server connections. If empty, we will bind to all interfaces.")
	fl.IntVar(&f.agentPort, "agent-port", 8091, "Port we listen for agent connections on.")
	fl.StringVar(&f.agentBind, "agent-bind-address", "", "Bind address for agent connections. If empty, we will bind to all interfaces.")
	fl.IntVar(&f.adminPort, "admin-port", 8095, "Port we listen for admin connections on.")
	fl.StringVar(&f.adminBind, "admin-bind-address", "127.0.0.1", "Bind address for admin connections. If empty, we will bind to localhost.")
	fl.IntVar(&f.healthPort, "health-port", 8092, "Port we listen for health connections on.")
	fl.StringVar(&f.healthBind, "health-bind-address", "", "Bind address for health connections. If empty, we will bind to all interfaces.")
	fl.DurationVar(&f.keepaliveTime, "keepalive-time", time.Hour, "Time for gRPC agent server keepalive.")
	fl.DurationVar(&f.frontendKeepalive, "frontend-keepalive-time", time.Hour, "Time for gRPC frontend server keepalive.")
	fl.BoolVar(&f.enableProfiling, "enable-profiling", false, "enable pprof at host:admin-port/debug/pprof")
	fl.BoolVar(&f.enableContention, "enable-contention-profiling", false, "Accepted for compatibility; block profiles are not enabled.")
	fl.StringVar(&f.serverID, "server-id", defaultID("PROXY_SERVER_ID"), "The unique ID of this server. Can also be set by the 'PROXY_SERVER_ID' environment variable.")
	fl.IntVar(&f.serverCount, "server-count", 1, "The number of proxy server instances, should be 1 unless it is an HA server.")
	fl.StringVar(&f.agentNamespace, "agent-namespace", "", "Expected agent's namespace during agent authentication (used with agent-service-account, authentication-audience, kubeconfig).")
	fl.StringVar(&f.agentSA, "agent-service-account", "", "Expected agent's service account during agent authentication (used with agent-namespace, authentication-audience, kubeconfig).")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "absolute path to the kubeconfig file (used with agent-namespace, agent-service-account, authentication-audience).")
	fl.Float32Var(&f.kubeconfigQPS, "kubeconfig-qps", 0, "Maximum client QPS (proxy server uses this client to authenticate agent tokens).")
	fl.IntVar(&f.kubeconfigBurst, "kubeconfig-burst", 0, "Maximum client burst (proxy server uses this client to authenticate agent tokens).")
	fl.StringVar(&f.apiContentType, "kube-api-content-type", "application/vnd.kubernetes.protobuf", "Content type of requests sent to apiserver.")
	fl.StringVar(&f.authAudience, "authentication-audience", "", "Expected agent's token authentication audience (used with agent-namespace, agent-service-account, kubeconfig).")
	fl.StringVar(&f.proxyStrategies, "proxy-strategies", "default", "The list of proxy strategies used by the server to pick an agent/tunnel: default, destHost, defaultRoute, and tether's nodeName (dial node-name:port).")
	fl.StringSliceVar(&f.cipherSuites, "cipher-suites", nil, "The comma separated list of allowed cipher suites. Has no effect on TLS1.3. Empty means allow default list.")
	fl.StringVar(&f.tlsMinVersion, "tls-min-version", "", "Minimum TLS version for server connections: VersionTLS12 or VersionTLS13. Empty defaults to VersionTLS12 (tether refuses older versions).")
	fl.IntVar(&f.xfrChannelSize, "xfr-channel-size", 10, "Accepted for compatibility; tether bounds per-connection buffers itself.")
	fl.BoolVar(&f.enableLeaseController, "enable-lease-controller", false, "Enable lease controller to publish and garbage collect proxy server leases.")
	fl.StringVar(&f.leaseNamespace, "lease-namespace", "kube-system", "The namespace where lease objects are managed by the controller.")
	fl.StringVar(&f.leaseLabel, "lease-label", "k8s-app=konnectivity-server", "The labels on which the lease objects are managed.")
	fl.DurationVar(&f.gracefulShutdown, "graceful-shutdown-timeout", 0, "Accepted for compatibility; open tunnels are closed at shutdown.")
	fl.DurationVar(&f.backendDialTimeout, "backend-dial-timeout", 0, "Timeout for a dial through an agent (DIAL_REQ to DIAL_RSP). 0 means tether's default of 10s (tether never waits forever).")
	fl.BoolVar(&f.warnOnChannelLimit, "warn-on-channel-limit", true, "Accepted for compatibility.")
	fl.IntVar(&f.v, "v", 0, "Log verbosity; 4 or more logs debug messages.")
	fl.BoolVar(&f.logtostderr, "logtostderr", true, "Accepted for compatibility; logs go to stderr.")
	fl.BoolVar(&f.insecureAgentTCP, "insecure-agent-tcp", false, "tether: allow a plaintext agent listener when --cluster-cert is not set (logs a warning).")
	fl.BoolVar(&f.insecureFrontendTCP, "insecure-frontend-tcp", false, "tether: allow a plaintext TCP frontend listener when --server-cert is not set (logs a warning).")
	fl.StringVar(&f.agentCNPrefix, "agent-cn-prefix", "", "tether: if set, agents must present a client certificate whose CN starts with this prefix.")
	fl.DurationVar(&f.headerTimeout, "http-connect-header-timeout", 10*time.Second, "tether: time allowed to read an HTTP CONNECT request's headers.")
	fl.IntVar(&f.maxPendingDials, "max-pending-dials-per-agent", 1000, "tether: dials in flight per agent stream before new dials are refused.")
	fl.IntVar(&f.maxConnsPerAgent, "max-connections-per-agent", 10000, "tether: established connections per agent stream before new dials are refused.")
	fl.BoolVar(&f.disableConnStreams, "disable-conn-streams", false, "tether: do not offer per-connection streams (upstream behaviour, head-of-line blocking).")
	fl.BoolVar(&f.disableRawConns, "disable-raw-conns", false, "tether: do not accept raw per-connection TLS connections from agents (they use per-connection streams).")
	return withConfig(cmd), f
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

func tlsMinVersion(s string) (uint16, error) {
	switch s {
	case "", "VersionTLS12":
		return tls.VersionTLS12, nil
	case "VersionTLS13":
		return tls.VersionTLS13, nil
	case "VersionTLS10", "VersionTLS11":
		return 0, fmt.Errorf("--tls-min-version %s: TLS below 1.2 is not supported", s)
	default:
		return 0, fmt.Errorf("--tls-min-version %q: want VersionTLS12 or VersionTLS13", s)
	}
}

func loadPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA %s: no PEM certificates", path)
	}
	return pool, nil
}

// serverTLS builds an mTLS server config: cert/key serve, ca verifies clients.
func (f *konnectivityServerFlags) serverTLS(cert, key, ca, what string) (*tls.Config, error) {
	if cert == "" && key == "" {
		return nil, nil
	}
	if cert == "" || key == "" {
		return nil, fmt.Errorf("%s: certificate and key must be given together", what)
	}
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	minV, err := tlsMinVersion(f.tlsMinVersion)
	if err != nil {
		return nil, err
	}
	suites, err := tlspolicy.Parse("--cipher-suites", f.cipherSuites)
	if err != nil {
		return nil, err
	}
	c := &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: minV, CipherSuites: suites}
	if ca != "" {
		pool, err := loadPool(ca)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	} else {
		// Without a client CA, fall back to the system pool but still require
		// a verified client certificate: tether has no unauthenticated TLS mode.
		pool, err := x509.SystemCertPool()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return c, nil
}

func hostPort(bind string, port int) string {
	return net.JoinHostPort(bind, strconv.Itoa(port))
}

// config turns the flags into the server's configuration.
func (f *konnectivityServerFlags) config(log *slog.Logger) (kserver.Config, kserver.ListenConfig, error) {
	var cfg kserver.Config
	var lc kserver.ListenConfig
	strategies, err := kserver.ParseStrategies(f.proxyStrategies)
	if err != nil {
		return cfg, lc, err
	}
	if f.mode != kserver.ModeGRPC && f.mode != kserver.ModeHTTPConnect {
		return cfg, lc, fmt.Errorf("--mode %q: want grpc or http-connect", f.mode)
	}
	cfg = kserver.Config{Logger: log, ServerID: f.serverID, ServerCount: f.serverCount, Strategies: strategies,
		DialTimeout: f.backendDialTimeout, MaxPendingDialsPerAgent: f.maxPendingDials, MaxConnsPerAgent: f.maxConnsPerAgent,
		DisableConnStreams: f.disableConnStreams, DisableRawConns: f.disableRawConns}
	lc = kserver.ListenConfig{Mode: f.mode, KeepaliveTime: f.keepaliveTime, FrontendKeepaliveTime: f.frontendKeepalive,
		HTTPConnectHeaderTimeout: f.headerTimeout, EnableProfiling: f.enableProfiling, InsecureAgentTCP: f.insecureAgentTCP, InsecureFrontendTCP: f.insecureFrontendTCP}
	if f.udsName != "" {
		if !f.deleteUDSFile {
			if _, err := os.Stat(f.udsName); err == nil {
				return cfg, lc, fmt.Errorf("--uds-name %s exists and --delete-existing-uds-file=false", f.udsName)
			}
		}
		lc.UDSName = f.udsName
	} else if f.serverPort > 0 {
		lc.FrontendAddr = hostPort(f.serverBind, f.serverPort)
		if lc.FrontendTLS, err = f.serverTLS(f.serverCert, f.serverKey, f.serverCACert, "frontend TLS"); err != nil {
			return cfg, lc, err
		}
		if lc.FrontendTLS == nil && !f.insecureFrontendTCP {
			return cfg, lc, errors.New("frontend TCP listener needs --server-cert/--server-key (mutual TLS), or --uds-name, or --insecure-frontend-tcp")
		}
	}
	lc.AgentAddr = hostPort(f.agentBind, f.agentPort)
	if lc.AgentTLS, err = f.serverTLS(f.clusterCert, f.clusterKey, f.clusterCACert, "agent TLS"); err != nil {
		return cfg, lc, err
	}
	if lc.AgentTLS == nil && !f.insecureAgentTCP {
		return cfg, lc, errors.New("agent listener needs --cluster-cert/--cluster-key (and --cluster-ca-cert), or --insecure-agent-tcp")
	}
	if f.healthPort > 0 {
		lc.HealthAddr = hostPort(f.healthBind, f.healthPort)
	}
	if f.adminPort > 0 {
		bind := f.adminBind
		if bind == "" {
			bind = "127.0.0.1"
		}
		lc.AdminAddr = hostPort(bind, f.adminPort)
	}
	if f.agentNamespace != "" || f.agentSA != "" || f.authAudience != "" {
		if f.agentNamespace == "" || f.agentSA == "" || f.authAudience == "" {
			return cfg, lc, errors.New("--agent-namespace, --agent-service-account and --authentication-audience must be set together")
		}
		cs, err := kubeClient(f.kubeconfig, f.apiContentType, f.kubeconfigQPS, f.kubeconfigBurst)
		if err != nil {
			return cfg, lc, fmt.Errorf("agent token authentication: %w", err)
		}
		cfg.Authenticator = kserver.TokenReviewAuthenticator{Client: cs, Namespace: f.agentNamespace, ServiceAccount: f.agentSA, Audience: f.authAudience}
	} else if f.agentCNPrefix != "" {
		prefix := f.agentCNPrefix
		cfg.Authenticator = kserver.CertAuthenticator{Allow: func(cn string) error {
			if !strings.HasPrefix(cn, prefix) {
				return fmt.Errorf("CN does not start with %q", prefix)
			}
			return nil
		}}
	}
	for _, w := range []struct {
		on  bool
		msg string
	}{
		{f.gracefulShutdown > 0, "--graceful-shutdown-timeout is accepted; tunnels are closed at shutdown"},
	} {
		if w.on {
			log.Warn(w.msg)
		}
	}
	return cfg, lc, nil
}

// kubeClient builds a client from a kubeconfig file, or in-cluster when path is "".
func kubeClient(path, contentType string, qps float32, burst int) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	if path != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", path)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, err
	}
	rc.QPS, rc.Burst, rc.ContentType = qps, burst, contentType
	return kubernetes.NewForConfig(rc)
}

// leasePublisher returns the server's lease publisher when
// --enable-lease-controller is set, else nil.
func (f *konnectivityServerFlags) leasePublisher(log *slog.Logger) (*leases.Publisher, error) {
	if !f.enableLeaseController {
		return nil, nil
	}
	lbls, err := leases.ParseLabels(f.leaseLabel)
	if err != nil {
		return nil, fmt.Errorf("--lease-label: %w", err)
	}
	cs, err := kubeClient(f.kubeconfig, f.apiContentType, f.kubeconfigQPS, f.kubeconfigBurst)
	if err != nil {
		return nil, fmt.Errorf("--enable-lease-controller: %w", err)
	}
	return leases.NewPublisher(leases.PublisherConfig{Client: cs, Namespace: f.leaseNamespace, ServerID: f.serverID, Labels: lbls, Logger: log})
}

// konnectivityAgentFlags mirrors upstream proxy-agent's flags plus tether's own.
type konnectivityAgentFlags struct {
	agentCert, agentKey, caCert       string
	proxyServerHost                   string
	proxyServerPort                   int
	alpnProtos                        []string
	healthHost                        string
	healthPort, adminPort             int
	adminBind                         string
	enableProfiling, enableContention bool
	agentID, agentIdentifiers         string
	syncInterval, probeInterval       time.Duration
	syncIntervalCap, keepaliveTime    time.Duration
	tokenPath                         string
	warnOnChannelLimit, syncForever   bool
	xfrChannelSize                    int
	countServerLeases                 bool
	leaseNamespace, leaseLabel        string
	serverCountSource                 string
	kubeconfig, apiContentType        string
	v                                 int
	logtostderr                       bool
	servers                           []string
	allowedCIDRs                      []string
	insecureTCP                       bool
	dialTimeout                       time.Duration
	maxConns, maxPending              int
	disableConnStreams                bool
	disableRawConns                   bool
	drainTimeout                      time.Duration
}

func newKonnectivityAgentCmd() *cobra.Command {
	f := &konnectivityAgentFlags{}
	cmd := &cobra.Command{
		Use:   "konnectivity-agent",
		Short: "Konnectivity agent: drop-in for upstream proxy-agent (same flags), connects to every server given",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := newLogger(f.v >= 4)
			cfg, err := f.config(log)
			if err != nil {
				return err
			}
			cfg.Ready = func(h, a net.Addr) {
				log.Info("konnectivity agent started", "agentID", cfg.AgentID, "servers", cfg.Servers, "health", addrString(h), "admin", addrString(a))
			}
			counter, err := f.leaseCounter(log)
			if err != nil {
				return err
			}
			drain := make(chan struct{})
			cfg.Drain = drain
			if counter != nil {
				cfg.ServerCount = counter.Count
			}
			a, err := kagent.New(cfg)
			if err != nil {
				return err
			}
			// The first SIGTERM drains (servers route no new dials here);
			// the agent then stops when its connections are gone, at
			// --drain-timeout, or at a second signal — as upstream does.
			ctx, stop := context.WithCancel(context.WithoutCancel(cmd.Context()))
			var wg sync.WaitGroup
			defer wg.Wait()
			defer stop()
			if counter != nil {
				wg.Go(func() { _ = counter.Run(ctx) })
			}
			wg.Go(func() {
				select {
				case <-ctx.Done():
					return
				case <-cmd.Context().Done():
				}
				sig := make(chan os.Signal, 1)
				signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
				defer signal.Stop(sig)
				close(drain)
				log.Info("draining: stopping once open connections end", "open", a.OpenConns(), "timeout", f.drainTimeout)
				deadline := time.NewTimer(f.drainTimeout)
				defer deadline.Stop()
				tick := time.NewTicker(100 * time.Millisecond)
				defer tick.Stop()
				for a.OpenConns() > 0 {
					select {
					case <-deadline.C:
						log.Warn("drain timeout: closing open connections", "open", a.OpenConns())
						stop()
						return
					case <-sig:
						stop()
						return
					case <-tick.C:
					}
				}
				stop()
			})
			return a.Run(ctx)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.agentCert, "agent-cert", "", "If non-empty secure communication with this cert.")
	fl.StringVar(&f.agentKey, "agent-key", "", "If non-empty secure communication with this key.")
	fl.StringVar(&f.caCert, "ca-cert", "", "If non-empty the CAs we use to validate clients.")
	fl.StringVar(&f.proxyServerHost, "proxy-server-host", "127.0.0.1", "The hostname to use to connect to the proxy-server.")
	fl.IntVar(&f.proxyServerPort, "proxy-server-port", 8091, "The port the proxy server is listening on.")
	fl.StringSliceVar(&f.alpnProtos, "alpn-proto", nil, "Additional ALPN protocols to be presented when connecting to the server.")
	fl.StringVar(&f.healthHost, "health-server-host", "", "The host address to listen on, without port.")
	fl.IntVar(&f.healthPort, "health-server-port", 8093, "The port the health server is listening on.")
	fl.IntVar(&f.adminPort, "admin-server-port", 8094, "The port the admin server is listening on.")
	fl.StringVar(&f.adminBind, "admin-bind-address", "127.0.0.1", "Bind address for admin connections. If empty, we will bind to all interfaces.")
	fl.BoolVar(&f.enableProfiling, "enable-profiling", false, "enable pprof at host:admin-server-port/debug/pprof")
	fl.BoolVar(&f.enableContention, "enable-contention-profiling", false, "Accepted for compatibility; block profiles are not enabled.")
	fl.StringVar(&f.agentID, "agent-id", defaultID("PROXY_AGENT_ID"), "The unique ID of this agent. Can also be set by the 'PROXY_AGENT_ID' environment variable. Default to a generated uuid if not set.")
	fl.DurationVar(&f.syncInterval, "sync-interval", time.Second, "The initial interval by which the agent periodically checks if it has connections to all instances of the proxy server.")
	fl.DurationVar(&f.probeInterval, "probe-interval", time.Second, "Accepted for compatibility; readiness follows the connections directly.")
	fl.DurationVar(&f.syncIntervalCap, "sync-interval-cap", 10*time.Second, "The maximum interval for the SyncInterval to back off to when unable to connect to the proxy server")
	fl.DurationVar(&f.keepaliveTime, "keepalive-time", time.Hour, "Time for gRPC agent server keepalive.")
	fl.StringVar(&f.tokenPath, "service-account-token-path", "", "If non-empty proxy agent uses this token to prove its identity to the proxy server.")
	fl.StringVar(&f.agentIdentifiers, "agent-identifiers", "", "Identifiers of the agent that will be used by the server when choosing agent, URL-encoded (e.g. host=node1&ipv4=10.0.0.5&cidr=10.0.0.0/24&default-route=true).")
	fl.BoolVar(&f.warnOnChannelLimit, "warn-on-channel-limit", false, "Accepted for compatibility.")
	fl.BoolVar(&f.syncForever, "sync-forever", false, "Accepted for compatibility; tether always keeps connections to every server.")
	fl.IntVar(&f.xfrChannelSize, "xfr-channel-size", 150, "Accepted for compatibility; tether bounds per-connection buffers itself.")
	fl.BoolVar(&f.countServerLeases, "count-server-leases", false, "Enables lease counting system to determine the number of proxy servers to connect to.")
	fl.StringVar(&f.leaseNamespace, "lease-namespace", "kube-system", "Namespace where lease objects are managed.")
	fl.StringVar(&f.leaseLabel, "lease-label", "k8s-app=konnectivity-server", "The labels on which the lease objects are managed.")
	fl.StringVar(&f.serverCountSource, "server-count-source", "default", "Defines how the server counts from lease and from server responses are combined. Possible values: 'default' to use only one source (server or leases depending on other flags), 'max' to take the larger value.")
	fl.DurationVar(&f.drainTimeout, "drain-timeout", 20*time.Second, "tether: after the first SIGTERM the agent drains and exits when its connections end or after this long (a second signal exits at once).")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "Path to the kubeconfig file")
	fl.StringVar(&f.apiContentType, "kube-api-content-type", "application/vnd.kubernetes.protobuf", "Content type of requests sent to apiserver.")
	fl.IntVar(&f.v, "v", 0, "Log verbosity; 4 or more logs debug messages.")
	fl.BoolVar(&f.logtostderr, "logtostderr", true, "Accepted for compatibility; logs go to stderr.")
	fl.StringSliceVar(&f.servers, "proxy-server-addresses", nil, "tether: comma-separated host:port list of proxy servers; the agent connects to every one (overrides --proxy-server-host/--proxy-server-port).")
	fl.StringSliceVar(&f.allowedCIDRs, "allowed-destination-cidrs", nil, "tether: if set, only dial destinations inside these CIDRs (names are resolved, the checked address is dialled).")
	fl.BoolVar(&f.insecureTCP, "insecure-tcp", false, "tether: connect to the proxy server without TLS (logs a warning).")
	fl.DurationVar(&f.dialTimeout, "dial-timeout", 10*time.Second, "tether: timeout for dialling an endpoint.")
	fl.IntVar(&f.maxConns, "max-connections", 10000, "tether: open endpoint connections before new dials are refused.")
	fl.IntVar(&f.maxPending, "max-pending-dials", 1000, "tether: endpoint dials in flight before new dials are refused.")
	fl.BoolVar(&f.disableConnStreams, "disable-conn-streams", false, "tether: do not offer per-connection streams (upstream behaviour).")
	fl.BoolVar(&f.disableRawConns, "disable-raw-conns", false, "tether: do not carry connections on raw TLS connections of their own (use per-connection streams).")
	return withConfig(cmd)
}

func (f *konnectivityAgentFlags) config(log *slog.Logger) (kagent.Config, error) {
	ids, err := wire.ParseIdentifiers(f.agentIdentifiers)
	if err != nil {
		return kagent.Config{}, fmt.Errorf("--agent-identifiers: %w", err)
	}
	cfg := kagent.Config{Logger: log, AgentID: f.agentID, Identifiers: ids, TokenPath: f.tokenPath,
		SyncInterval: f.syncInterval, SyncIntervalCap: f.syncIntervalCap, KeepaliveTime: f.keepaliveTime,
		DialTimeout: f.dialTimeout, MaxConns: f.maxConns, MaxPendingDials: f.maxPending,
		DisableConnStreams: f.disableConnStreams, DisableRawConns: f.disableRawConns, InsecureTCP: f.insecureTCP, EnableProfiling: f.enableProfiling}
	cfg.Servers = f.servers
	if len(cfg.Servers) == 0 {
		cfg.Servers = []string{hostPort(f.proxyServerHost, f.proxyServerPort)}
	}
	for _, c := range f.allowedCIDRs {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return cfg, fmt.Errorf("--allowed-destination-cidrs: %w", err)
		}
		cfg.AllowedDestinations = append(cfg.AllowedDestinations, p.Masked())
	}
	if f.healthPort > 0 {
		cfg.HealthAddr = hostPort(f.healthHost, f.healthPort)
	}
	if f.adminPort > 0 {
		cfg.AdminAddr = hostPort(f.adminBind, f.adminPort)
	}
	if !f.insecureTCP {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: append([]string{"h2"}, f.alpnProtos...)}
		if f.caCert != "" {
			if tc.RootCAs, err = loadPool(f.caCert); err != nil {
				return cfg, err
			}
		}
		if f.agentCert != "" || f.agentKey != "" {
			kp, err := tls.LoadX509KeyPair(f.agentCert, f.agentKey)
			if err != nil {
				return cfg, fmt.Errorf("--agent-cert/--agent-key: %w", err)
			}
			tc.Certificates = []tls.Certificate{kp}
		} else if f.tokenPath == "" {
			log.Warn("no --agent-cert and no --service-account-token-path: the server will refuse this agent unless it authenticates otherwise")
		}
		cfg.TLS = tc
	}
	cfg.ServerCountSource = f.serverCountSource
	return cfg, nil
}

// leaseCounter returns the lease counter when --count-server-leases is set, else nil.
func (f *konnectivityAgentFlags) leaseCounter(log *slog.Logger) (*leases.Counter, error) {
	if !f.countServerLeases {
		return nil, nil
	}
	cs, err := kubeClient(f.kubeconfig, f.apiContentType, 0, 0)
	if err != nil {
		return nil, fmt.Errorf("--count-server-leases: %w", err)
	}
	return leases.NewCounter(leases.CounterConfig{Client: cs, Namespace: f.leaseNamespace, Selector: f.leaseLabel, Logger: log})
}

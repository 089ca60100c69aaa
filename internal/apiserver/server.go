// Package apiserver is tether's Kubernetes-compatible HTTP API: discovery,
// OpenAPI, REST handlers with watch, tables, server-side apply, JSON and
// protobuf, all from k8s.io/apiserver's generic server, over HTTPS only with
// authentication and authorization always on. What kube-apiserver adds on
// top of that library (strategies, validation, defaulting, tables) lives in
// the registry subpackage.
package apiserver

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/sets"
	apimachineryversion "k8s.io/apimachinery/pkg/version"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/admission/plugin/namespace/lifecycle"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/group"
	"k8s.io/apiserver/pkg/authentication/request/anonymous"
	"k8s.io/apiserver/pkg/authentication/request/bearertoken"
	"k8s.io/apiserver/pkg/authentication/request/union"
	x509request "k8s.io/apiserver/pkg/authentication/request/x509"
	tokenunion "k8s.io/apiserver/pkg/authentication/token/union"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	authzunion "k8s.io/apiserver/pkg/authorization/union"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/apiserver/pkg/server/options"
	serverstorage "k8s.io/apiserver/pkg/server/storage"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	restclient "k8s.io/client-go/rest"
	"k8s.io/component-base/compatibility"

	"github.com/tether-dev/tether/internal/apiserver/openapi"
	"github.com/tether-dev/tether/internal/apiserver/registry"
	"github.com/tether-dev/tether/internal/tlspolicy"
	"github.com/tether-dev/tether/internal/version"
)

// Config configures the API server. Zero values are documented per field.
type Config struct {
	// Listener, if set, is used instead of BindAddress:SecurePort (tests).
	Listener net.Listener
	// BindAddress is the IP to listen on; zero value 0.0.0.0.
	BindAddress net.IP
	// SecurePort is the HTTPS port; zero value 6443.
	SecurePort int
	// AdvertiseAddress is the address published in the kubernetes Endpoints
	// and discovery; zero value: DefaultAdvertiseAddress().
	AdvertiseAddress net.IP
	// ServingCertFile/ServingKeyFile: the hub serving certificate (chain).
	// Required.
	ServingCertFile, ServingKeyFile string
	// CipherSuites for TLS 1.2; nil: tlspolicy.Default().
	CipherSuites []uint16
	// ClientCAFile verifies x509 client certificates. Required.
	ClientCAFile string
	// EtcdServers are etcd client URLs. Required.
	EtcdServers []string
	// EtcdCAFile, EtcdCertFile, EtcdKeyFile: TLS to etcd (optional).
	EtcdCAFile, EtcdCertFile, EtcdKeyFile string
	// EtcdPrefix is the key prefix; zero value "/registry".
	EtcdPrefix string
	// ServiceClusterIPRange is where service cluster IPs come from; zero
	// value 10.96.0.0/12.
	ServiceClusterIPRange *net.IPNet
	// NodePortFirst/NodePortLast bound node ports; zero values 30000–32767.
	NodePortFirst, NodePortLast int
	// APIAudiences are the audiences tokens must carry when the request names
	// none; zero value ["https://kubernetes.default.svc.cluster.local"].
	APIAudiences []string
	// AnonymousAuth allows unauthenticated requests as system:anonymous.
	// Insecure; off by default; logs a warning when on.
	AnonymousAuth bool
	// Build adds authentication, authorization, admission and extra
	// resources once the stores and the in-process informers exist.
	Build func(BuildContext) (Extensions, error)
	// PostStartHooks run once the server serves (controllers).
	PostStartHooks map[string]genericapiserver.PostStartHookFunc
	// PreShutdownHooks run when shutdown starts, while the server still
	// serves (a replica removing itself from the kubernetes Endpoints).
	PreShutdownHooks map[string]genericapiserver.PreShutdownHookFunc
	// Logger; zero value slog.Default().
	Logger *slog.Logger
}

// BuildContext is what Config.Build gets to work with.
type BuildContext struct {
	// Informers is started by the server once it serves; register what you
	// need before Build returns.
	Informers informers.SharedInformerFactory
	// Client is a privileged in-process (loopback) client.
	Client kubernetes.Interface
	// Stores are the generic stores by resource ("pods").
	Stores map[string]*genericregistry.Store
	// APIAudiences as configured.
	APIAudiences []string
}

// Extensions is what Config.Build adds.
type Extensions struct {
	// TokenAuthenticators check bearer tokens in order, after x509 client
	// certificates; TokenReview uses the same chain.
	TokenAuthenticators []authenticator.Token
	// Authorizers are consulted after the system:masters authorizer, in order.
	Authorizers []authzunion.NamedAuthorizer
	// Admission plugins run on every write, in order.
	Admission []admission.Interface
	// Storage adds resources or subresources ("serviceaccounts/token").
	Storage map[schema.GroupVersion]map[string]rest.Storage
	// RulesResolver answers SelfSubjectRulesReview (kubectl auth can-i
	// --list); nil leaves that API out.
	RulesResolver authorizer.RuleResolver
	// Handlers serve non-resource paths (e.g. /openid/v1/jwks); they are
	// behind authentication and authorization like everything else.
	Handlers map[string]http.Handler
}

// Server is a running API server.
type Server struct {
	cfg      Config
	port     int
	generic  *genericapiserver.GenericAPIServer
	loopback *restclient.Config
}

// New builds the API server; it listens once Run is called.
func New(cfg Config) (srv *Server, err error) {
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
	if cfg.NodePortFirst == 0 {
		cfg.NodePortFirst, cfg.NodePortLast = 30000, 32767
	}
	if len(cfg.APIAudiences) == 0 {
		cfg.APIAudiences = []string{"https://kubernetes.default.svc.cluster.local"}
	}
	if cfg.EtcdPrefix == "" {
		cfg.EtcdPrefix = "/registry"
	}
	if cfg.ServingCertFile == "" || cfg.ServingKeyFile == "" || cfg.ClientCAFile == "" {
		return nil, errors.New("apiserver: serving cert, key and client CA files are required")
	}
	if len(cfg.EtcdServers) == 0 {
		return nil, errors.New("apiserver: no etcd servers")
	}
	scheme, err := NewScheme()
	if err != nil {
		return nil, err
	}
	// Defaults are applied when a request is decoded, as in Kubernetes, so
	// dry runs, admission and server-side apply all see them.
	for _, r := range registry.Stored() {
		if def := r.Kind.Default; def != nil {
			scheme.AddTypeDefaultingFunc(r.New(), func(obj any) { def(obj.(runtime.Object)) })
		}
	}
	codecs := serializer.NewCodecFactory(scheme)
	gc := genericapiserver.NewRecommendedConfig(codecs)
	gc.EffectiveVersion = effectiveVersion{compatibility.NewEffectiveVersionFromString(version.Libraries, "", "")}
	gc.MaxRequestBodyBytes = 3 << 20
	gc.BuildHandlerChainFunc = func(h http.Handler, c *genericapiserver.Config) http.Handler {
		return genericapiserver.DefaultBuildHandlerChain(withPathChecks(h, c.Serializer), c)
	}

	ln := cfg.Listener
	if ln == nil {
		ln, err = net.Listen("tcp", net.JoinHostPort(cfg.BindAddress.String(), strconv.Itoa(cfg.SecurePort)))
		if err != nil {
			return nil, fmt.Errorf("apiserver: listen: %w", err)
		}
	}
	var cleanups []func()
	defer func() {
		if err != nil {
			ln.Close()
			for _, c := range cleanups {
				c()
			}
		}
	}()
	serving, err := dynamiccertificates.NewDynamicServingContentFromFiles("serving-cert", cfg.ServingCertFile, cfg.ServingKeyFile)
	if err != nil {
		return nil, fmt.Errorf("apiserver: serving cert: %w", err)
	}
	suites := cfg.CipherSuites
	if suites == nil {
		suites = tlspolicy.Default()
	}
	gc.SecureServing = &genericapiserver.SecureServingInfo{Listener: ln, Cert: serving, MinTLSVersion: tls.VersionTLS12, CipherSuites: suites}
	clientCA, err := dynamiccertificates.NewDynamicCAContentFromFile("client-ca", cfg.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("apiserver: client CA: %w", err)
	}
	if err := gc.Authentication.ApplyClientCert(clientCA, gc.SecureServing); err != nil {
		return nil, fmt.Errorf("apiserver: client CA: %w", err)
	}

	advertise := cfg.AdvertiseAddress
	if advertise == nil {
		advertise = DefaultAdvertiseAddress()
	}
	gc.PublicAddress = advertise
	port := ln.Addr().(*net.TCPAddr).Port
	gc.ExternalAddress = net.JoinHostPort(advertise.String(), strconv.Itoa(port))
	loopback, err := loopbackConfig(ln.Addr().(*net.TCPAddr), cfg.ClientCAFile)
	if err != nil {
		return nil, err
	}
	gc.LoopbackClientConfig = loopback
	quiet := restclient.CopyConfig(loopback)
	quiet.WarningHandler = restclient.NoWarnings{}
	client, err := kubernetes.NewForConfig(quiet)
	if err != nil {
		return nil, fmt.Errorf("apiserver: loopback client: %w", err)
	}
	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)

	external, err := externalScheme()
	if err != nil {
		return nil, err
	}
	namer := openapinamer.NewDefinitionNamer(external)
	gc.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(openapi.GetOpenAPIDefinitions, namer)
	gc.OpenAPIConfig.Info.Title = "Kubernetes"
	gc.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(openapi.GetOpenAPIDefinitions, namer)
	gc.OpenAPIV3Config.Info.Title = "Kubernetes"

	storageConfig := storagebackend.NewDefaultConfig(cfg.EtcdPrefix, nil)
	storageConfig.Transport.ServerList = cfg.EtcdServers
	storageConfig.Transport.TrustedCAFile = cfg.EtcdCAFile
	storageConfig.Transport.CertFile = cfg.EtcdCertFile
	storageConfig.Transport.KeyFile = cfg.EtcdKeyFile
	etcdOpts := options.NewEtcdOptions(storageConfig)
	etcdOpts.DefaultStorageMediaType = runtime.ContentTypeProtobuf
	resourceConfig := serverstorage.NewResourceConfig()
	for _, g := range groupVersions {
		resourceConfig.EnableVersions(g.gv)
	}
	storageFactory := serverstorage.NewDefaultStorageFactory(*storageConfig, runtime.ContentTypeProtobuf, codecs,
		serverstorage.NewDefaultResourceEncodingConfig(scheme), resourceConfig, map[schema.GroupResource]string{
			{Resource: "services"}: "services/specs",
			{Resource: "nodes"}:    "minions",
		})
	if err := etcdOpts.ApplyWithStorageFactoryTo(storageFactory, &gc.Config); err != nil {
		return nil, fmt.Errorf("apiserver: etcd: %w", err)
	}
	for name, hook := range cfg.PostStartHooks {
		if err := gc.AddPostStartHook(name, hook); err != nil {
			return nil, err
		}
	}
	gc.AddPostStartHookOrDie("tether-informers", func(hc genericapiserver.PostStartHookContext) error {
		factory.Start(hc.Done())
		return nil
	})

	etcdClient, err := newEtcdClient(cfg)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { etcdClient.Close() })
	ips, err := registry.NewIPAllocator(etcdClient, cfg.EtcdPrefix+"/tether/serviceips/", cfg.ServiceClusterIPRange)
	if err != nil {
		return nil, err
	}
	deps := registry.Deps{ServiceIPs: ips, NodePorts: registry.NewPortAllocator(etcdClient, cfg.EtcdPrefix+"/tether/nodeports/", cfg.NodePortFirst, cfg.NodePortLast)}
	repair := &registry.Repair{IPs: deps.ServiceIPs, NodePorts: deps.NodePorts, Logger: cfg.Logger,
		List: func(ctx context.Context) ([]corev1.Service, error) {
			l, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
			if err != nil {
				return nil, err
			}
			return l.Items, nil
		}}
	gc.AddPostStartHookOrDie("tether-service-allocation-repair", func(hc genericapiserver.PostStartHookContext) error {
		go func() { _ = repair.Run(hc) }()
		return nil
	})

	storage := map[schema.GroupVersion]map[string]rest.Storage{}
	add := func(gv schema.GroupVersion, path string, s rest.Storage) {
		if storage[gv] == nil {
			storage[gv] = map[string]rest.Storage{}
		}
		storage[gv][path] = s
	}
	stores := map[string]*genericregistry.Store{}
	statuses := map[string]*genericregistry.Store{}
	gvOf := map[string]schema.GroupVersion{}
	for _, r := range registry.Stored() {
		store, err := r.Store(scheme, gc.RESTOptionsGetter, getAttrs)
		if err != nil {
			return nil, err
		}
		add(r.GroupVersion, r.Plural, r.WithNames(store))
		stores[r.Plural] = store
		gvOf[r.Plural] = r.GroupVersion
		if r.Kind.HasStatus {
			statuses[r.Plural] = r.StatusStore(store)
			add(r.GroupVersion, r.Plural+"/status", registry.NewStatusREST(statuses[r.Plural]))
		}
	}
	for path, s := range registry.Special(stores, statuses, deps) {
		plural, _, _ := strings.Cut(path, "/")
		add(gvOf[plural], path, s)
	}

	var ext Extensions
	if cfg.Build != nil {
		ext, err = cfg.Build(BuildContext{Informers: factory, Client: client, Stores: stores, APIAudiences: cfg.APIAudiences})
		if err != nil {
			return nil, fmt.Errorf("apiserver: %w", err)
		}
	}
	var tokens authenticator.Token
	if len(ext.TokenAuthenticators) > 0 {
		tokens = tokenunion.New(ext.TokenAuthenticators...)
	}
	gc.Authentication.Authenticator = buildAuthenticator(cfg.AnonymousAuth, clientCA, tokens)
	gc.Authentication.APIAudiences = cfg.APIAudiences
	if gc.Authorization.Authorizer, err = buildAuthorizer(ext.Authorizers); err != nil {
		return nil, err
	}
	nsLifecycle, err := lifecycle.NewLifecycle(sets.New(metav1.NamespaceDefault, metav1.NamespaceSystem, metav1.NamespacePublic))
	if err != nil {
		return nil, fmt.Errorf("apiserver: namespace lifecycle: %w", err)
	}
	nsLifecycle.SetExternalKubeClientSet(client)
	nsLifecycle.SetExternalKubeInformerFactory(factory)
	if err := nsLifecycle.ValidateInitialization(); err != nil {
		return nil, fmt.Errorf("apiserver: namespace lifecycle: %w", err)
	}
	gc.AdmissionControl = admission.NewChainHandler(append([]admission.Interface{nsLifecycle}, ext.Admission...)...)
	for gv, m := range ext.Storage {
		for path, s := range m {
			add(gv, path, s)
		}
	}
	for gv, m := range registry.Reviews(tokens, gc.Authorization.Authorizer, ext.RulesResolver, cfg.APIAudiences) {
		for path, s := range m {
			add(gv, path, s)
		}
	}

	generic, err := gc.Complete().New("tether-apiserver", genericapiserver.NewEmptyDelegate())
	if err != nil {
		return nil, fmt.Errorf("apiserver: %w", err)
	}
	// Long-lived streams (exec, logs -f, agents' connections) must not hold a
	// stopping hub for the full request timeout.
	generic.ShutdownTimeout = 3 * time.Second
	if err := install(generic, scheme, codecs, storage); err != nil {
		return nil, err
	}
	for path, h := range ext.Handlers {
		generic.Handler.NonGoRestfulMux.Handle(path, h)
	}
	if cfg.AnonymousAuth {
		cfg.Logger.Warn("INSECURE: --anonymous-auth=true: unauthenticated requests are served as system:anonymous")
	}
	for name, hook := range cfg.PreShutdownHooks {
		if err := generic.AddPreShutdownHook(name, hook); err != nil {
			return nil, err
		}
	}
	generic.AddPreShutdownHookOrDie("close-etcd-client", func() error { return etcdClient.Close() })
	return &Server{cfg: cfg, port: port, generic: generic, loopback: loopback}, nil
}

func newEtcdClient(cfg Config) (*clientv3.Client, error) {
	cc := clientv3.Config{Endpoints: cfg.EtcdServers, DialTimeout: 20 * time.Second, Logger: zap.NewNop()}
	if cfg.EtcdCertFile != "" || cfg.EtcdCAFile != "" {
		tlsInfo := transport.TLSInfo{CertFile: cfg.EtcdCertFile, KeyFile: cfg.EtcdKeyFile, TrustedCAFile: cfg.EtcdCAFile}
		tc, err := tlsInfo.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("apiserver: etcd TLS: %w", err)
		}
		cc.TLS = tc
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("apiserver: etcd client: %w", err)
	}
	return cli, nil
}

func install(generic *genericapiserver.GenericAPIServer, scheme *runtime.Scheme, codecs serializer.CodecFactory, all map[schema.GroupVersion]map[string]rest.Storage) error {
	paramCodec := runtime.NewParameterCodec(scheme)
	groups := map[string]*genericapiserver.APIGroupInfo{}
	var order []string
	for _, g := range groupVersions {
		storage := all[g.gv]
		if len(storage) == 0 {
			continue
		}
		info, ok := groups[g.gv.Group]
		if !ok {
			i := genericapiserver.NewDefaultAPIGroupInfo(g.gv.Group, scheme, paramCodec, codecs)
			info = &i
			groups[g.gv.Group] = info
			order = append(order, g.gv.Group)
		}
		info.VersionedResourcesStorageMap[g.gv.Version] = storage
	}
	for _, group := range order {
		info := groups[group]
		var err error
		if group == "" {
			err = generic.InstallLegacyAPIGroup(genericapiserver.DefaultLegacyAPIPrefix, info)
		} else {
			err = generic.InstallAPIGroup(info)
		}
		if err != nil {
			return fmt.Errorf("apiserver: install group %q: %w", group, err)
		}
	}
	return nil
}

// Run serves until ctx ends, then shuts down gracefully.
func (s *Server) Run(ctx context.Context) error {
	prepared := s.generic.PrepareRun()
	return prepared.RunWithContext(ctx)
}

// Port is the HTTPS port the server listens on.
func (s *Server) Port() int { return s.port }

// LoopbackConfig is a privileged client config for in-process components.
func (s *Server) LoopbackConfig() *restclient.Config { return restclient.CopyConfig(s.loopback) }

func buildAuthenticator(anonymousAuth bool, clientCA dynamiccertificates.CAContentProvider, tokens authenticator.Token) authenticator.Request {
	chain := []authenticator.Request{x509request.NewDynamic(clientCA.VerifyOptions, x509request.CommonNameUserConversion)}
	if tokens != nil {
		chain = append(chain, bearertoken.New(tokens))
	}
	authn := group.NewAuthenticatedGroupAdder(union.New(chain...))
	if anonymousAuth {
		return union.NewFailOnError(authn, anonymous.NewAuthenticator(nil))
	}
	return authn
}

func buildAuthorizer(extra []authzunion.NamedAuthorizer) (authorizer.Authorizer, error) {
	chain := []authzunion.NamedAuthorizer{{AuthorizerName: "system:masters", Authorizer: authorizerfactory.NewPrivilegedGroups("system:masters")}}
	chain = append(chain, extra...)
	a, err := authzunion.New(chain...)
	if err != nil {
		return nil, fmt.Errorf("apiserver: authorizers: %w", err)
	}
	return a, nil
}

// loopbackConfig is the in-process client; Complete() registers its random
// bearer token as a system:masters identity.
func loopbackConfig(addr *net.TCPAddr, caFile string) (*restclient.Config, error) {
	token := make([]byte, 32)
	if _, err := rand.Read(token); err != nil {
		return nil, err
	}
	host := addr.IP
	if host.IsUnspecified() {
		host = net.IPv4(127, 0, 0, 1)
		if addr.IP.To4() == nil {
			host = net.IPv6loopback
		}
	}
	return &restclient.Config{
		Host:            "https://" + net.JoinHostPort(host.String(), strconv.Itoa(addr.Port)),
		BearerToken:     hex.EncodeToString(token),
		TLSClientConfig: restclient.TLSClientConfig{CAFile: caFile},
		QPS:             -1,
		Timeout:         0,
		ContentConfig:   restclient.ContentConfig{ContentType: runtime.ContentTypeProtobuf},
	}, nil
}

// externalScheme holds only the served versions, for OpenAPI names.
func externalScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	metav1.AddToGroupVersion(s, schema.GroupVersion{Version: "v1"})
	for _, g := range groupVersions {
		if err := g.add(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// DefaultAdvertiseAddress is the machine's first global IPv4 address, or
// 127.0.0.1 when it has none.
func DefaultAdvertiseAddress() net.IP {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
				return n.IP
			}
		}
	}
	return net.IPv4(127, 0, 0, 1)
}

// effectiveVersion reports tether's Kubernetes API level in /version while
// the libraries keep their own version for feature and API enablement.
type effectiveVersion struct {
	compatibility.EffectiveVersion
}

func (effectiveVersion) Info() *apimachineryversion.Info { return version.Info() }

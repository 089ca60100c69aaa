// Package kubeletapi serves the kubelet HTTPS API of a tether node:
// /healthz, /pods, /containerLogs, /exec, /attach, /portForward, /run and
// /metrics, with kubelet's streaming protocols (SPDY and WebSocket, from
// k8s.io/cri-streaming). Every request is authenticated (client certificate
// against the cluster CA, or a bearer token checked by TokenReview, cached)
// and authorized by SubjectAccessReview on nodes/<subresource> exactly as
// kubelet maps paths. Anonymous requests are refused; there is no read-only
// port.
package kubeletapi

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	authenticationv1 "k8s.io/client-go/kubernetes/typed/authentication/v1"
	authorizationv1 "k8s.io/client-go/kubernetes/typed/authorization/v1"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"github.com/tether-dev/tether/internal/nodeagent/runtime"
	"github.com/tether-dev/tether/internal/tlspolicy"
)

// Provider is what the API serves: the node's pods and their streams.
type Provider interface {
	Pods() []*corev1.Pod
	Logs(ctx context.Context, ns, pod, container string, opts runtime.LogOptions, w io.Writer) error
	remotecommand.Executor
	remotecommand.Attacher
	portforward.PortForwarder
}

// Config configures a Server. Zero values are documented per field.
type Config struct {
	// NodeName is the node whose nodes/<sub> permissions callers need.
	NodeName string
	// Listener to serve on; if nil, Address (zero: ":10250") is used.
	Listener net.Listener
	Address  string
	// GetCertificate returns the serving certificate (rotated in place).
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// CipherSuites for TLS 1.2; nil: tlspolicy.Default().
	CipherSuites []uint16
	// ClientCA is the PEM bundle client certificates must chain to.
	ClientCA []byte
	// TokenReview and SubjectAccessReview clients (the node's credentials).
	Authentication authenticationv1.AuthenticationV1Interface
	Authorization  authorizationv1.AuthorizationV1Interface
	// Authenticator / Authorizer override the delegating ones (tests).
	Authenticator authenticator.Request
	Authorizer    authorizer.Authorizer
	Provider      Provider
	// StreamIdleTimeout of exec/attach/port-forward; zero 4h.
	StreamIdleTimeout time.Duration
	// Registry for /metrics; nil: a private registry.
	Registry *prometheus.Registry
	Logger   *slog.Logger
}

// Server is the kubelet API server.
type Server struct {
	cfg      Config
	authn    authenticator.Request
	authz    authorizer.Authorizer
	handler  http.Handler
	requests *prometheus.CounterVec
	mu       sync.Mutex
	addr     net.Addr
}

// New validates cfg and builds the authenticators and handlers.
func New(cfg Config) (*Server, error) {
	if cfg.NodeName == "" || cfg.Provider == nil || cfg.GetCertificate == nil {
		return nil, errors.New("kubeletapi: node name, provider and serving certificate are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Address == "" {
		cfg.Address = ":10250"
	}
	if cfg.StreamIdleTimeout == 0 {
		cfg.StreamIdleTimeout = 4 * time.Hour
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	s := &Server{cfg: cfg, authn: cfg.Authenticator, authz: cfg.Authorizer}
	backoff := &wait.Backoff{Duration: 500 * time.Millisecond, Factor: 1.5, Jitter: 0.2, Steps: 5}
	if s.authn == nil {
		if len(cfg.ClientCA) == 0 {
			return nil, errors.New("kubeletapi: a client CA bundle is required")
		}
		ca, err := dynamiccertificates.NewStaticCAContent("cluster-ca", cfg.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("kubeletapi: client CA: %w", err)
		}
		authn, _, err := authenticatorfactory.DelegatingAuthenticatorConfig{
			TokenAccessReviewClient:            cfg.Authentication,
			TokenAccessReviewTimeout:           10 * time.Second,
			WebhookRetryBackoff:                backoff,
			CacheTTL:                           2 * time.Minute,
			ClientCertificateCAContentProvider: ca,
		}.New()
		if err != nil {
			return nil, fmt.Errorf("kubeletapi: authenticator: %w", err)
		}
		s.authn = authn
	}
	if s.authz == nil {
		if cfg.Authorization == nil {
			return nil, errors.New("kubeletapi: a SubjectAccessReview client is required")
		}
		authz, err := authorizerfactory.DelegatingAuthorizerConfig{
			SubjectAccessReviewClient: cfg.Authorization,
			AllowCacheTTL:             5 * time.Minute,
			DenyCacheTTL:              30 * time.Second,
			WebhookRetryBackoff:       backoff,
		}.New()
		if err != nil {
			return nil, fmt.Errorf("kubeletapi: authorizer: %w", err)
		}
		s.authz = authz
	}
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kubelet_http_requests_total", Help: "Number of HTTP requests to the kubelet API, by path prefix and status.",
	}, []string{"path", "code"})
	if err := cfg.Registry.Register(s.requests); err != nil {
		return nil, fmt.Errorf("kubeletapi: metrics: %w", err)
	}
	s.handler = s.withAuth(s.routes())
	return s, nil
}

// Handler returns the authenticated, authorized handler (tests).
func (s *Server) Handler() http.Handler { return s.handler }

// Addr is the listening address once Run has started listening.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Run serves HTTPS until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ln := s.cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.cfg.Address); err != nil {
			return fmt.Errorf("kubeletapi: listen: %w", err)
		}
	}
	s.mu.Lock()
	s.addr = ln.Addr()
	s.mu.Unlock()
	suites := s.cfg.CipherSuites
	if suites == nil {
		suites = tlspolicy.Default()
	}
	tlsConfig := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		CipherSuites:   suites,
		GetCertificate: s.cfg.GetCertificate,
		// Verification is the x509 authenticator's job, as in kubelet.
		ClientAuth: tls.RequestClientCert,
		NextProtos: []string{"h2", "http/1.1"},
	}
	srv := &http.Server{
		Handler:           s.handler,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 30 * time.Second,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(tls.NewListener(ln, tlsConfig)) }()
	s.cfg.Logger.Info("kubelet API serving", "addr", ln.Addr().String())
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		_ = srv.Close()
		<-errc
		return nil
	case err := <-errc:
		return fmt.Errorf("kubeletapi: %w", err)
	}
}

// ---- authentication and authorization ----

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Hijack is needed by the SPDY upgrade.
func (r *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := r.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("hijack not supported")
	}
	if r.code == 0 {
		r.code = http.StatusSwitchingProtocols
	}
	return h.Hijack()
}

func (s *Server) withAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			code := rec.code
			if code == 0 {
				code = http.StatusOK
			}
			s.requests.WithLabelValues(pathLabel(req.URL.Path), strconv.Itoa(code)).Inc()
		}()
		resp, ok, err := s.authn.AuthenticateRequest(req)
		if err != nil || !ok {
			if err != nil {
				s.cfg.Logger.Debug("kubelet API: authentication failed", "err", err, "remote", req.RemoteAddr)
			}
			writeStatus(rec, http.StatusUnauthorized, metav1.StatusReasonUnauthorized, "Unauthorized")
			return
		}
		for _, attrs := range Attributes(resp.User, req, s.cfg.NodeName) {
			decision, reason, err := s.authz.Authorize(req.Context(), attrs)
			if err != nil {
				s.cfg.Logger.Debug("kubelet API: authorization error", "err", err)
			}
			if decision == authorizer.DecisionAllow {
				next.ServeHTTP(rec, req)
				return
			}
			_ = reason
		}
		last := Attributes(resp.User, req, s.cfg.NodeName)
		a := last[len(last)-1]
		msg := fmt.Sprintf("Forbidden (user=%s, verb=%s, resource=%s, subresource(s)=[%s])", resp.User.GetName(), a.GetVerb(), a.GetResource(), subresources(last))
		writeStatus(rec, http.StatusForbidden, metav1.StatusReasonForbidden, msg)
	})
}

func subresources(attrs []authorizer.Attributes) string {
	var out []string
	for _, a := range attrs {
		out = append(out, a.GetSubresource())
	}
	return strings.Join(out, " ")
}

func pathLabel(p string) string {
	p = strings.TrimPrefix(p, "/")
	first, _, _ := strings.Cut(p, "/")
	switch first {
	case "healthz", "pods", "containerLogs", "exec", "attach", "portForward", "run", "metrics", "stats", "logs", "configz":
		return first
	}
	return "other"
}

func writeStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
	st := metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Message: msg, Reason: reason, Code: int32(code),
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(&st)
}

func jsonEncode(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }

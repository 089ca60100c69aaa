// Package check audits a live cluster's communication paths against the
// security advice of the Kubernetes "Communication between Nodes and the
// Control Plane" page (`tether check`). Every path is probed live with the
// admin's credentials — TLS handshakes, requests without credentials, reads
// of the objects that show how nodes, pods and the hub authenticate — and
// reported per finding with its state, evidence, risk and the exact fix.
// A check that cannot be carried out says "could not verify: …"; it is
// never reported as passing.
package check

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// State of one finding.
type State string

const (
	// Pass: probed, and the path is set up as the seed advises.
	Pass State = "pass"
	// Info: advice that holds for every cluster (nothing to fix here).
	Info State = "info"
	// Warn: weaker than advised (medium or low risk).
	Warn State = "warn"
	// Fail: insecure (high risk).
	Fail State = "fail"
	// Unknown: could not verify.
	Unknown State = "unknown"
)

// Risk of a finding that is not Pass.
type Risk string

const (
	RiskNone   Risk = "none"
	RiskLow    Risk = "low"
	RiskMedium Risk = "medium"
	RiskHigh   Risk = "high"
)

// Paths, in report order.
const (
	PathAPIServer  = "apiserver"
	PathNodeToHub  = "node-to-hub"
	PathPodToHub   = "pod-to-hub"
	PathHubKubelet = "hub-to-kubelet"
	PathHubProxy   = "hub-proxy"
	PathEgress     = "egress"
	PathRBAC       = "rbac"
)

// PathTitles names each path as the seed does.
var pathTitles = map[string]string{
	PathAPIServer:  "API server (clients → hub)",
	PathNodeToHub:  "Node → hub (kubelet client credentials)",
	PathPodToHub:   "Pod → hub (kubernetes Service, service-account tokens)",
	PathHubKubelet: "Hub → kubelet (logs, exec, port-forward)",
	PathHubProxy:   "Hub → node/pod/service proxy",
	PathEgress:     "Hub egress (direct, SSH tunnels, Konnectivity)",
	PathRBAC:       "RBAC on these paths",
}

var pathOrder = []string{PathAPIServer, PathNodeToHub, PathPodToHub, PathHubKubelet, PathHubProxy, PathEgress, PathRBAC}

// Finding is one checked statement about one path.
type Finding struct {
	Path  string `json:"path"`
	Check string `json:"check"`
	// Target is "hub", a node name, or an object the finding is about.
	Target string `json:"target"`
	// Node is set when the finding is about one node's side of the path.
	Node     string `json:"node,omitempty"`
	State    State  `json:"state"`
	Risk     Risk   `json:"risk"`
	Evidence string `json:"evidence"`
	Fix      string `json:"fix,omitempty"`
}

// Node is what the report knows about one node (for the diagram).
type Node struct {
	Name  string `json:"name"`
	Ready bool   `json:"ready"`
}

// Report is the result of a run.
type Report struct {
	Server   string    `json:"server"`
	Started  time.Time `json:"started"`
	Egress   string    `json:"egress"`
	Nodes    []Node    `json:"nodes"`
	Findings []Finding `json:"findings"`
}

// Config configures a Checker.
type Config struct {
	// REST is the admin's connection (from a kubeconfig). Required.
	REST *rest.Config
	// Timeout bounds each probe; zero value 10s.
	Timeout time.Duration
	// PendingCSRAge: a CSR pending longer is reported; zero value 15m.
	PendingCSRAge time.Duration
	// CertExpiryWarning: certificates expiring sooner are reported; zero
	// value 30 days.
	CertExpiryWarning time.Duration
	// Now is the clock; zero value time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Checker runs the checks.
type Checker struct {
	cfg    Config
	client kubernetes.Interface
	report Report
}

// New validates cfg.
func New(cfg Config) (*Checker, error) {
	if cfg.REST == nil {
		return nil, errors.New("check: no cluster connection (kubeconfig)")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.PendingCSRAge == 0 {
		cfg.PendingCSRAge = 15 * time.Minute
	}
	if cfg.CertExpiryWarning == 0 {
		cfg.CertExpiryWarning = 30 * 24 * time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	u, err := url.Parse(cfg.REST.Host)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("check: server %q is not a URL", cfg.REST.Host)
	}
	rc := rest.CopyConfig(cfg.REST)
	rc.Timeout = cfg.Timeout
	rc.WarningHandler = rest.NoWarnings{}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	return &Checker{cfg: cfg, client: client}, nil
}

// Run probes every path and returns the report. It returns an error only
// when ctx ends; everything else is a finding.
func (c *Checker) Run(ctx context.Context) (*Report, error) {
	c.report = Report{Server: c.cfg.REST.Host, Started: c.cfg.Now()}
	e := c.gather(ctx)
	for _, run := range []func(context.Context, *env){
		c.checkAPIServer, c.checkNodeToHub, c.checkPodToHub, c.checkHubToKubelet,
		c.checkHubProxy, c.checkEgress, c.checkRBAC,
	} {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		run(ctx, e)
	}
	c.report.Egress = e.egressMode()
	sort.SliceStable(c.report.Findings, func(i, j int) bool {
		return pathIndex(c.report.Findings[i].Path) < pathIndex(c.report.Findings[j].Path)
	})
	r := c.report
	return &r, nil
}

func pathIndex(p string) int {
	for i, q := range pathOrder {
		if q == p {
			return i
		}
	}
	return len(pathOrder)
}

// add records a finding.
func (c *Checker) add(f Finding) {
	if f.Target == "" {
		f.Target = "hub"
	}
	if f.State == Pass || f.State == Info {
		f.Risk = RiskNone
	}
	if f.State == Unknown && f.Risk == "" {
		f.Risk = RiskMedium
	}
	c.report.Findings = append(c.report.Findings, f)
}

// unknown records a check that could not be carried out.
func (c *Checker) unknown(path, check, target string, err error, fix string) {
	c.add(Finding{Path: path, Check: check, Target: target, State: Unknown,
		Evidence: "could not verify: " + explain(err), Fix: fix})
}

// HighRisk reports whether any finding fails with high risk.
func (r *Report) HighRisk() bool {
	for _, f := range r.Findings {
		if f.State == Fail && f.Risk == RiskHigh {
			return true
		}
	}
	return false
}

// Unverified reports whether any check could not be carried out.
func (r *Report) Unverified() bool {
	for _, f := range r.Findings {
		if f.State == Unknown {
			return true
		}
	}
	return false
}

// ExitCode: 0 all verified and no high-risk finding; 1 a high-risk finding;
// 2 no high-risk finding but some checks could not be verified (so an
// unreachable hub never gates green).
func (r *Report) ExitCode() int {
	switch {
	case r.HighRisk():
		return 1
	case r.Unverified():
		return 2
	}
	return 0
}

// worst orders states for summaries.
func worst(a, b State) State {
	rank := map[State]int{Pass: 0, Info: 1, Warn: 2, Unknown: 3, Fail: 4}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

// PathState is the worst state of path's findings that concern node (its
// own and the path-wide ones; node "" means all); "" when there are none.
func (r *Report) PathState(path, node string) State {
	var s State
	for _, f := range r.Findings {
		if f.Path != path || (node != "" && f.Node != "" && f.Node != node) {
			continue
		}
		if s == "" {
			s = f.State
		} else {
			s = worst(s, f.State)
		}
	}
	return s
}

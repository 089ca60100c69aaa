// Package leader runs a set of controllers on exactly one hub replica at a
// time, elected through a coordination.k8s.io Lease
// (k8s.io/client-go/tools/leaderelection), the way kube-controller-manager
// does. A replica that loses its lease stops its controllers and competes
// again; a replica that shuts down releases the lease so the next one takes
// over at once.
package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Controller is one controller run under the election: Run blocks until ctx
// ends.
type Controller struct {
	Name string
	Run  func(ctx context.Context) error
}

// Config configures an Elector. Zero values are documented per field.
type Config struct {
	// Client writes the Lease. Required.
	Client kubernetes.Interface
	// Identity names this replica in the Lease's holderIdentity; it must be
	// unique among replicas. Required.
	Identity string
	// Namespace and Name of the Lease; zero values kube-system and
	// tether-controller-manager.
	Namespace, Name string
	// LeaseDuration (zero 8s), RenewDeadline (zero 6s) and RetryPeriod
	// (zero 2s); shorter than kube-controller-manager's 15s/10s/2s so a
	// dead leader is replaced within 15s: at most LeaseDuration +
	// 2*RetryPeriod after its last renewal (12s with the zero values).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// OnLeading, if set, is called with true when this replica starts
	// leading and false when it stops (tests, metrics).
	OnLeading func(bool)
	Logger    *slog.Logger
}

// Elector runs controllers while it holds the Lease.
type Elector struct {
	cfg         Config
	mu          sync.Mutex
	controllers []Controller
	// leading is held while controllers run, so a new term never starts
	// before the previous term's controllers have stopped.
	leading sync.Mutex
}

// New validates cfg.
func New(cfg Config) (*Elector, error) {
	if cfg.Client == nil || cfg.Identity == "" {
		return nil, errors.New("leader: client and identity are required")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "kube-system"
	}
	if cfg.Name == "" {
		cfg.Name = "tether-controller-manager"
	}
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = 8 * time.Second
	}
	if cfg.RenewDeadline == 0 {
		cfg.RenewDeadline = 6 * time.Second
	}
	if cfg.RetryPeriod == 0 {
		cfg.RetryPeriod = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.LeaseDuration <= cfg.RenewDeadline || cfg.RenewDeadline <= cfg.RetryPeriod {
		return nil, fmt.Errorf("leader: need lease duration (%s) > renew deadline (%s) > retry period (%s)", cfg.LeaseDuration, cfg.RenewDeadline, cfg.RetryPeriod)
	}
	return &Elector{cfg: cfg}, nil
}

// Add registers a controller; it runs only while this replica leads. Call
// before Run.
func (e *Elector) Add(c Controller) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.controllers = append(e.controllers, c)
}

// Run competes for the Lease until ctx ends. Each time this replica wins,
// every registered controller runs until the lease is lost; then Run
// competes again.
func (e *Elector) Run(ctx context.Context) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metaFor(e.cfg.Namespace, e.cfg.Name),
		Client:     e.cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: e.cfg.Identity},
	}
	log := e.cfg.Logger.With("lease", e.cfg.Namespace+"/"+e.cfg.Name, "identity", e.cfg.Identity)
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   e.cfg.LeaseDuration,
			RenewDeadline:   e.cfg.RenewDeadline,
			RetryPeriod:     e.cfg.RetryPeriod,
			ReleaseOnCancel: true,
			Name:            e.cfg.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) { e.lead(ctx, log) },
				OnStoppedLeading: func() {},
				OnNewLeader: func(id string) {
					if id != e.cfg.Identity {
						log.Info("controllers: another replica leads", "leader", id)
					}
				},
			},
		})
		if err != nil {
			return fmt.Errorf("leader: %w", err)
		}
		// Run returns when ctx ends or the lease is lost; it cancels the
		// term's context, and lead stops every controller.
		le.Run(ctx)
	}
	e.leading.Lock() // wait for the last term's controllers
	e.leading.Unlock()
	return nil
}

// lead runs the controllers until ctx (the leadership) ends.
func (e *Elector) lead(ctx context.Context, log *slog.Logger) {
	e.leading.Lock()
	defer e.leading.Unlock()
	if ctx.Err() != nil {
		return
	}
	log.Info("controllers: this replica leads")
	if e.cfg.OnLeading != nil {
		e.cfg.OnLeading(true)
		defer e.cfg.OnLeading(false)
	}
	e.mu.Lock()
	cs := append([]Controller(nil), e.controllers...)
	e.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Run(ctx); err != nil && ctx.Err() == nil {
				log.Error("controller stopped", "controller", c.Name, "err", err)
			}
		}()
	}
	wg.Wait()
	log.Info("controllers: this replica stopped leading")
}

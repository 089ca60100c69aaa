// Package leases implements Konnectivity's lease-based server counting, as
// upstream apiserver-network-proxy does it: every server replica holds a
// coordination.k8s.io Lease named konnectivity-proxy-server-<serverID>,
// labelled (default k8s-app=konnectivity-server), renewed periodically and
// deleted at shutdown; expired leases with the label are garbage-collected.
// Agents count the unexpired leases to learn how many servers to connect to
// behind one load-balanced address.
package leases

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	coordlisters "k8s.io/client-go/listers/coordination/v1"
	"k8s.io/client-go/tools/cache"
)

// Upstream's defaults (cmd/server/app: LeaseDuration, LeaseRenewalInterval, LeaseGCInterval).
const (
	DefaultDuration = 30 * time.Second
	DefaultRenew    = 15 * time.Second
	DefaultGC       = 15 * time.Second
	// NamePrefix is prepended to the server ID to name its lease.
	NamePrefix = "konnectivity-proxy-server-"
)

// ParseLabels parses "k=v,k2=v2" into a label map (upstream's --lease-label format).
func ParseLabels(s string) (map[string]string, error) {
	set, err := labels.ConvertSelectorToLabelsMap(s)
	if err != nil {
		return nil, fmt.Errorf("lease labels %q: %w", s, err)
	}
	if len(set) == 0 {
		return nil, fmt.Errorf("lease labels %q: at least one label is required", s)
	}
	return set, nil
}

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	Client    kubernetes.Interface
	Namespace string
	// ServerID names the lease (NamePrefix+ServerID) and is its holder identity.
	ServerID string
	Labels   map[string]string
	// Duration, Renew and GCPeriod default to upstream's values.
	Duration, Renew, GCPeriod time.Duration
	Logger                    *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Publisher keeps this server's lease renewed and collects expired ones.
type Publisher struct {
	cfg  PublisherConfig
	name string
}

// NewPublisher validates cfg.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if cfg.Client == nil {
		return nil, errors.New("konnectivity leases: a Kubernetes client is required (--kubeconfig or in-cluster)")
	}
	if cfg.Namespace == "" || cfg.ServerID == "" || len(cfg.Labels) == 0 {
		return nil, errors.New("konnectivity leases: namespace, server ID and labels are required")
	}
	if cfg.Duration <= 0 {
		cfg.Duration = DefaultDuration
	}
	if cfg.Renew <= 0 {
		cfg.Renew = DefaultRenew
	}
	if cfg.Renew >= cfg.Duration {
		return nil, fmt.Errorf("konnectivity leases: renew interval %s must be shorter than the lease duration %s", cfg.Renew, cfg.Duration)
	}
	if cfg.GCPeriod <= 0 {
		cfg.GCPeriod = DefaultGC
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Publisher{cfg: cfg, name: NamePrefix + cfg.ServerID}, nil
}

// Name returns the lease name.
func (p *Publisher) Name() string { return p.name }

// Run renews the lease and collects expired ones until ctx ends, then
// deletes the lease so agents stop counting this server at once.
func (p *Publisher) Run(ctx context.Context) error {
	renew := time.NewTicker(p.cfg.Renew)
	defer renew.Stop()
	gc := time.NewTicker(p.cfg.GCPeriod)
	defer gc.Stop()
	if err := p.renew(ctx); err != nil && ctx.Err() == nil {
		p.cfg.Logger.Warn("konnectivity server lease", "lease", p.name, "err", err)
	}
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := p.cfg.Client.CoordinationV1().Leases(p.cfg.Namespace).Delete(dctx, p.name, metav1.DeleteOptions{})
			cancel()
			if err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("konnectivity leases: delete %s/%s: %w", p.cfg.Namespace, p.name, err)
			}
			return nil
		case <-renew.C:
			if err := p.renew(ctx); err != nil && ctx.Err() == nil {
				p.cfg.Logger.Warn("konnectivity server lease", "lease", p.name, "err", err)
			}
		case <-gc.C:
			if err := p.collect(ctx); err != nil && ctx.Err() == nil {
				p.cfg.Logger.Warn("konnectivity lease garbage collection", "err", err)
			}
		}
	}
}

func (p *Publisher) renew(ctx context.Context) error {
	c := p.cfg.Client.CoordinationV1().Leases(p.cfg.Namespace)
	now := metav1.NewMicroTime(p.cfg.Now())
	secs := int32(p.cfg.Duration / time.Second)
	holder := p.cfg.ServerID
	l, err := c.Get(ctx, p.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = c.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: p.cfg.Namespace, Labels: p.cfg.Labels},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &secs, AcquireTime: &now, RenewTime: &now},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	l.Labels = p.cfg.Labels
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &holder, &secs, &now
	_, err = c.Update(ctx, l, metav1.UpdateOptions{})
	return err
}

// collect deletes expired leases carrying the labels (other servers that
// died without deleting theirs). The delete is conditional on the
// resourceVersion, so a lease renewed meanwhile survives.
func (p *Publisher) collect(ctx context.Context) error {
	c := p.cfg.Client.CoordinationV1().Leases(p.cfg.Namespace)
	list, err := c.List(ctx, metav1.ListOptions{LabelSelector: labels.FormatLabels(p.cfg.Labels)})
	if err != nil {
		return err
	}
	now := p.cfg.Now()
	for i := range list.Items {
		l := &list.Items[i]
		if Valid(l, now) {
			continue
		}
		rv := l.ResourceVersion
		err := c.Delete(ctx, l.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return err
		}
		p.cfg.Logger.Info("deleted expired konnectivity server lease", "lease", l.Name)
	}
	return nil
}

// Valid reports whether a lease is unexpired at now (renewTime + duration).
func Valid(l *coordinationv1.Lease, now time.Time) bool {
	if l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return false
	}
	return l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second).After(now)
}

// CounterConfig configures a Counter.
type CounterConfig struct {
	Client    kubernetes.Interface
	Namespace string
	// Selector is a label selector ("k8s-app=konnectivity-server").
	Selector string
	Logger   *slog.Logger
	Now      func() time.Time
}

// Counter counts valid server leases from an informer cache.
type Counter struct {
	cfg      CounterConfig
	sel      labels.Selector
	factory  informers.SharedInformerFactory
	lister   coordlisters.LeaseLister
	synced   cache.InformerSynced
	mu       sync.Mutex
	fallback int
}

// NewCounter validates cfg.
func NewCounter(cfg CounterConfig) (*Counter, error) {
	if cfg.Client == nil {
		return nil, errors.New("konnectivity lease counting: a Kubernetes client is required (--kubeconfig or in-cluster)")
	}
	sel, err := labels.Parse(cfg.Selector)
	if err != nil {
		return nil, fmt.Errorf("konnectivity lease counting: selector %q: %w", cfg.Selector, err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	f := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 10*time.Second, informers.WithNamespace(cfg.Namespace))
	inf := f.Coordination().V1().Leases()
	c := &Counter{cfg: cfg, sel: sel, factory: f, lister: inf.Lister(), synced: inf.Informer().HasSynced, fallback: 1}
	return c, nil
}

// Run runs the informer until ctx ends.
func (c *Counter) Run(ctx context.Context) error {
	c.factory.Start(ctx.Done())
	<-ctx.Done()
	c.factory.Shutdown()
	return nil
}

// Count returns the number of unexpired leases matching the selector, at
// least 1. When listing fails it returns the last count (initially 1), as
// upstream does.
func (c *Counter) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.synced() {
		return c.fallback
	}
	ls, err := c.lister.Leases(c.cfg.Namespace).List(c.sel)
	if err != nil {
		c.cfg.Logger.Warn("could not list konnectivity server leases", "err", err)
		return c.fallback
	}
	now := c.cfg.Now()
	n := 0
	for _, l := range ls {
		if Valid(l, now) {
			n++
		}
	}
	if n == 0 {
		n = 1
	}
	c.fallback = n
	return n
}

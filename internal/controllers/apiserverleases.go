package controllers

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Labels and annotation of the per-replica API server Leases.
const (
	APIServerLeaseLabel      = "apiserver.kubernetes.io/identity"
	APIServerLeaseLabelValue = "tether-apiserver"
	APIServerAddressKey      = "tether.io/apiserver-address"
)

// APIServerLeasesConfig configures APIServerLeases.
type APIServerLeasesConfig struct {
	// Client writes Leases in kube-system. Required.
	Client kubernetes.Interface
	// Self is this replica's advertised address. Required.
	Self EndpointAddr
	// Identity is written as holderIdentity; zero value: the lease name.
	Identity string
	// LeaseDuration (zero 15s, as kube-apiserver's master leases) and
	// RenewInterval (zero 5s).
	LeaseDuration, RenewInterval time.Duration
	// OnChange is called after the set of live replicas changed (and after
	// this replica removed itself at shutdown), e.g. to rewrite the
	// `kubernetes` Endpoints at once.
	OnChange func(ctx context.Context)
	Logger   *slog.Logger
}

// APIServerLeases keeps one Lease per API server replica in kube-system,
// named after its address, and reports the replicas whose Lease has not
// expired — the lease-based endpoint reconciler of kube-apiserver, on
// coordination.k8s.io Leases.
type APIServerLeases struct {
	cfg      APIServerLeasesConfig
	name     string
	mu       sync.Mutex
	live     []EndpointAddr
	released bool // after Release, Sync no longer renews
}

// NewAPIServerLeases validates cfg.
func NewAPIServerLeases(cfg APIServerLeasesConfig) (*APIServerLeases, error) {
	if cfg.Client == nil || cfg.Self.IP == nil || cfg.Self.Port <= 0 {
		return nil, fmt.Errorf("apiserver leases: client and own address are required")
	}
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = 15 * time.Second
	}
	if cfg.RenewInterval == 0 {
		cfg.RenewInterval = 5 * time.Second
	}
	if cfg.RenewInterval >= cfg.LeaseDuration {
		return nil, fmt.Errorf("apiserver leases: renew interval %s must be shorter than the lease duration %s", cfg.RenewInterval, cfg.LeaseDuration)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	name := APIServerLeaseName(cfg.Self)
	if cfg.Identity == "" {
		cfg.Identity = name
	}
	return &APIServerLeases{cfg: cfg, name: name, live: []EndpointAddr{cfg.Self}}, nil
}

// APIServerLeaseName is the Lease name of the replica at a.
func APIServerLeaseName(a EndpointAddr) string {
	ip := strings.NewReplacer(".", "-", ":", "-").Replace(a.IP.String())
	return "tether-apiserver-" + strings.Trim(ip, "-") + "-" + strconv.Itoa(int(a.Port))
}

// Endpoints returns the live replicas (this one included), sorted.
func (l *APIServerLeases) Endpoints() []EndpointAddr {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.live)
}

// Run renews this replica's Lease and refreshes the live set every
// RenewInterval until ctx ends; then it deletes its own Lease so the others
// drop it from the Endpoints at once.
func (l *APIServerLeases) Run(ctx context.Context) error {
	t := time.NewTicker(l.cfg.RenewInterval)
	defer t.Stop()
	for {
		if err := l.Sync(ctx); err != nil && ctx.Err() == nil {
			l.cfg.Logger.Warn("apiserver lease", "err", err)
		}
		select {
		case <-ctx.Done():
			l.Release()
			return nil
		case <-t.C:
		}
	}
}

// Release deletes this replica's Lease and, if others are live, lets
// OnChange rewrite the Endpoints without it. It is safe to call more than
// once (shutdown hook, then Run's exit).
func (l *APIServerLeases) Release() {
	l.mu.Lock()
	l.released = true
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := l.cfg.Client.CoordinationV1().Leases(metav1.NamespaceSystem).Delete(ctx, l.name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		l.cfg.Logger.Debug("apiserver lease: release", "err", err)
		return
	}
	l.mu.Lock()
	l.live = slices.DeleteFunc(l.live, func(a EndpointAddr) bool { return a.IP.Equal(l.cfg.Self.IP) && a.Port == l.cfg.Self.Port })
	empty := len(l.live) == 0
	l.mu.Unlock()
	if l.cfg.OnChange != nil && !empty {
		l.cfg.OnChange(ctx)
	}
}

// Sync renews this replica's Lease once and recomputes the live set.
func (l *APIServerLeases) Sync(ctx context.Context) error {
	l.mu.Lock()
	released := l.released
	l.mu.Unlock()
	if released {
		return nil
	}
	leases := l.cfg.Client.CoordinationV1().Leases(metav1.NamespaceSystem)
	now := metav1.NewMicroTime(time.Now())
	secs := int32(l.cfg.LeaseDuration / time.Second)
	addr := net.JoinHostPort(l.cfg.Self.IP.String(), strconv.Itoa(int(l.cfg.Self.Port)))
	cur, err := leases.Get(ctx, l.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: l.name, Namespace: metav1.NamespaceSystem,
				Labels:      map[string]string{APIServerLeaseLabel: APIServerLeaseLabelValue},
				Annotations: map[string]string{APIServerAddressKey: addr}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &l.cfg.Identity, LeaseDurationSeconds: &secs, AcquireTime: &now, RenewTime: &now},
		}, metav1.CreateOptions{})
	case err == nil:
		cur.Spec.HolderIdentity, cur.Spec.LeaseDurationSeconds, cur.Spec.RenewTime = &l.cfg.Identity, &secs, &now
		if cur.Annotations == nil {
			cur.Annotations = map[string]string{}
		}
		cur.Annotations[APIServerAddressKey] = addr
		if cur.Labels == nil {
			cur.Labels = map[string]string{}
		}
		cur.Labels[APIServerLeaseLabel] = APIServerLeaseLabelValue
		_, err = leases.Update(ctx, cur, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("renew %s: %w", l.name, err)
	}
	list, err := leases.List(ctx, metav1.ListOptions{LabelSelector: APIServerLeaseLabel + "=" + APIServerLeaseLabelValue})
	if err != nil {
		return fmt.Errorf("list apiserver leases: %w", err)
	}
	live := []EndpointAddr{l.cfg.Self}
	for _, lease := range list.Items {
		a, ok := liveAddr(&lease, time.Now())
		if !ok || (a.IP.Equal(l.cfg.Self.IP) && a.Port == l.cfg.Self.Port) {
			continue
		}
		live = append(live, a)
	}
	slices.SortFunc(live, compareAddr)
	live = slices.CompactFunc(live, func(a, b EndpointAddr) bool { return compareAddr(a, b) == 0 })
	l.mu.Lock()
	changed := !slices.EqualFunc(live, l.live, func(a, b EndpointAddr) bool { return compareAddr(a, b) == 0 })
	l.live = live
	l.mu.Unlock()
	if changed {
		l.cfg.Logger.Info("apiserver replicas changed", "live", len(live))
		if l.cfg.OnChange != nil {
			l.cfg.OnChange(ctx)
		}
	}
	return nil
}

// liveAddr returns the address of a Lease that has not expired at now.
func liveAddr(lease *coordinationv1.Lease, now time.Time) (EndpointAddr, bool) {
	s := lease.Spec
	if s.RenewTime == nil || s.LeaseDurationSeconds == nil || now.After(s.RenewTime.Add(time.Duration(*s.LeaseDurationSeconds)*time.Second)) {
		return EndpointAddr{}, false
	}
	host, port, err := net.SplitHostPort(lease.Annotations[APIServerAddressKey])
	if err != nil {
		return EndpointAddr{}, false
	}
	ip := net.ParseIP(host)
	p, err := strconv.Atoi(port)
	if ip == nil || err != nil || p <= 0 || p > 65535 {
		return EndpointAddr{}, false
	}
	return EndpointAddr{IP: ip, Port: int32(p)}, true
}

func compareAddr(a, b EndpointAddr) int {
	if c := strings.Compare(string(a.IP.To16()), string(b.IP.To16())); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}

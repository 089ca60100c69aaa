package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Repair reconciles the service IP and node port allocations with the
// Services that hold them, as kube-apiserver's repair controllers do:
//
//   - an allocation whose owner Service does not hold the value (a hub died
//     between allocating and storing, or between deleting and releasing) is
//     released once it has been seen leaked, unchanged, in two passes at
//     least one interval apart — an allocation in flight is never older than
//     a request, and the release is conditional on the key's etcd revision,
//     which every allocation by the same owner bumps;
//   - a value a Service holds without an allocation (etcd restored from an
//     older snapshot) is recorded again, or reported if someone else holds it.
//
// It is safe to run on every hub replica: all writes are conditional.
type Repair struct {
	IPs, NodePorts *Allocator
	// List returns every Service with a consistent (quorum) read.
	List func(ctx context.Context) ([]corev1.Service, error)
	// Interval between passes; 0 means 3 minutes (kube-apiserver's).
	Interval time.Duration
	Logger   *slog.Logger

	suspects map[*Allocator]map[string]int64 // value → revision seen leaked
}

// Run repairs every Interval until ctx ends.
func (r *Repair) Run(ctx context.Context) error {
	if r.Interval <= 0 {
		r.Interval = 3 * time.Minute
	}
	t := time.NewTicker(r.Interval)
	defer t.Stop()
	for {
		if _, err := r.Pass(ctx); err != nil && ctx.Err() == nil {
			r.Logger.Warn("service allocation repair", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// RepairResult counts what one pass did.
type RepairResult struct {
	Released, Recorded, Conflicts, Suspects int
}

// Pass runs one repair pass.
func (r *Repair) Pass(ctx context.Context) (RepairResult, error) {
	var res RepairResult
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	if r.suspects == nil {
		r.suspects = map[*Allocator]map[string]int64{}
	}
	// Read the allocations before the Services: an allocation made after
	// this read is not judged in this pass.
	type snap struct {
		a    *Allocator
		recs map[string]record
	}
	var snaps []snap
	for _, a := range []*Allocator{r.IPs, r.NodePorts} {
		if a == nil {
			continue
		}
		recs, err := a.records(ctx)
		if err != nil {
			return res, err
		}
		snaps = append(snaps, snap{a, recs})
	}
	svcs, err := r.List(ctx)
	if err != nil {
		return res, fmt.Errorf("list services: %w", err)
	}
	held := map[*Allocator]map[string]string{}
	hold := func(a *Allocator, v, who string) {
		if a == nil || !a.Contains(v) {
			return
		}
		if held[a] == nil {
			held[a] = map[string]string{}
		}
		held[a][strings.TrimPrefix(a.key(v), a.prefix)] = who
	}
	for i := range svcs {
		s := &svcs[i]
		who := owner(s.Namespace, s.Name)
		for _, ip := range append([]string{s.Spec.ClusterIP}, s.Spec.ClusterIPs...) {
			if ip != "" && ip != corev1.ClusterIPNone {
				hold(r.IPs, ip, who)
			}
		}
		for _, p := range s.Spec.Ports {
			if p.NodePort > 0 {
				hold(r.NodePorts, strconv.Itoa(int(p.NodePort)), who)
			}
		}
	}
	var errs []error
	for _, sn := range snaps {
		a, prev := sn.a, r.suspects[sn.a]
		next := map[string]int64{}
		for v, rec := range sn.recs {
			if held[a][v] == rec.owner {
				continue
			}
			if rev, ok := prev[v]; ok && rev == rec.rev {
				ok, err := a.releaseUnchanged(ctx, v, rec.rev)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				if ok {
					res.Released++
					r.Logger.Info("released leaked allocation", "value", v, "owner", rec.owner)
				}
				continue
			}
			next[v] = rec.rev
		}
		r.suspects[a] = next
		res.Suspects += len(next)
		for v, who := range held[a] {
			if _, ok := sn.recs[v]; ok {
				continue
			}
			err := a.Allocate(ctx, v, who)
			switch {
			case err == nil:
				res.Recorded++
				r.Logger.Warn("recorded an allocation the allocator had lost", "value", v, "owner", who)
			case errors.Is(err, ErrAllocated):
				res.Conflicts++
				r.Logger.Error("value held by a Service is allocated to another owner; recreate one of the Services", "value", v, "service", who)
			default:
				errs = append(errs, err)
			}
		}
	}
	return res, errors.Join(errs...)
}

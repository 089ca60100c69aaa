package registry

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"math/rand/v2"
	"net"
	"strconv"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrFull means every value of an allocator's range is taken.
var ErrFull = errors.New("range is full")

// ErrAllocated means a requested value is already taken.
var ErrAllocated = errors.New("provided value is already allocated")

// Allocator hands out unique values (service cluster IPs, node ports) with
// etcd as the lock: a value belongs to whoever created its key first, so
// several hub replicas never hand out the same value.
type Allocator struct {
	cli    *clientv3.Client
	prefix string
	size   int64
	value  func(i int64) string
	index  func(v string) (int64, bool)
}

// NewIPAllocator allocates host addresses of cidr (not the network address,
// not the IPv4 broadcast address).
func NewIPAllocator(cli *clientv3.Client, prefix string, cidr *net.IPNet) (*Allocator, error) {
	ones, bits := cidr.Mask.Size()
	if bits-ones > 62 {
		ones = bits - 62
	}
	size := int64(1)<<(bits-ones) - 2
	if size <= 0 {
		return nil, fmt.Errorf("allocator: %s is too small", cidr)
	}
	base := new(big.Int).SetBytes(cidr.IP.Mask(cidr.Mask))
	width := len(cidr.IP.Mask(cidr.Mask))
	return &Allocator{cli: cli, prefix: prefix, size: size,
		value: func(i int64) string {
			v := new(big.Int).Add(base, big.NewInt(i+1)).Bytes()
			ip := make(net.IP, width)
			copy(ip[width-len(v):], v)
			return ip.String()
		},
		index: func(v string) (int64, bool) {
			ip := net.ParseIP(v)
			if ip == nil || !cidr.Contains(ip) {
				return 0, false
			}
			if width == 4 {
				ip = ip.To4()
			}
			// Compare as big integers: in a wide IPv6 range the offset
			// need not fit in an int64.
			off := new(big.Int).Sub(new(big.Int).SetBytes(ip), base)
			off.Sub(off, big.NewInt(1))
			if off.Sign() < 0 || off.Cmp(big.NewInt(size)) >= 0 {
				return 0, false
			}
			return off.Int64(), true
		},
	}, nil
}

// NewPortAllocator allocates ports in [first, last].
func NewPortAllocator(cli *clientv3.Client, prefix string, first, last int) *Allocator {
	return &Allocator{cli: cli, prefix: prefix, size: int64(last - first + 1),
		value: func(i int64) string { return strconv.FormatInt(int64(first)+i, 10) },
		index: func(v string) (int64, bool) {
			p, err := strconv.Atoi(v)
			// Only the canonical spelling ("30080", not "+30080" or
			// "030080"): values are keyed by their string.
			return int64(p - first), err == nil && p >= first && p <= last && strconv.Itoa(p) == v
		},
	}
}

// Contains reports whether v is in the allocator's range.
func (a *Allocator) Contains(v string) bool {
	_, ok := a.index(v)
	return ok
}

// key is where v's owner is stored: one key per value however v is
// spelled ("fd00::a" and "FD00:0::A" are the same address).
func (a *Allocator) key(v string) string {
	if i, ok := a.index(v); ok {
		return a.prefix + a.value(i)
	}
	return a.prefix + v
}

// Allocate reserves v for owner; ErrAllocated if someone else holds it.
func (a *Allocator) Allocate(ctx context.Context, v, owner string) error {
	_, err := a.allocate(ctx, v, owner)
	return err
}

// allocate is Allocate that also reports whether this call took v (true)
// or owner already held it (false). Only values a call took may be
// released when the operation that asked for them fails.
func (a *Allocator) allocate(ctx context.Context, v, owner string) (fresh bool, err error) {
	if !a.Contains(v) {
		return false, fmt.Errorf("%s is not in the allocator's range", v)
	}
	key := a.key(v)
	resp, err := a.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, owner)).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return false, fmt.Errorf("allocator: %w", err)
	}
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 1 && string(kvs[0].Value) == owner {
			// Touch the key: its revision changes, so a repair pass that
			// suspected it as leaked before this call will not release it.
			t, err := a.cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(key), "=", owner)).Then(clientv3.OpPut(key, owner)).Commit()
			if err != nil {
				return false, fmt.Errorf("allocator: %w", err)
			}
			if !t.Succeeded {
				return false, ErrAllocated
			}
			return false, nil
		}
		return false, ErrAllocated
	}
	return true, nil
}

// AllocateNext reserves a free value for owner, starting at a random offset.
func (a *Allocator) AllocateNext(ctx context.Context, owner string) (string, error) {
	start := rand.Int64N(a.size)
	for i := int64(0); i < a.size; i++ {
		v := a.value((start + i) % a.size)
		err := a.Allocate(ctx, v, owner)
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, ErrAllocated) {
			return "", err
		}
	}
	return "", ErrFull
}

// Free reports whether v looks free now (used for dry runs; no reservation).
func (a *Allocator) Free(ctx context.Context, v string) (bool, error) {
	resp, err := a.cli.Get(ctx, a.key(v), clientv3.WithCountOnly())
	if err != nil {
		return false, fmt.Errorf("allocator: %w", err)
	}
	return resp.Count == 0, nil
}

// Release frees v if owner holds it.
func (a *Allocator) Release(ctx context.Context, v, owner string) error {
	key := a.key(v)
	_, err := a.cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(key), "=", owner)).Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return fmt.Errorf("allocator: %w", err)
	}
	return nil
}

// Owners lists allocated values and their owners.
func (a *Allocator) Owners(ctx context.Context) (map[string]string, error) {
	recs, err := a.records(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(recs))
	for v, r := range recs {
		out[v] = r.owner
	}
	return out, nil
}

// record is one allocation and the etcd revision it was last written at.
type record struct {
	owner string
	rev   int64
}

func (a *Allocator) records(ctx context.Context) (map[string]record, error) {
	resp, err := a.cli.Get(ctx, a.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("allocator: %w", err)
	}
	out := make(map[string]record, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out[string(kv.Key[len(a.prefix):])] = record{owner: string(kv.Value), rev: kv.ModRevision}
	}
	return out, nil
}

// releaseUnchanged frees key v only if it was not written since rev.
func (a *Allocator) releaseUnchanged(ctx context.Context, v string, rev int64) (bool, error) {
	key := a.prefix + v
	resp, err := a.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return false, fmt.Errorf("allocator: %w", err)
	}
	return resp.Succeeded, nil
}

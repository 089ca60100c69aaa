// Package nodeipam is the hub's node IPAM controller (kube-controller-manager's
// "range allocator"): it gives every Node a pod CIDR (a /24 by default) out of
// the cluster CIDR and writes it to spec.podCIDR and spec.podCIDRs.
//
// The allocation state is not stored anywhere but in the Nodes themselves: at
// start the controller lists every Node and marks the CIDRs they carry as
// used before it allocates anything, so a restarted hub never hands out a
// CIDR twice; a deleted Node's CIDR becomes free again.
package nodeipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Config configures the controller. Zero values are documented per field.
type Config struct {
	Client kubernetes.Interface
	// ClusterCIDR is the range node pod CIDRs are cut from; required.
	ClusterCIDR netip.Prefix
	// NodeMaskSize is the prefix length of each node's pod CIDR; zero: 24
	// for IPv4, 64 for IPv6.
	NodeMaskSize int
	// Workers patching Nodes concurrently; zero: 30 (kube-controller-
	// manager's range allocator). One worker is bound by the latency of a
	// Patch: a few per second on a loaded hub, minutes of nodes without a
	// pod CIDR when thousands join.
	Workers int
	Logger  *slog.Logger
}

// maxSubnets bounds the allocation table (a /16 split into /24s is 256).
const maxSubnets = 1 << 16

// Controller allocates node pod CIDRs.
type Controller struct {
	cfg   Config
	log   *slog.Logger
	alloc *Allocator
}

// New validates cfg.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil {
		return nil, errors.New("nodeipam: client is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Workers < 0 {
		return nil, errors.New("nodeipam: negative worker count")
	}
	if cfg.Workers == 0 {
		cfg.Workers = 30
	}
	a, err := NewAllocator(cfg.ClusterCIDR, cfg.NodeMaskSize)
	if err != nil {
		return nil, err
	}
	return &Controller{cfg: cfg, log: cfg.Logger.With("controller", "nodeipam"), alloc: a}, nil
}

// Run allocates until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(c.cfg.Client, 0)
	inf := factory.Core().V1().Nodes().Informer()
	q := workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "nodeipam"})
	defer q.ShutDown()
	enqueue := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if n, ok := obj.(*corev1.Node); ok {
			q.Add(n.Name)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	}); err != nil {
		return fmt.Errorf("nodeipam: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil
	}
	// Rebuild the state from every Node before allocating anything.
	for _, obj := range inf.GetIndexer().List() {
		if n, ok := obj.(*corev1.Node); ok && n.Spec.PodCIDR != "" {
			c.occupy(n)
		}
	}
	stop := context.AfterFunc(ctx, q.ShutDown)
	defer stop()
	// The queue hands a node to one worker at a time; the Allocator is
	// safe for concurrent use.
	var wg sync.WaitGroup
	for range c.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				name, quit := q.Get()
				if quit {
					return
				}
				if err := c.sync(ctx, inf.GetIndexer(), name); err != nil && ctx.Err() == nil {
					c.log.Warn("pod CIDR allocation failed", "node", name, "err", err)
					q.AddRateLimited(name)
				} else {
					q.Forget(name)
				}
				q.Done(name)
			}
		}()
	}
	wg.Wait()
	return nil
}

func (c *Controller) occupy(n *corev1.Node) {
	p, err := netip.ParsePrefix(n.Spec.PodCIDR)
	if err != nil {
		c.log.Warn("node has an unparsable podCIDR", "node", n.Name, "podCIDR", n.Spec.PodCIDR)
		return
	}
	switch owner, err := c.alloc.Occupy(p, n.Name); {
	case errors.Is(err, ErrOutOfRange):
		c.log.Info("node podCIDR is outside the cluster CIDR; left alone", "node", n.Name, "podCIDR", p, "clusterCIDR", c.cfg.ClusterCIDR)
	case err != nil:
		c.log.Warn("node podCIDR already belongs to another node", "node", n.Name, "podCIDR", p, "owner", owner)
	}
}

func (c *Controller) sync(ctx context.Context, idx cache.Indexer, name string) error {
	obj, exists, err := idx.GetByKey(name)
	if err != nil {
		return err
	}
	if !exists {
		if p, ok := c.alloc.Release(name); ok {
			c.log.Info("released pod CIDR of deleted node", "node", name, "podCIDR", p)
		}
		return nil
	}
	n, ok := obj.(*corev1.Node)
	if !ok {
		return nil
	}
	if n.Spec.PodCIDR != "" {
		c.occupy(n)
		return nil
	}
	p, err := c.alloc.Allocate(name)
	if err != nil {
		return err
	}
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"podCIDR": p.String(), "podCIDRs": []string{p.String()}}})
	if err != nil {
		return err
	}
	// The UID precondition guards against a Node deleted and re-created
	// with the same name in between.
	patch, err = withUID(patch, n.UID)
	if err != nil {
		return err
	}
	if _, err := c.cfg.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "tether-nodeipam"}); err != nil {
		c.alloc.Release(name)
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil // the next event for this node decides again
		}
		return fmt.Errorf("set podCIDR %s: %w", p, err)
	}
	c.log.Info("allocated pod CIDR", "node", name, "podCIDR", p)
	return nil
}

func withUID(patch []byte, uid types.UID) ([]byte, error) {
	var m map[string]any
	if err := json.Unmarshal(patch, &m); err != nil {
		return nil, err
	}
	m["metadata"] = map[string]any{"uid": string(uid)}
	return json.Marshal(m)
}

// ---- allocation table ----

// ErrOutOfRange is returned by Occupy for CIDRs that are not node subnets of
// the cluster CIDR.
var ErrOutOfRange = errors.New("not a node subnet of the cluster CIDR")

// ErrFull is returned when every node subnet is in use.
var ErrFull = errors.New("nodeipam: cluster CIDR exhausted: every node subnet is allocated")

// Allocator hands out the node subnets of a cluster CIDR, lowest free first.
// It is safe for concurrent use.
type Allocator struct {
	cluster netip.Prefix
	bits    int
	n       int

	mu     sync.Mutex
	owner  map[int]string // subnet index → node
	byNode map[string]int
}

// NewAllocator splits cluster into subnets of length maskSize (zero: 24
// for IPv4, 64 for IPv6).
func NewAllocator(cluster netip.Prefix, maskSize int) (*Allocator, error) {
	if !cluster.IsValid() {
		return nil, errors.New("nodeipam: cluster CIDR is required")
	}
	cluster = cluster.Masked()
	if maskSize == 0 {
		maskSize = 24
		if cluster.Addr().Is6() {
			maskSize = 64
		}
	}
	if maskSize < cluster.Bits() || maskSize > cluster.Addr().BitLen() {
		return nil, fmt.Errorf("nodeipam: node mask /%d does not fit the cluster CIDR %s", maskSize, cluster)
	}
	if maskSize-cluster.Bits() > 16 {
		return nil, fmt.Errorf("nodeipam: cluster CIDR %s splits into more than %d node subnets of /%d", cluster, maxSubnets, maskSize)
	}
	return &Allocator{cluster: cluster, bits: maskSize, n: 1 << (maskSize - cluster.Bits()),
		owner: map[int]string{}, byNode: map[string]int{}}, nil
}

// subnet returns the i-th node subnet.
func (a *Allocator) subnet(i int) netip.Prefix {
	base := new(big.Int).SetBytes(a.cluster.Addr().AsSlice())
	off := new(big.Int).Lsh(big.NewInt(int64(i)), uint(a.cluster.Addr().BitLen()-a.bits))
	b := new(big.Int).Add(base, off).Bytes()
	raw := make([]byte, a.cluster.Addr().BitLen()/8)
	copy(raw[len(raw)-len(b):], b)
	addr, _ := netip.AddrFromSlice(raw)
	return netip.PrefixFrom(addr, a.bits)
}

// index returns p's subnet index, or false if p is not one of the subnets.
func (a *Allocator) index(p netip.Prefix) (int, bool) {
	if p.Bits() != a.bits || p.Addr().Is4() != a.cluster.Addr().Is4() || !a.cluster.Contains(p.Addr()) || p.Masked() != p {
		return 0, false
	}
	base := new(big.Int).SetBytes(a.cluster.Addr().AsSlice())
	v := new(big.Int).Sub(new(big.Int).SetBytes(p.Addr().AsSlice()), base)
	v.Rsh(v, uint(a.cluster.Addr().BitLen()-a.bits))
	return int(v.Int64()), true
}

// Occupy records that node holds p. It returns the other owner when p is
// taken already.
func (a *Allocator) Occupy(p netip.Prefix, node string) (string, error) {
	i, ok := a.index(p)
	if !ok {
		return "", ErrOutOfRange
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if o, taken := a.owner[i]; taken && o != node {
		return o, fmt.Errorf("nodeipam: %s is held by node %s", p, o)
	}
	if j, had := a.byNode[node]; had && j != i {
		delete(a.owner, j)
	}
	a.owner[i], a.byNode[node] = node, i
	return "", nil
}

// Allocate returns node's subnet, allocating the lowest free one.
func (a *Allocator) Allocate(node string) (netip.Prefix, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if i, ok := a.byNode[node]; ok {
		return a.subnet(i), nil
	}
	for i := range a.n {
		if _, taken := a.owner[i]; !taken {
			a.owner[i], a.byNode[node] = node, i
			return a.subnet(i), nil
		}
	}
	return netip.Prefix{}, ErrFull
}

// Release frees node's subnet.
func (a *Allocator) Release(node string) (netip.Prefix, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	i, ok := a.byNode[node]
	if !ok {
		return netip.Prefix{}, false
	}
	delete(a.byNode, node)
	delete(a.owner, i)
	return a.subnet(i), true
}

// Used returns how many subnets are allocated.
func (a *Allocator) Used() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.owner)
}

// PrefixFromIPNet converts a *net.IPNet (flags) to a netip.Prefix.
func PrefixFromIPNet(n *net.IPNet) (netip.Prefix, error) {
	if n == nil {
		return netip.Prefix{}, errors.New("nodeipam: nil CIDR")
	}
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("nodeipam: bad CIDR %s", n)
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(addr.Unmap(), ones).Masked(), nil
}

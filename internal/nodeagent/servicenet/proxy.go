// Package servicenet is the node's service proxy (kube-proxy's role): it
// watches ClusterIP Services and their Endpoints and forwards TCP
// connections made to ClusterIP:port to a ready endpoint, copying bytes both
// ways (TLS, e.g. to the API server through the `kubernetes` Service, stays
// end to end; nothing is terminated here).
//
// Two data paths: the kernel one (Config.Kernel, root only) programs
// nftables DNAT of ClusterIP:port to the endpoints for traffic from the
// pods (prerouting) and from the node (output), as kube-proxy's nftables
// mode does; the userspace one listens on each ClusterIP:port and copies
// bytes. The userspace path serves VIPs that are local addresses of the
// node (a loopback service range such as 127.96.0.0/16 always is); VIPs
// that are not local are reported as unavailable and skipped, never routed
// elsewhere.
package servicenet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Config configures a Proxy. Zero values are documented per field.
type Config struct {
	Client kubernetes.Interface
	// DialTimeout to endpoints; zero 10s.
	DialTimeout time.Duration
	// Kernel selects the nftables data path; nil: userspace.
	Kernel *Kernel
	Logger *slog.Logger
}

// Proxy forwards ClusterIP traffic to endpoints.
type Proxy struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	listeners map[string]*portProxy // "ip:port"
	serving   map[string]bool       // "ns/name" → at least one port served
	addrs     map[string]string     // "ns/name" → first served VIP:port
	active    map[net.Conn]struct{}
	changed   chan struct{}
	wg        sync.WaitGroup
	kernel    *kernelPath
}

type portProxy struct {
	ln       net.Listener
	key      string
	backends atomic.Pointer[[]string]
	next     atomic.Uint64
}

// New validates cfg.
func New(cfg Config) (*Proxy, error) {
	if cfg.Client == nil {
		return nil, errors.New("servicenet: client is required")
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Proxy{cfg: cfg, log: cfg.Logger, listeners: map[string]*portProxy{}, serving: map[string]bool{}, addrs: map[string]string{}, active: map[net.Conn]struct{}{}, changed: make(chan struct{})}, nil
}

// Serving reports whether Service ns/name has a working data path here.
func (p *Proxy) Serving(ns, name string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.serving[ns+"/"+name]
}

// Addr returns the VIP:port served for Service ns/name (its first TCP
// port with endpoints), if any.
func (p *Proxy) Addr(ns, name string) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, ok := p.addrs[ns+"/"+name]
	return a, ok
}

// Changed returns a channel closed at the next change of Serving.
func (p *Proxy) Changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// Run watches Services and Endpoints and proxies until ctx ends.
func (p *Proxy) Run(ctx context.Context) error {
	if p.cfg.Kernel != nil {
		k, err := newKernelPath(*p.cfg.Kernel)
		if err != nil {
			return err
		}
		p.kernel = k
		defer k.close()
		p.log.Info("service proxy: kernel data path (nftables)", "table", p.cfg.Kernel.Table)
	}
	factory := informers.NewSharedInformerFactory(p.cfg.Client, 0)
	svcInf := factory.Core().V1().Services().Informer()
	epInf := factory.Core().V1().Endpoints().Informer()
	kick := make(chan struct{}, 1)
	notify := func(any) {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	h := cache.ResourceEventHandlerFuncs{AddFunc: notify, UpdateFunc: func(_, o any) { notify(o) }, DeleteFunc: notify}
	if _, err := svcInf.AddEventHandler(h); err != nil {
		return fmt.Errorf("servicenet: %w", err)
	}
	if _, err := epInf.AddEventHandler(h); err != nil {
		return fmt.Errorf("servicenet: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	defer p.closeAll()
	if !cache.WaitForCacheSync(ctx.Done(), svcInf.HasSynced, epInf.HasSynced) {
		return nil
	}
	for {
		p.reconcile(svcInf.GetIndexer(), epInf.GetIndexer())
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		}
	}
}

// reconcile makes the listeners match the Services with Endpoints.
func (p *Proxy) reconcile(svcs, eps cache.Indexer) {
	want := map[string][]string{} // ip:port → backends
	owner := map[string]string{}
	for _, obj := range svcs.List() {
		svc, ok := obj.(*corev1.Service)
		if !ok || svc.Spec.Type != corev1.ServiceTypeClusterIP && svc.Spec.Type != "" {
			continue
		}
		ip := net.ParseIP(svc.Spec.ClusterIP)
		if ip == nil {
			continue
		}
		var ep *corev1.Endpoints
		if obj, ok, _ := eps.GetByKey(svc.Namespace + "/" + svc.Name); ok {
			ep, _ = obj.(*corev1.Endpoints)
		}
		for _, sp := range svc.Spec.Ports {
			if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
				continue
			}
			key := net.JoinHostPort(ip.String(), strconv.Itoa(int(sp.Port)))
			want[key] = backendsFor(ep, sp)
			owner[key] = svc.Namespace + "/" + svc.Name
		}
	}
	if p.kernel != nil {
		p.reconcileKernel(want, owner)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, pp := range p.listeners {
		if _, ok := want[key]; !ok {
			_ = pp.ln.Close()
			delete(p.listeners, key)
		}
	}
	serving, addrs := map[string]bool{}, map[string]string{}
	for key, backends := range want {
		pp, ok := p.listeners[key]
		if !ok {
			ln, err := net.Listen("tcp", key)
			if err != nil {
				p.log.Debug("service VIP not served on this node", "vip", key, "service", owner[key], "err", err)
				continue
			}
			pp = &portProxy{ln: ln, key: key}
			p.listeners[key] = pp
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.serve(pp)
			}()
			p.log.Info("proxying service", "service", owner[key], "vip", key)
		}
		b := backends
		pp.backends.Store(&b)
		serving[owner[key]] = serving[owner[key]] || len(backends) > 0
		if len(backends) > 0 && (addrs[owner[key]] == "" || key < addrs[owner[key]]) {
			addrs[owner[key]] = key
		}
	}
	p.addrs = addrs
	if !mapsEqual(serving, p.serving) {
		p.serving = serving
		close(p.changed)
		p.changed = make(chan struct{})
	}
}

// reconcileKernel programs the kernel data path for want.
func (p *Proxy) reconcileKernel(want map[string][]string, owner map[string]string) {
	if err := p.kernel.apply(targetsFrom(want)); err != nil {
		p.log.Error("service proxy: programming nftables failed", "err", err)
		return
	}
	serving, addrs := map[string]bool{}, map[string]string{}
	for key, backends := range want {
		o := owner[key]
		serving[o] = serving[o] || len(backends) > 0
		if len(backends) > 0 && (addrs[o] == "" || key < addrs[o]) {
			addrs[o] = key
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.addrs = addrs
	if !mapsEqual(serving, p.serving) {
		p.serving = serving
		close(p.changed)
		p.changed = make(chan struct{})
	}
}

func mapsEqual(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// backendsFor lists ready endpoint addresses for a service port.
func backendsFor(ep *corev1.Endpoints, sp corev1.ServicePort) []string {
	if ep == nil {
		return nil
	}
	var out []string
	for _, ss := range ep.Subsets {
		port := int32(0)
		for _, p := range ss.Ports {
			if p.Name == sp.Name && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
				port = p.Port
			}
		}
		if port == 0 && len(ss.Ports) == 1 && sp.Name == "" {
			port = ss.Ports[0].Port
		}
		if port == 0 {
			continue
		}
		for _, a := range ss.Addresses {
			if net.ParseIP(a.IP) != nil {
				out = append(out, net.JoinHostPort(a.IP, strconv.Itoa(int(port))))
			}
		}
	}
	return out
}

func (p *Proxy) serve(pp *portProxy) {
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := pp.ln.Accept()
		if err != nil {
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			p.forward(pp, c)
		}()
	}
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.active == nil {
		return false
	}
	p.active[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.active, c)
}

func (p *Proxy) forward(pp *portProxy, c net.Conn) {
	defer c.Close()
	if !p.track(c) {
		return
	}
	defer p.untrack(c)
	bp := pp.backends.Load()
	if bp == nil || len(*bp) == 0 {
		return // no endpoints: connection refused semantics (closed)
	}
	backends := *bp
	start := pp.next.Add(1)
	var up net.Conn
	var err error
	for i := range len(backends) {
		addr := backends[(int(start)+i)%len(backends)]
		if up, err = net.DialTimeout("tcp", addr, p.cfg.DialTimeout); err == nil {
			break
		}
		p.log.Debug("service endpoint dial failed", "vip", pp.key, "endpoint", addr, "err", err)
	}
	if up == nil {
		return
	}
	defer up.Close()
	if !p.track(up) {
		return
	}
	defer p.untrack(up)
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(up, c)
		if tc, ok := up.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		close(done)
	}()
	_, _ = io.Copy(c, up)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	// The backend is done; give the client a moment to finish its side.
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	<-done
}

func (p *Proxy) closeAll() {
	p.mu.Lock()
	for key, pp := range p.listeners {
		_ = pp.ln.Close()
		delete(p.listeners, key)
	}
	for c := range p.active {
		_ = c.Close()
	}
	p.active = nil
	p.mu.Unlock()
	p.wg.Wait()
}

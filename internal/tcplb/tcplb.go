// Package tcplb is a tiny TCP load balancer for several hub replicas on one
// address: each accepted connection is spliced to the next backend in
// round-robin order; a backend that refuses or times out is skipped and
// rested for a while, so clients of a dead replica are served by the others
// on their next connection. TLS passes through untouched (the replicas
// terminate it), so client certificates keep working.
package tcplb

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Config configures an LB.
type Config struct {
	// Listener accepts the clients. Required.
	Listener net.Listener
	// Backends are host:port addresses. Required.
	Backends []string
	// DialTimeout per backend attempt; zero value 2s.
	DialTimeout time.Duration
	// Rest is how long a failed backend is skipped; zero value 5s.
	Rest   time.Duration
	Logger *slog.Logger
}

// LB is the load balancer.
type LB struct {
	cfg    Config
	mu     sync.Mutex
	next   int
	down   map[string]time.Time
	active map[string]int
}

// New validates cfg.
func New(cfg Config) (*LB, error) {
	if cfg.Listener == nil || len(cfg.Backends) == 0 {
		return nil, errors.New("tcplb: listener and backends are required")
	}
	for _, b := range cfg.Backends {
		if _, _, err := net.SplitHostPort(b); err != nil {
			return nil, errors.New("tcplb: backend " + b + ": " + err.Error())
		}
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	if cfg.Rest == 0 {
		cfg.Rest = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &LB{cfg: cfg, down: map[string]time.Time{}, active: map[string]int{}}, nil
}

// Addr is the listening address.
func (l *LB) Addr() net.Addr { return l.cfg.Listener.Addr() }

// Active reports the open client connections per backend (backends with
// none are left out), so an operator or a test can see which replica
// carries a long-lived stream.
func (l *LB) Active() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]int, len(l.active))
	for b, n := range l.active {
		out[b] = n
	}
	return out
}

func (l *LB) track(backend string, delta int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.active[backend] += delta
	if l.active[backend] <= 0 {
		delete(l.active, backend)
	}
}

// Run accepts connections until ctx ends, then closes the listener and every
// open connection.
func (l *LB) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		l.cfg.Listener.Close()
	}()
	for {
		c, err := l.cfg.Listener.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.serve(ctx, c)
		}()
	}
}

// order returns the backends to try, starting with the next in turn;
// rested ones go last.
func (l *LB) order() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.cfg.Backends)
	start := l.next
	l.next = (l.next + 1) % n
	var up, rested []string
	now := time.Now()
	for i := range n {
		b := l.cfg.Backends[(start+i)%n]
		if until, ok := l.down[b]; ok && now.Before(until) {
			rested = append(rested, b)
			continue
		}
		up = append(up, b)
	}
	return append(up, rested...)
}

func (l *LB) mark(backend string, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ok {
		delete(l.down, backend)
		return
	}
	l.down[backend] = time.Now().Add(l.cfg.Rest)
}

func (l *LB) serve(ctx context.Context, c net.Conn) {
	defer c.Close()
	var b net.Conn
	var to string
	for _, backend := range l.order() {
		d := net.Dialer{Timeout: l.cfg.DialTimeout}
		conn, err := d.DialContext(ctx, "tcp", backend)
		if err != nil {
			l.mark(backend, false)
			l.cfg.Logger.Debug("tcplb: backend unavailable", "backend", backend, "err", err)
			continue
		}
		l.mark(backend, true)
		b, to = conn, backend
		break
	}
	if b == nil {
		return
	}
	defer b.Close()
	l.track(to, 1)
	defer l.track(to, -1)
	stop := context.AfterFunc(ctx, func() { c.Close(); b.Close() })
	defer stop()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		if _, err := io.Copy(dst, src); err != nil {
			// An abnormal end (a reset, a failed write) is passed on as a
			// reset of both sides, never as a clean end of stream that the
			// other side would take for a complete transfer.
			resetClose(dst)
			resetClose(src)
		} else if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(b, c)
	go pipe(c, b)
	<-done
	<-done
}

// resetClose closes c with a TCP reset (SO_LINGER 0).
func resetClose(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

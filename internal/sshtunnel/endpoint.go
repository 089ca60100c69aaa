package sshtunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// Destinations lists where direct-tcpip channels may go: an address in IPs
// at one of Ports, or any port of an address inside Prefixes (pod CIDRs).
type Destinations struct {
	IPs      []netip.Addr
	Ports    []uint16
	Prefixes []netip.Prefix
}

// Allows reports whether addr:port is an allowed destination.
func (d *Destinations) Allows(addr netip.Addr, port uint16) bool {
	addr = addr.Unmap()
	for _, p := range d.Prefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return slices.Contains(d.IPs, addr) && slices.Contains(d.Ports, port)
}

// EndpointConfig configures the restricted SSH server.
type EndpointConfig struct {
	// Listener to serve on (required).
	Listener net.Listener
	// HostKey is the server's host key (required).
	HostKey ssh.Signer
	// IdleTimeout closes a connection without any traffic (keepalives
	// count); zero value 5m.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds authentication; zero value 10s.
	HandshakeTimeout time.Duration
	// MaxAuthFailures per source IP within AuthFailureWindow before further
	// connections from it are dropped unauthenticated; zero values 10 and 1m.
	MaxAuthFailures   int
	AuthFailureWindow time.Duration
	// MaxConcurrentHandshakes; zero value 32.
	MaxConcurrentHandshakes int
	// MaxChannels per connection; zero value 4096.
	MaxChannels int
	// DialTimeout for destinations; zero value 10s.
	DialTimeout time.Duration
	// Recheck, if set, is called before a channel is refused for its
	// destination, at most once per second and bounded by 5s: it may
	// refresh the destinations (e.g. a pod CIDR allocated since the last
	// poll), which are then consulted again.
	Recheck func(ctx context.Context)
	// Logger; zero value slog.Default().
	Logger *slog.Logger
}

// Endpoint is the node side restricted SSH server. Its authorized key and
// allowed destinations can change while it runs.
type Endpoint struct {
	cfg EndpointConfig
	log *slog.Logger

	mu         sync.Mutex
	authorized []ssh.PublicKey
	dest       Destinations
	failures   map[netip.Addr][]time.Time
	recheckMu  sync.Mutex
	lastCheck  time.Time

	handshakes chan struct{}
}

// NewEndpoint validates cfg. Until SetAuthorizedKeys is called, nobody can
// log in; until SetDestinations, no channel is allowed.
func NewEndpoint(cfg EndpointConfig) (*Endpoint, error) {
	if cfg.Listener == nil {
		return nil, errors.New("sshtunnel: EndpointConfig.Listener is required")
	}
	if cfg.HostKey == nil {
		return nil, errors.New("sshtunnel: EndpointConfig.HostKey is required")
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.MaxAuthFailures == 0 {
		cfg.MaxAuthFailures = 10
	}
	if cfg.AuthFailureWindow == 0 {
		cfg.AuthFailureWindow = time.Minute
	}
	if cfg.MaxConcurrentHandshakes == 0 {
		cfg.MaxConcurrentHandshakes = 32
	}
	if cfg.MaxChannels == 0 {
		cfg.MaxChannels = 4096
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Endpoint{cfg: cfg, log: cfg.Logger, failures: map[netip.Addr][]time.Time{},
		handshakes: make(chan struct{}, cfg.MaxConcurrentHandshakes)}, nil
}

// SetAuthorizedKeys replaces the keys allowed to log in (the hub key).
func (e *Endpoint) SetAuthorizedKeys(keys ...ssh.PublicKey) {
	e.mu.Lock()
	e.authorized = slices.Clone(keys)
	e.mu.Unlock()
}

// SetDestinations replaces the allowed channel destinations.
func (e *Endpoint) SetDestinations(d Destinations) {
	d = Destinations{IPs: slices.Clone(d.IPs), Ports: slices.Clone(d.Ports), Prefixes: slices.Clone(d.Prefixes)}
	e.mu.Lock()
	e.dest = d
	e.mu.Unlock()
}

// Run serves until ctx ends, then closes the listener and every connection.
func (e *Endpoint) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { e.cfg.Listener.Close() })
	defer stop()
	for {
		conn, err := e.cfg.Listener.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("sshtunnel: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.serve(ctx, conn)
		}()
	}
}

func sourceIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap()
		}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// limited reports whether src exceeded its failed-authentication budget.
func (e *Endpoint) limited(src netip.Addr) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	cutoff := time.Now().Add(-e.cfg.AuthFailureWindow)
	f := e.failures[src]
	i := 0
	for i < len(f) && f[i].Before(cutoff) {
		i++
	}
	f = f[i:]
	if len(f) == 0 {
		delete(e.failures, src)
	} else {
		e.failures[src] = f
	}
	return len(f) >= e.cfg.MaxAuthFailures
}

func (e *Endpoint) fail(src netip.Addr) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f := e.failures[src]
	if len(f) >= e.cfg.MaxAuthFailures {
		f = f[1:]
	}
	e.failures[src] = append(f, time.Now())
	// Bound memory: forget the whole table if it grows large.
	if len(e.failures) > 4096 {
		clear(e.failures)
		e.failures[src] = append(f, time.Now())
	}
}

// idleConn extends its read deadline on every read: a connection with no
// inbound traffic (keepalives included) for the idle timeout is closed.
type idleConn struct {
	net.Conn
	idle time.Duration
}

func (c *idleConn) Read(p []byte) (int, error) {
	if err := c.Conn.SetReadDeadline(time.Now().Add(c.idle)); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (e *Endpoint) serve(ctx context.Context, raw net.Conn) {
	defer raw.Close()
	src := sourceIP(raw.RemoteAddr())
	if e.limited(src) {
		e.log.Warn("ssh endpoint: too many failed authentications, dropping", "remote", raw.RemoteAddr().String())
		return
	}
	select {
	case e.handshakes <- struct{}{}:
	default:
		e.log.Warn("ssh endpoint: too many concurrent handshakes, dropping", "remote", raw.RemoteAddr().String())
		return
	}
	var keyFailed atomic.Bool
	conf := &ssh.ServerConfig{
		MaxAuthTries: 3,
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			e.mu.Lock()
			ok := slices.ContainsFunc(e.authorized, func(k ssh.PublicKey) bool { return bytes.Equal(k.Marshal(), key.Marshal()) })
			e.mu.Unlock()
			if !ok {
				// Counted before the client hears of the failure.
				keyFailed.Store(true)
				e.fail(src)
				return nil, fmt.Errorf("key %s not authorized", ssh.FingerprintSHA256(key))
			}
			return &ssh.Permissions{}, nil
		},
		ServerVersion: "SSH-2.0-tether",
	}
	conf.AddHostKey(e.cfg.HostKey)
	timer := time.AfterFunc(e.cfg.HandshakeTimeout, func() { raw.Close() })
	conn := &idleConn{Conn: raw, idle: e.cfg.IdleTimeout}
	sc, chans, reqs, err := ssh.NewServerConn(conn, conf)
	timedOut := !timer.Stop()
	<-e.handshakes
	if err == nil && timedOut {
		sc.Close()
		err = errors.New("handshake timed out")
	}
	if err != nil {
		if !keyFailed.Load() {
			e.fail(src)
		}
		e.log.Info("ssh endpoint: handshake failed", "remote", raw.RemoteAddr().String(), "err", err)
		return
	}
	defer sc.Close()
	stop := context.AfterFunc(ctx, func() { sc.Close() })
	defer stop()
	go replyGlobal(reqs)

	var wg sync.WaitGroup
	defer wg.Wait()
	var open atomic.Int64
	for nc := range chans {
		if nc.ChannelType() != "direct-tcpip" {
			e.log.Warn("ssh endpoint: refused channel type", "type", nc.ChannelType(), "remote", raw.RemoteAddr().String())
			_ = nc.Reject(ssh.Prohibited, "only direct-tcpip channels are allowed")
			continue
		}
		p, err := parseDirectTCPIP(nc.ExtraData())
		if err != nil {
			_ = nc.Reject(ssh.ConnectionFailed, "malformed direct-tcpip request: "+err.Error())
			continue
		}
		ok := e.allows(p.Host, p.Port)
		if !ok && e.recheck(ctx) {
			ok = e.allows(p.Host, p.Port)
		}
		if !ok {
			e.log.Warn("ssh endpoint: refused destination", "dest", netip.AddrPortFrom(p.Host, p.Port).String(), "remote", raw.RemoteAddr().String())
			_ = nc.Reject(ssh.Prohibited, "destination "+netip.AddrPortFrom(p.Host, p.Port).String()+" not allowed")
			continue
		}
		if open.Add(1) > int64(e.cfg.MaxChannels) {
			open.Add(-1)
			_ = nc.Reject(ssh.ResourceShortage, "too many channels")
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer open.Add(-1)
			e.forward(ctx, nc, p)
		}()
	}
}

func (e *Endpoint) allows(addr netip.Addr, port uint16) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.dest.Allows(addr, port)
}

// recheck runs cfg.Recheck unless it ran less than a second ago; it
// reports whether it ran.
func (e *Endpoint) recheck(ctx context.Context) bool {
	if e.cfg.Recheck == nil {
		return false
	}
	e.recheckMu.Lock()
	defer e.recheckMu.Unlock()
	if time.Since(e.lastCheck) < time.Second {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	e.cfg.Recheck(ctx)
	e.lastCheck = time.Now()
	return true
}

// replyGlobal answers global requests: keepalives succeed, everything else
// (tcpip-forward, cancel-tcpip-forward, …) fails.
func replyGlobal(reqs <-chan *ssh.Request) {
	for r := range reqs {
		if r.WantReply {
			_ = r.Reply(r.Type == "keepalive@openssh.com", nil)
		}
	}
}

func (e *Endpoint) forward(ctx context.Context, nc ssh.NewChannel, p directTCPIP) {
	dctx, cancel := context.WithTimeout(ctx, e.cfg.DialTimeout)
	var d net.Dialer
	dst, err := d.DialContext(dctx, "tcp", net.JoinHostPort(p.Host.String(), strconv.Itoa(int(p.Port))))
	cancel()
	if err != nil {
		_ = nc.Reject(ssh.ConnectionFailed, "dial failed")
		return
	}
	defer dst.Close()
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs) // no requests are meaningful on direct-tcpip
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(dst, ch)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(ch, dst)
		_ = ch.CloseWrite()
		done <- struct{}{}
	}()
	select {
	case <-done:
		<-done
	case <-ctx.Done():
		ch.Close()
		dst.Close()
		<-done
		<-done
	}
}

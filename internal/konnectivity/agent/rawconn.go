package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/tether-dev/tether/internal/konnectivity/wire"
)

// rawDialTimeout bounds opening a raw connection (TCP, TLS, hello, answer).
const rawDialTimeout = 5 * time.Second

// rawPoolSize is how many handshaken raw connections a session keeps ready,
// so a dial pays one write, not a TCP+TLS handshake; rawPoolMaxAge retires
// idle ones before the server's wait for their hello runs out.
const (
	rawPoolSize   = 2
	rawPoolMaxAge = time.Minute
)

type pooledRaw struct {
	c       *tls.Conn
	created time.Time
}

// fillRawPool keeps the session's pool of ready raw connections full until
// the session ends, then closes what is left. If the server stops accepting
// raw connections the session stops using them.
func (s *session) fillRawPool() {
	defer func() {
		for {
			select {
			case p := <-s.rawPool:
				_ = p.c.Close()
			default:
				return
			}
		}
	}()
	tick := time.NewTicker(rawPoolMaxAge / 2)
	defer tick.Stop()
	failures := 0
	for s.ctx.Err() == nil {
		if len(s.rawPool) < rawPoolSize {
			c, err := s.handshakeRaw()
			if err != nil {
				failures++
				if failures >= 3 {
					s.a.log.Debug("raw connections unavailable; using connection streams", "serverID", s.serverID, "err", err)
					s.rawBroken.Store(true)
					return
				}
				continue
			}
			failures = 0
			select {
			case s.rawPool <- pooledRaw{c: c, created: time.Now()}:
			case <-s.ctx.Done():
				_ = c.Close()
				return
			}
			continue
		}
		select {
		case <-s.rawTaken:
		case <-tick.C:
			// Retire one stale connection per tick; the loop refills.
			select {
			case p := <-s.rawPool:
				if time.Since(p.created) < rawPoolMaxAge/2 {
					s.rawPool <- p
				} else {
					_ = p.c.Close()
				}
			default:
			}
		case <-s.ctx.Done():
			return
		}
	}
}

// handshakeRaw opens a TLS connection with the raw ALPN to the session's server.
func (s *session) handshakeRaw() (*tls.Conn, error) {
	cfg := s.a.cfg.TLS.Clone()
	cfg.NextProtos = []string{wire.ALPNRawConn}
	// Resume TLS sessions: fresh handshakes cost certificate signatures.
	cfg.ClientSessionCache = s.a.rawSessions
	if cfg.ServerName == "" {
		host, _, _ := net.SplitHostPort(s.addr)
		cfg.ServerName = host
	}
	ctx, cancel := context.WithTimeout(s.ctx, rawDialTimeout)
	defer cancel()
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return nil, err
	}
	tc := c.(*tls.Conn)
	if tc.ConnectionState().NegotiatedProtocol != wire.ALPNRawConn {
		_ = c.Close()
		return nil, errors.New("server does not speak raw connections on this address")
	}
	return tc, nil
}

// openRaw claims a raw connection for the dial random (tether extension,
// see wire.CapRawConns). An error means the caller falls back to a
// connection stream.
func (s *session) openRaw(random, connID int64) (net.Conn, error) {
	if s.rawBroken.Load() {
		return nil, errors.New("raw connections unavailable")
	}
	var c *tls.Conn
	for c == nil {
		select {
		case p := <-s.rawPool:
			select {
			case s.rawTaken <- struct{}{}:
			default:
			}
			if time.Since(p.created) > rawPoolMaxAge {
				_ = p.c.Close()
				continue
			}
			c = p.c
		default:
			var err error
			if c, err = s.handshakeRaw(); err != nil {
				return nil, err
			}
		}
	}
	hello, err := wire.RawHello{Random: random, ConnID: connID, AgentID: s.a.cfg.AgentID, ServerID: s.serverID}.MarshalBinary()
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(rawDialTimeout))
	var ans [1]byte
	if _, err = c.Write(hello); err == nil {
		_, err = io.ReadFull(c, ans[:])
	}
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("raw connection hello: %w", err)
	}
	if ans[0] != wire.RawOK {
		_ = c.Close()
		return nil, wire.ErrRawRefused
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// serveRaw copies bytes between the endpoint and the raw connection until
// either side ends. A clean end (EOF) closes the other side cleanly; an
// error resets it, so an abnormal end never looks like a complete transfer.
func (s *session) serveRaw(raw, conn net.Conn) {
	var closing atomic.Bool
	end := func(dst net.Conn, err error) {
		if !closing.CompareAndSwap(false, true) {
			return
		}
		if err != nil && !errors.Is(err, io.EOF) {
			resetConn(dst)
			return
		}
		_ = dst.Close()
	}
	done := make(chan struct{})
	go func() { // server → endpoint
		defer close(done)
		_, err := io.Copy(conn, raw)
		if err == nil {
			err = io.EOF
		}
		end(conn, err)
		_ = raw.Close()
	}()
	buf := make([]byte, 64<<10)
	_, err := io.CopyBuffer(raw, onlyReader{conn}, buf)
	if err == nil {
		err = io.EOF
	}
	end(raw, err)
	_ = conn.Close()
	<-done
}

// onlyReader hides WriterTo/ReaderFrom so io.CopyBuffer uses the buffer.
type onlyReader struct{ io.Reader }

// resetConn closes c with a TCP reset. For TLS it closes the underlying
// connection without close_notify, which the peer would read as a clean end.
func resetConn(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tcp, ok := c.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = c.Close()
}

package server

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/tether-dev/tether/internal/konnectivity/wire"
)

// rawHandshakeTimeout bounds the TLS handshake of a new agent-port
// connection; rawHelloTimeout bounds how long an authenticated agent's raw
// connection may wait for its hello (agents keep a few ready, retiring them
// after a minute).
const (
	rawHandshakeTimeout = 10 * time.Second
	rawHelloTimeout     = 2 * time.Minute
)

// agentMux terminates TLS on the agent port itself and splits connections
// by ALPN: raw connections (wire.ALPNRawConn) are served here, everything
// else goes to the gRPC server through Accept.
type agentMux struct {
	s      *Server
	l      net.Listener
	tls    *tls.Config
	conns  chan net.Conn
	done   chan struct{}
	closed sync.Once
	wg     sync.WaitGroup
}

func (s *Server) newAgentMux(l net.Listener, cfg *tls.Config) *agentMux {
	c := cfg.Clone()
	c.NextProtos = []string{"h2", wire.ALPNRawConn}
	m := &agentMux{s: s, l: l, tls: c, conns: make(chan net.Conn), done: make(chan struct{})}
	m.wg.Go(m.acceptLoop)
	return m
}

func (m *agentMux) acceptLoop() {
	for {
		c, err := m.l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			_ = m.Close()
			return
		}
		m.wg.Go(func() { m.handshake(c) })
	}
}

func (m *agentMux) handshake(c net.Conn) {
	tc := tls.Server(c, m.tls)
	ctx, cancel := context.WithTimeout(context.Background(), rawHandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		m.s.log.Debug("agent port TLS handshake failed", "peer", c.RemoteAddr().String(), "err", err)
		_ = c.Close()
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == wire.ALPNRawConn {
		m.s.serveRawConn(tc)
		return
	}
	select {
	case m.conns <- tc:
	case <-m.done:
		_ = tc.Close()
	}
}

// Accept implements net.Listener for the gRPC server.
func (m *agentMux) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; connections already handed out are the gRPC server's.
func (m *agentMux) Close() error {
	m.closed.Do(func() {
		close(m.done)
		_ = m.l.Close()
	})
	return nil
}

// Addr implements net.Listener.
func (m *agentMux) Addr() net.Addr { return m.l.Addr() }

// handshaken is gRPC transport credentials for connections whose TLS
// handshake agentMux already did: it reports their TLS state so that
// certificate authentication works as with credentials.NewTLS.
type handshaken struct{}

func (handshaken) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, nil, errors.New("konnectivity: agent connection without TLS")
	}
	return c, credentials.TLSInfo{State: tc.ConnectionState(), CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (handshaken) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("konnectivity: server-side credentials only")
}

func (handshaken) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (h handshaken) Clone() credentials.TransportCredentials { return h }

func (handshaken) OverrideServerName(string) error { return nil }

// serveRawConn accepts a raw connection for a pending dial of the agent
// whose certificate authenticated the control stream, then copies the
// agent's bytes to the frontend until the connection ends.
func (s *Server) serveRawConn(tc *tls.Conn) {
	_ = tc.SetReadDeadline(time.Now().Add(rawHelloTimeout))
	h, err := wire.ReadRawHello(tc)
	if err != nil {
		s.log.Debug("bad raw connection hello", "peer", tc.RemoteAddr().String(), "err", err)
		_ = tc.Close()
		return
	}
	key := wire.CertKey(tc.ConnectionState())
	s.mu.Lock()
	t := s.pending[h.Random]
	ok := t != nil && !s.cfg.DisableRawConns && h.ServerID == s.cfg.ServerID &&
		t.b.agentID == h.AgentID && t.b.rawKey != "" && t.b.rawKey == key
	s.mu.Unlock()
	if !ok || s.takePending(h.Random, t.b) == nil {
		_, _ = tc.Write([]byte{wire.RawRefused})
		_ = tc.Close()
		return
	}
	_ = tc.SetDeadline(time.Now().Add(rawHandshakeTimeout))
	if _, err := tc.Write([]byte{wire.RawOK}); err != nil {
		s.failDial(t, err, reasonEndpoint, true)
		_ = tc.Close()
		return
	}
	_ = tc.SetDeadline(time.Time{})
	s.rawAccepted.Add(1)
	if !s.establishRaw(t, h.ConnID, tc) {
		_ = tc.Close()
		return
	}
	s.readRaw(t, tc)
}

// readRaw copies agent bytes to the frontend. EOF is a clean close; any
// other error (a reset from the agent) ends the tunnel abnormally, unless
// the tunnel was already closing from the frontend side.
func (s *Server) readRaw(t *tunnel, c net.Conn) {
	buf := make([]byte, 64<<10) // a TLS record is at most 16 KiB; a few per read
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if derr := t.deliver(buf[:n]); derr != nil {
				s.abort(t, derr, true)
				return
			}
		}
		if err == nil {
			continue
		}
		t.mu.Lock()
		closing := t.state == stClosing
		t.mu.Unlock()
		if errors.Is(err, io.EOF) || closing {
			s.finish(t, nil, false)
		} else {
			s.abort(t, errors.New("konnectivity: connection reset by agent"), false)
		}
		return
	}
}

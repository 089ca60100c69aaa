// Package client is the frontend side of Konnectivity: a dialer the hub's
// egress selector uses to reach the cluster network through a Konnectivity
// server, over gRPC (/ProxyService/Proxy, one stream per connection) on a
// Unix socket or mutual-TLS TCP, or HTTP CONNECT on a Unix socket or mTLS TCP.
//
// Unlike upstream's konnectivity-client, an abnormal end of a tunnelled
// connection (agent killed, endpoint reset) is returned from Read as an
// error, never as a clean io.EOF.
package client

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"github.com/tether-dev/tether/internal/konnectivity/wire"
)

// Modes.
const (
	ModeGRPC        = "grpc"
	ModeHTTPConnect = "http-connect"
)

// Config configures a Dialer.
type Config struct {
	// Mode is "grpc" (default) or "http-connect".
	Mode string
	// UDSName is the server's frontend Unix socket; it takes precedence over Address.
	UDSName string
	// Address is the server's frontend TCP address (host:port); it needs TLS
	// (mutual TLS) unless InsecureTCP is set.
	Address     string
	TLS         *tls.Config
	InsecureTCP bool
	// DialTimeout bounds a dial when the context has no deadline; 0 means 30s.
	DialTimeout time.Duration
	// DialAttempts bounds the attempts one dial may make. A dial is tried
	// again only when it failed before any byte of the caller's could have
	// reached the endpoint: HTTP CONNECT — the proxy address refused or
	// dropped the connection before answering (e.g. a killed server), or the
	// proxy answered 503 (no agent for the destination yet — a restarted
	// server whose agents have not reconnected — or its limits); gRPC — the
	// stream failed Unavailable before DIAL_RSP (the server connection died;
	// gRPC reconnects). Behind a
	// load balancer the next attempt reaches another server. The second
	// attempt follows at once, later ones after 10 ms, 20 ms, 40 ms … (±50 %
	// jitter, so concurrent dials do not follow each other round a
	// round-robin balancer onto the same server). 0 means 5 for a TCP address
	// and 1 for a Unix socket (one local server); 1 disables.
	DialAttempts int
}

// Dialer dials TCP addresses through a Konnectivity server.
type Dialer struct {
	cfg Config

	mu sync.Mutex
	cc *grpc.ClientConn
}

// ErrReset is wrapped by Read errors for connections that ended abnormally.
var ErrReset = errors.New("konnectivity: connection reset")

// New validates cfg and returns a Dialer. gRPC connections are made lazily.
func New(cfg Config) (*Dialer, error) {
	if cfg.Mode == "" {
		cfg.Mode = ModeGRPC
	}
	if cfg.Mode != ModeGRPC && cfg.Mode != ModeHTTPConnect {
		return nil, fmt.Errorf("konnectivity client: unknown mode %q", cfg.Mode)
	}
	if cfg.UDSName == "" && cfg.Address == "" {
		return nil, errors.New("konnectivity client: need a Unix socket or an address")
	}
	if cfg.UDSName == "" && cfg.TLS == nil && !cfg.InsecureTCP {
		return nil, errors.New("konnectivity client: TCP needs TLS (or InsecureTCP)")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 30 * time.Second
	}
	if cfg.DialAttempts <= 0 {
		cfg.DialAttempts = 1
		if cfg.UDSName == "" {
			cfg.DialAttempts = 5
		}
	}
	if cfg.TLS != nil && cfg.TLS.ServerName == "" && cfg.Address != "" {
		host, _, err := net.SplitHostPort(cfg.Address)
		if err != nil {
			return nil, fmt.Errorf("konnectivity client: address %q: %w", cfg.Address, err)
		}
		cfg.TLS = cfg.TLS.Clone()
		cfg.TLS.ServerName = host
	}
	return &Dialer{cfg: cfg}, nil
}

// Close releases the shared gRPC connection. Open tunnels are closed.
func (d *Dialer) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cc != nil {
		err := d.cc.Close()
		d.cc = nil
		return err
	}
	return nil
}

func (d *Dialer) rawDial(ctx context.Context) (net.Conn, error) {
	var nd net.Dialer
	if d.cfg.UDSName != "" {
		return nd.DialContext(ctx, "unix", d.cfg.UDSName)
	}
	if d.cfg.TLS != nil {
		raw, err := nd.DialContext(ctx, "tcp", d.cfg.Address)
		if err != nil {
			return nil, err
		}
		ec := &eofConn{Conn: raw}
		tc := tls.Client(ec, d.cfg.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, err
		}
		return &tlsConn{Conn: tc, raw: ec}, nil
	}
	return nd.DialContext(ctx, "tcp", d.cfg.Address)
}

// eofConn notes when the connection under TLS reached end of stream.
type eofConn struct {
	net.Conn
	eof atomic.Bool
}

func (c *eofConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if errors.Is(err, io.EOF) {
		c.eof.Store(true)
	}
	return n, err
}

// tlsConn is an HTTP CONNECT tunnel over TLS. The proxy ends a tunnel
// normally with TLS close_notify (then Read returns io.EOF); Go's TLS client
// also reports a bare TCP end at a record boundary as io.EOF, which is what a
// killed proxy — or a load balancer in front of it — leaves behind. Such an
// end is returned as an error wrapping ErrReset, so a truncated transfer never
// looks complete. (crypto/tls stops reading at close_notify, so the TCP end
// is only seen when no close_notify came first.)
type tlsConn struct {
	*tls.Conn
	raw *eofConn
}

func (c *tlsConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err == io.EOF && c.raw.eof.Load() {
		err = fmt.Errorf("%w: the proxy connection ended without TLS close_notify (proxy gone or path cut)", ErrReset)
	}
	return n, err
}

func (d *Dialer) grpcConn() (*grpc.ClientConn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cc != nil {
		return d.cc, nil
	}
	target := "passthrough:///" + d.cfg.Address
	creds := insecure.NewCredentials()
	opts := []grpc.DialOption{
		grpc.WithInitialWindowSize(1 << 20),
		grpc.WithInitialConnWindowSize(16 << 20),
		grpc.WithReadBufferSize(256 << 10),
		grpc.WithWriteBufferSize(256 << 10),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(wire.MaxMessageSize)),
	}
	if d.cfg.UDSName != "" {
		target = "passthrough:///konnectivity-uds"
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var nd net.Dialer
			return nd.DialContext(ctx, "unix", d.cfg.UDSName)
		}))
	} else if d.cfg.TLS != nil {
		creds = credentials.NewTLS(d.cfg.TLS)
	}
	opts = append(opts, grpc.WithTransportCredentials(creds))
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("konnectivity client: %w", err)
	}
	d.cc = cc
	return cc, nil
}

// DialContext dials addr ("host:port", network "tcp") through the server.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("konnectivity client: network %q not supported", network)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.cfg.DialTimeout)
		defer cancel()
	}
	once := d.connectOnce
	if d.cfg.Mode == ModeGRPC {
		once = d.dialGRPC
	}
	var errs []error
	for attempt := 1; ; attempt++ {
		c, retry, err := once(ctx, addr)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if retry && attempt < d.cfg.DialAttempts && attempt >= 2 {
			t := time.NewTimer(retryDelay(attempt))
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
		if !retry || attempt >= d.cfg.DialAttempts || ctx.Err() != nil {
			if len(errs) == 1 {
				return nil, err
			}
			return nil, fmt.Errorf("%w (%d attempts; first: %w)", err, len(errs), errs[0])
		}
	}
}

// retryDelay is the pause after failed attempt n (n ≥ 2): 10 ms · 2^(n-2),
// ±50 %.
func retryDelay(n int) time.Duration {
	d := 10 * time.Millisecond << min(n-2, 6)
	var b [2]byte
	_, _ = rand.Read(b[:])
	return d/2 + time.Duration(int64(d)*int64(binary.BigEndian.Uint16(b[:]))/65536)
}

// connectOnce makes one HTTP CONNECT attempt; retry reports whether the
// failure happened before the caller's bytes could reach the endpoint and
// another proxy might do better.
func (d *Dialer) connectOnce(ctx context.Context, addr string) (_ net.Conn, retry bool, _ error) {
	c, err := d.rawDial(ctx)
	if err != nil {
		return nil, ctx.Err() == nil, fmt.Errorf("konnectivity client: dial proxy: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", addr, addr); err != nil {
		_ = c.Close()
		return nil, ctx.Err() == nil, fmt.Errorf("konnectivity client: CONNECT %s: %w", addr, err)
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		_ = c.Close()
		if ctx.Err() != nil {
			return nil, false, fmt.Errorf("konnectivity client: CONNECT %s: %w", addr, ctx.Err())
		}
		return nil, true, fmt.Errorf("konnectivity client: CONNECT %s: %w", addr, err)
	}
	if res.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(res.Body, 1024))
		_ = c.Close()
		return nil, res.StatusCode == http.StatusServiceUnavailable,
			fmt.Errorf("konnectivity client: CONNECT %s: %s: %s", addr, res.Status, bytesTrim(body))
	}
	if !stop() {
		_ = c.Close()
		return nil, false, ctx.Err()
	}
	_ = c.SetDeadline(time.Time{})
	if br.Buffered() > 0 {
		return &bufConn{Conn: c, r: br}, false, nil
	}
	return c, false, nil
}

func bytesTrim(b []byte) string {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return string(b)
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// dialGRPC makes one dial on a Proxy stream; retry reports whether the
// stream failed before the server answered because the connection to the
// server was unavailable (the server died; gRPC reconnects, behind a load
// balancer to another server).
func (d *Dialer) dialGRPC(ctx context.Context, addr string) (_ net.Conn, retry bool, _ error) {
	cc, err := d.grpcConn()
	if err != nil {
		return nil, false, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	stream, err := client.NewProxyServiceClient(cc).Proxy(sctx)
	if err != nil {
		cancel()
		return nil, status.Code(err) == codes.Unavailable, fmt.Errorf("konnectivity client: open stream: %w", err)
	}
	var rb [8]byte
	_, _ = rand.Read(rb[:])
	random := int64(binary.BigEndian.Uint64(rb[:]) >> 1)
	err = stream.Send(&client.Packet{Type: client.PacketType_DIAL_REQ, Payload: &client.Packet_DialRequest{
		DialRequest: &client.DialRequest{Protocol: "tcp", Address: addr, Random: random}}})
	if err != nil {
		cancel()
		return nil, true, fmt.Errorf("konnectivity client: send dial: %w", err)
	}
	type result struct {
		pkt *client.Packet
		err error
	}
	resCh := make(chan result, 1)
	go func() {
		for {
			pkt, err := stream.Recv()
			if err == nil && wire.Validate(pkt) != nil {
				err = fmt.Errorf("%w from server", wire.ErrMalformed)
			}
			if err != nil || pkt.Type == client.PacketType_DIAL_RSP {
				resCh <- result{pkt, err}
				return
			}
		}
	}()
	select {
	case <-ctx.Done():
		_ = stream.Send(&client.Packet{Type: client.PacketType_DIAL_CLS, Payload: &client.Packet_CloseDial{
			CloseDial: &client.CloseDial{Random: random}}})
		cancel()
		return nil, false, fmt.Errorf("konnectivity client: dial %s: %w", addr, ctx.Err())
	case r := <-resCh:
		if r.err != nil {
			cancel()
			return nil, status.Code(r.err) == codes.Unavailable, fmt.Errorf("konnectivity client: dial %s: %w", addr, r.err)
		}
		rsp := r.pkt.GetDialResponse()
		if rsp.Error != "" {
			cancel()
			return nil, false, fmt.Errorf("konnectivity client: dial %s: %s", addr, rsp.Error)
		}
		c := &grpcConn{stream: stream, cancel: cancel, connID: rsp.ConnectID, remote: tcpAddr(addr),
			readCh: make(chan readResult, 1), readReq: make(chan struct{}, 1), done: make(chan struct{})}
		go c.reader()
		return c, false, nil
	}
}

type strAddr string

func (s strAddr) Network() string { return "tcp" }
func (s strAddr) String() string  { return string(s) }

func tcpAddr(a string) net.Addr { return strAddr(a) }

type readResult struct {
	data []byte
	err  error
}

// grpcConn is a net.Conn over one Proxy stream. Reads pull one packet at a
// time, so gRPC's per-stream flow control reaches the server.
type grpcConn struct {
	stream client.ProxyService_ProxyClient
	cancel context.CancelFunc
	connID int64
	remote net.Addr

	readReq chan struct{}
	readCh  chan readResult
	done    chan struct{}

	rmu    sync.Mutex
	rbuf   []byte
	rerr   error
	rdl    time.Time
	wmu    sync.Mutex
	closed sync.Once
}

func (c *grpcConn) reader() {
	for {
		select {
		case <-c.readReq:
		case <-c.done:
			return
		}
		var res readResult
		for res.data == nil && res.err == nil {
			pkt, err := c.stream.Recv()
			switch {
			case err != nil:
				res.err = fmt.Errorf("%w: stream ended: %v", ErrReset, err)
				if errors.Is(err, io.EOF) {
					res.err = fmt.Errorf("%w: stream ended without close", ErrReset)
				}
			case wire.Validate(pkt) != nil:
				res.err = fmt.Errorf("%w: malformed packet from server", ErrReset)
			case pkt.Type == client.PacketType_DATA && pkt.GetData().ConnectID == c.connID:
				res.data = pkt.GetData().Data
				if res.data == nil {
					res.data = []byte{}
				}
			case pkt.Type == client.PacketType_CLOSE_RSP && pkt.GetCloseResponse().ConnectID == c.connID:
				if e := pkt.GetCloseResponse().Error; e != "" {
					res.err = fmt.Errorf("%w: %s", ErrReset, e)
				} else {
					res.err = io.EOF
				}
			}
		}
		select {
		case c.readCh <- res:
		case <-c.done:
			return
		}
		if res.err != nil {
			return
		}
	}
}

func (c *grpcConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.rbuf) == 0 {
		if c.rerr != nil {
			return 0, c.rerr
		}
		select {
		case c.readReq <- struct{}{}:
		default:
		}
		var timeout <-chan time.Time
		if !c.rdl.IsZero() {
			d := time.Until(c.rdl)
			if d <= 0 {
				return 0, errDeadline()
			}
			t := time.NewTimer(d)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case r := <-c.readCh:
			c.rbuf, c.rerr = r.data, r.err
		case <-timeout:
			return 0, errDeadline()
		case <-c.done:
			return 0, net.ErrClosed
		}
	}
	n := copy(p, c.rbuf)
	c.rbuf = c.rbuf[n:]
	return n, nil
}

func (c *grpcConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	n := 0
	for len(p) > 0 {
		chunk := p
		if len(chunk) > wire.MaxDataChunk {
			chunk = chunk[:wire.MaxDataChunk]
		}
		if err := c.stream.Send(&client.Packet{Type: client.PacketType_DATA, Payload: &client.Packet_Data{
			Data: &client.Data{ConnectID: c.connID, Data: chunk}}}); err != nil {
			return n, fmt.Errorf("%w: %v", ErrReset, err)
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// Close sends CLOSE_REQ and releases the stream.
func (c *grpcConn) Close() error {
	c.closed.Do(func() {
		close(c.done)
		go func() {
			c.wmu.Lock()
			_ = c.stream.Send(&client.Packet{Type: client.PacketType_CLOSE_REQ, Payload: &client.Packet_CloseRequest{
				CloseRequest: &client.CloseRequest{ConnectID: c.connID}}})
			_ = c.stream.CloseSend()
			c.wmu.Unlock()
			c.cancel()
		}()
		// A Write blocked on a full window must not pin the stream forever.
		time.AfterFunc(2*time.Second, c.cancel)
	})
	return nil
}

func (c *grpcConn) LocalAddr() net.Addr  { return strAddr("konnectivity") }
func (c *grpcConn) RemoteAddr() net.Addr { return c.remote }

func (c *grpcConn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

func (c *grpcConn) SetReadDeadline(t time.Time) error {
	c.rmu.Lock()
	c.rdl = t
	c.rmu.Unlock()
	return nil
}

// SetWriteDeadline is accepted but not enforced: a Write blocks only on the
// per-connection flow-control window.
func (c *grpcConn) SetWriteDeadline(time.Time) error { return nil }

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func errDeadline() error { return timeoutErr{} }

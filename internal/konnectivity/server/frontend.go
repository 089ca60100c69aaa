package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"github.com/tether-dev/tether/internal/konnectivity/wire"
)

// maxDialsPerFrontendStream bounds pending dials on one Proxy stream.
const maxDialsPerFrontendStream = 1024

// grpcFrontend is one /ProxyService/Proxy stream; it may carry several dials.
type grpcFrontend struct {
	s      *Server
	stream client.ProxyService_ProxyServer
	sendMu sync.Mutex

	mu       sync.Mutex
	byRandom map[int64]*tunnel
	byID     map[int64]*tunnel
	all      map[*tunnel]struct{}
}

func (f *grpcFrontend) send(pkt *client.Packet) error {
	f.sendMu.Lock()
	defer f.sendMu.Unlock()
	if err := f.stream.Send(pkt); err != nil {
		f.s.m.streamErrors.WithLabelValues(segToClient, status.Code(err).String(), pkt.Type.String()).Inc()
		return err
	}
	f.s.m.streamPackets.WithLabelValues(segToClient, pkt.Type.String()).Inc()
	return nil
}

func (f *grpcFrontend) dialed(t *tunnel, err error) {
	f.mu.Lock()
	if f.byRandom[t.frontRandom] == t {
		delete(f.byRandom, t.frontRandom)
	}
	if err == nil {
		f.byID[t.id()] = t
	} else {
		delete(f.all, t)
	}
	f.mu.Unlock()
	rsp := &client.DialResponse{Random: t.frontRandom}
	if err != nil {
		rsp.Error = err.Error()
	} else {
		rsp.ConnectID = t.id()
	}
	_ = f.send(&client.Packet{Type: client.PacketType_DIAL_RSP, Payload: &client.Packet_DialResponse{DialResponse: rsp}})
}

func (f *grpcFrontend) deliver(t *tunnel, p []byte) error {
	return f.send(dataPkt(t.id(), p))
}

func (f *grpcFrontend) closed(t *tunnel, err error) {
	f.mu.Lock()
	delete(f.byID, t.id())
	delete(f.all, t)
	f.mu.Unlock()
	rsp := &client.CloseResponse{ConnectID: t.id()}
	if err != nil {
		rsp.Error = err.Error()
	}
	_ = f.send(&client.Packet{Type: client.PacketType_CLOSE_RSP, Payload: &client.Packet_CloseResponse{CloseResponse: rsp}})
}

// Proxy implements /ProxyService/Proxy.
func (s *Server) Proxy(stream client.ProxyService_ProxyServer) error {
	s.m.grpcConnections.WithLabelValues("Proxy").Inc()
	defer s.m.grpcConnections.WithLabelValues("Proxy").Dec()
	f := &grpcFrontend{s: s, stream: stream, byRandom: map[int64]*tunnel{}, byID: map[int64]*tunnel{}, all: map[*tunnel]struct{}{}}
	err := f.serve()
	f.mu.Lock()
	var all []*tunnel
	for t := range f.all {
		all = append(all, t)
	}
	f.mu.Unlock()
	for _, t := range all {
		s.closeFromFrontend(t)
	}
	if errors.Is(err, wire.ErrMalformed) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return nil
}

func (f *grpcFrontend) serve() error {
	s := f.s
	for {
		pkt, err := f.stream.Recv()
		if err != nil {
			return nil
		}
		if err := wire.Validate(pkt); err != nil {
			s.m.streamErrors.WithLabelValues(segFromClient, codes.InvalidArgument.String(), pkt.GetType().String()).Inc()
			return err
		}
		s.m.streamPackets.WithLabelValues(segFromClient, pkt.Type.String()).Inc()
		switch pkt.Type {
		case client.PacketType_DIAL_REQ:
			r := pkt.GetDialRequest()
			fail := func(err error) {
				_ = f.send(&client.Packet{Type: client.PacketType_DIAL_RSP, Payload: &client.Packet_DialResponse{
					DialResponse: &client.DialResponse{Random: r.Random, Error: err.Error()}}})
			}
			if r.Protocol != "tcp" && r.Protocol != "" {
				fail(fmt.Errorf("protocol %q not supported (tcp only)", r.Protocol))
				continue
			}
			f.mu.Lock()
			_, dup := f.byRandom[r.Random]
			n := len(f.byRandom)
			f.mu.Unlock()
			if dup || n >= maxDialsPerFrontendStream {
				fail(errors.New("duplicate dial ID or too many pending dials on this stream"))
				continue
			}
			t := s.newTunnel(f, r.Random, r.Address)
			f.mu.Lock()
			f.byRandom[r.Random] = t
			f.all[t] = struct{}{}
			f.mu.Unlock()
			if err := s.startDial(t); err != nil {
				f.mu.Lock()
				delete(f.byRandom, r.Random)
				delete(f.all, t)
				f.mu.Unlock()
				fail(err)
			}
		case client.PacketType_DATA:
			d := pkt.GetData()
			f.mu.Lock()
			t := f.byID[d.ConnectID]
			f.mu.Unlock()
			if t == nil {
				continue // late data for a closed connection
			}
			t.mu.Lock()
			connID := t.agentConnID
			t.mu.Unlock()
			if err := t.sendAgent(dataPkt(connID, d.Data)); err != nil {
				s.abort(t, err, true)
			}
		case client.PacketType_CLOSE_REQ:
			id := pkt.GetCloseRequest().ConnectID
			f.mu.Lock()
			t := f.byID[id]
			f.mu.Unlock()
			if t == nil {
				_ = f.send(&client.Packet{Type: client.PacketType_CLOSE_RSP, Payload: &client.Packet_CloseResponse{
					CloseResponse: &client.CloseResponse{ConnectID: id, Error: "unknown connection"}}})
				continue
			}
			s.closeFromFrontend(t)
		case client.PacketType_DIAL_CLS:
			f.mu.Lock()
			t := f.byRandom[pkt.GetCloseDial().Random]
			f.mu.Unlock()
			if t != nil {
				s.closeFromFrontend(t)
			}
		default:
			// DIAL_RSP, CLOSE_RSP, DRAIN make no sense from a frontend; ignore.
		}
	}
}

// httpFrontend is one HTTP CONNECT tunnel.
type httpFrontend struct {
	res   chan error
	ready chan struct{}
	gone  chan struct{}

	mu     sync.Mutex
	conn   net.Conn
	isDone bool
	err    error
}

func (h *httpFrontend) dialed(t *tunnel, err error) { h.res <- err }

func (h *httpFrontend) deliver(t *tunnel, p []byte) error {
	select {
	case <-h.ready:
	case <-h.gone:
		return errors.New("client gone")
	}
	_, err := h.conn.Write(p)
	return err
}

func (h *httpFrontend) closed(t *tunnel, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.isDone, h.err = true, err
	if h.conn != nil {
		closeConn(h.conn, err != nil)
	}
}

// closeConn closes c; abnormal ends reset TCP connections so the client sees
// an error rather than a clean EOF.
func closeConn(c net.Conn, reset bool) {
	if reset {
		nc := c
		if tc, ok := nc.(*tls.Conn); ok {
			nc = tc.NetConn()
		}
		if tcp, ok := nc.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0)
		}
		// Closing the raw connection skips TLS close_notify, which a client
		// would read as a clean end of stream.
		_ = nc.Close()
		return
	}
	_ = c.Close()
}

func httpStatusFor(err error) int {
	switch {
	case errors.Is(err, errNoAgent), errors.Is(err, errLimit), errors.Is(err, errAgentGone):
		return http.StatusServiceUnavailable
	case errors.Is(err, errDialTimeout), strings.Contains(strings.ToLower(err.Error()), "timeout"):
		return http.StatusGatewayTimeout
	default:
		return http.StatusBadGateway
	}
}

// ServeHTTP is the HTTP CONNECT frontend.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		http.Error(w, "this proxy only supports CONNECT passthrough", http.StatusMethodNotAllowed)
		return
	}
	s.m.httpConnections.Inc()
	defer s.m.httpConnections.Dec()
	h := &httpFrontend{res: make(chan error, 1), ready: make(chan struct{}), gone: make(chan struct{})}
	defer close(h.gone)
	t := s.newTunnel(h, 0, r.Host)
	if err := s.startDial(t); err != nil {
		http.Error(w, "konnectivity: "+err.Error(), httpStatusFor(err))
		return
	}
	var err error
	select {
	case err = <-h.res:
	case <-r.Context().Done():
		s.closeFromFrontend(t)
		return
	}
	if err != nil {
		http.Error(w, "konnectivity: "+err.Error(), httpStatusFor(err))
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		s.closeFromFrontend(t)
		http.Error(w, "hijacking not supported", http.StatusInternalServerError)
		return
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		s.closeFromFrontend(t)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection Established\r\n\r\n"); err != nil {
		s.abort(t, err, true)
		_ = conn.Close()
		return
	}
	h.mu.Lock()
	h.conn = conn
	already, cerr := h.isDone, h.err
	h.mu.Unlock()
	close(h.ready)
	if already {
		closeConn(conn, cerr != nil)
		return
	}
	s.pumpToAgent(t, brw.Reader, conn)
}

// pumpToAgent copies client bytes to the agent until the client closes.
func (s *Server) pumpToAgent(t *tunnel, br *bufio.Reader, conn net.Conn) {
	t.mu.Lock()
	connID := t.agentConnID
	t.mu.Unlock()
	buf := make([]byte, wire.MaxDataChunk)
	var src io.Reader = conn
	if br != nil && br.Buffered() > 0 {
		src = io.MultiReader(io.LimitReader(br, int64(br.Buffered())), conn)
	}
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if serr := t.sendAgent(dataPkt(connID, buf[:n])); serr != nil {
				s.abort(t, serr, true)
				closeConn(conn, true)
				return
			}
		}
		if err != nil {
			break
		}
	}
	s.closeFromFrontend(t)
	timer := time.NewTimer(s.cfg.CloseTimeout + time.Second)
	defer timer.Stop()
	select {
	case <-t.done:
	case <-timer.C:
	}
	_ = conn.Close()
}

// HTTPConnectServer returns an http.Server for the CONNECT frontend with a
// header read timeout (upstream has none: slow-header clients hold sockets).
func (s *Server) HTTPConnectServer(headerTimeout time.Duration) *http.Server {
	if headerTimeout <= 0 {
		headerTimeout = 10 * time.Second
	}
	return &http.Server{
		Handler:           s,
		ReadHeaderTimeout: headerTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          nil,
		BaseContext:       func(net.Listener) context.Context { return context.Background() },
	}
}

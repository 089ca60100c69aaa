package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
	agentpb "sigs.k8s.io/apiserver-network-proxy/proto/agent"

	"github.com/tether-dev/tether/internal/konnectivity/wire"
)

// session is one agent↔server connection (one control stream).
type session struct {
	a         *Agent
	serverID  string
	addr      string // the server address this session dialled
	ext       bool
	raw       bool // raw connections negotiated (wire.CapRawConns)
	rawPool   chan pooledRaw
	rawTaken  chan struct{}
	rawBroken atomic.Bool
	cc        *grpc.ClientConn
	svc       agentpb.AgentServiceClient
	md        metadata.MD
	ctx       context.Context
	stream    agentpb.AgentService_ConnectClient
	sendMu    sync.Mutex

	mu      sync.Mutex
	pending map[int64]context.CancelFunc // by dial random
	conns   map[int64]*endpoint          // shared-stream connections (upstream server)
	wg      sync.WaitGroup
}

// endpoint is a dialled TCP connection carried on the shared stream.
type endpoint struct {
	conn      net.Conn
	q         chan []byte
	done      chan struct{}
	closeOnce sync.Once
}

func (s *session) send(pkt *client.Packet) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if err := s.stream.Send(pkt); err != nil {
		s.a.m.streamErrors.WithLabelValues("to_server", status.Code(err).String(), pkt.Type.String()).Inc()
		return err
	}
	s.a.m.streamPackets.WithLabelValues("to_server", pkt.Type.String()).Inc()
	return nil
}

// session connects to addr and serves until the stream ends. ok reports
// whether the connection was established.
func (a *Agent) session(ctx context.Context, addr string, grow chan<- struct{}) (ok bool, err error) {
	md, err := a.metadata()
	if err != nil {
		return false, err
	}
	cc, err := grpc.NewClient(addr, a.dialOptions()...)
	if err != nil {
		return false, fmt.Errorf("konnectivity agent: %w", err)
	}
	defer cc.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	svc := agentpb.NewAgentServiceClient(cc)
	stream, err := svc.Connect(metadata.NewOutgoingContext(sctx, md))
	if err != nil {
		a.m.serverConnFailure.WithLabelValues("connect").Inc()
		return false, err
	}
	hdr, err := stream.Header()
	if err != nil {
		a.m.serverConnFailure.WithLabelValues("header").Inc()
		return false, err
	}
	serverID, _ := wire.One(hdr, wire.MDServerID)
	if serverID == "" {
		// The stream failed before the server answered (rejected, or down).
		if _, rerr := stream.Recv(); rerr != nil {
			a.m.serverConnFailure.WithLabelValues("connect").Inc()
			return false, rerr
		}
		return false, errors.New("konnectivity server sent no serverID")
	}
	if v, err := wire.One(hdr, wire.MDServerCount); err == nil {
		if n, err := strconv.Atoi(v); err == nil && n > 0 && n <= 1000 {
			a.mu.Lock()
			if n > a.respCount {
				a.respCount = n
				select {
				case grow <- struct{}{}:
				default:
				}
			}
			a.mu.Unlock()
		}
	}
	s := &session{a: a, serverID: serverID, cc: cc, svc: svc, md: md, ctx: sctx, stream: stream,
		ext: !a.cfg.DisableConnStreams && wire.HasCap(hdr, wire.CapConnStreams),
		raw: !a.cfg.DisableRawConns && a.cfg.TLS != nil && wire.HasCap(hdr, wire.CapRawConns), addr: addr,
		pending: map[int64]context.CancelFunc{}, conns: map[int64]*endpoint{}}
	a.mu.Lock()
	if _, dup := a.servers[serverID]; dup {
		a.mu.Unlock()
		return false, fmt.Errorf("already connected to server %s", serverID)
	}
	a.servers[serverID] = s
	a.m.openServerConns.Set(float64(len(a.servers)))
	a.mu.Unlock()
	a.log.Info("connected to konnectivity server", "server", addr, "serverID", serverID, "connStreams", s.ext, "rawConns", s.raw)
	if s.raw {
		s.rawPool, s.rawTaken = make(chan pooledRaw, rawPoolSize), make(chan struct{}, 1)
		s.wg.Go(s.fillRawPool)
	}
	if a.cfg.Drain != nil {
		s.wg.Go(func() {
			select {
			case <-a.cfg.Drain:
				a.log.Info("draining: asking the server to route no new dials here", "serverID", serverID)
				if err := s.send(&client.Packet{Type: client.PacketType_DRAIN, Payload: &client.Packet_Drain{Drain: &client.Drain{}}}); err != nil {
					a.log.Debug("send DRAIN", "serverID", serverID, "err", err)
				}
			case <-sctx.Done():
			}
		})
	}
	err = s.serve()
	cancel()
	s.mu.Lock()
	for _, e := range s.conns {
		e.close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	a.mu.Lock()
	delete(a.servers, serverID)
	a.m.openServerConns.Set(float64(len(a.servers)))
	a.mu.Unlock()
	a.log.Info("disconnected from konnectivity server", "serverID", serverID, "err", err)
	return true, err
}

func (s *session) serve() error {
	for {
		pkt, err := s.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			s.a.m.serverConnFailure.WithLabelValues("receive").Inc()
			return err
		}
		if err := wire.Validate(pkt); err != nil {
			return err
		}
		s.a.m.streamPackets.WithLabelValues("from_server", pkt.Type.String()).Inc()
		switch pkt.Type {
		case client.PacketType_DIAL_REQ:
			s.dial(pkt.GetDialRequest())
		case client.PacketType_DIAL_CLS:
			s.mu.Lock()
			if c := s.pending[pkt.GetCloseDial().Random]; c != nil {
				c()
			}
			s.mu.Unlock()
		case client.PacketType_DATA:
			d := pkt.GetData()
			s.mu.Lock()
			e := s.conns[d.ConnectID]
			s.mu.Unlock()
			if e == nil {
				_ = s.send(closeResp(d.ConnectID, errors.New("unknown connection")))
				continue
			}
			select { // bounded queue; a full queue blocks (upstream behaviour)
			case e.q <- d.Data:
			case <-e.done:
			}
		case client.PacketType_CLOSE_REQ:
			id := pkt.GetCloseRequest().ConnectID
			s.mu.Lock()
			e := s.conns[id]
			s.mu.Unlock()
			if e == nil {
				_ = s.send(closeResp(id, errors.New("unknown connection")))
				continue
			}
			e.close() // the reader goroutine sends CLOSE_RSP
		default:
			// DIAL_RSP, CLOSE_RSP, DRAIN are not for agents; ignore as upstream does.
		}
	}
}

func (e *endpoint) close() {
	e.closeOnce.Do(func() {
		close(e.done)
		_ = e.conn.Close()
	})
}

func (s *session) dial(r *client.DialRequest) {
	a := s.a
	fail := func(reason string, err error) {
		a.m.endpointDialFail.WithLabelValues(reason).Inc()
		_ = s.send(dialResp(r.Random, 0, err))
	}
	if r.Protocol != "tcp" {
		fail("protocol", fmt.Errorf("protocol %q not allowed (tcp only)", r.Protocol))
		return
	}
	a.mu.Lock()
	if a.npending >= a.cfg.MaxPendingDials || a.nconns+a.npending >= a.cfg.MaxConns {
		a.mu.Unlock()
		fail("limit", errors.New("konnectivity agent connection limit reached"))
		return
	}
	a.npending++
	a.mu.Unlock()
	dctx, cancel := context.WithTimeout(s.ctx, a.cfg.DialTimeout)
	s.mu.Lock()
	if _, dup := s.pending[r.Random]; dup {
		s.mu.Unlock()
		cancel()
		a.mu.Lock()
		a.npending--
		a.mu.Unlock()
		fail("duplicate", errors.New("duplicate dial"))
		return
	}
	s.pending[r.Random] = cancel
	s.mu.Unlock()
	s.wg.Go(func() {
		start := time.Now()
		conn, err := a.dialChecked(dctx, r.Address)
		cancelled := dctx.Err() == context.Canceled
		cancel()
		s.mu.Lock()
		delete(s.pending, r.Random)
		s.mu.Unlock()
		a.mu.Lock()
		a.npending--
		if err == nil && !cancelled {
			a.nconns++
			a.m.openEndpointConns.Set(float64(a.nconns))
		}
		a.mu.Unlock()
		if cancelled {
			if conn != nil {
				_ = conn.Close()
			}
			a.m.endpointDialFail.WithLabelValues("cancelled").Inc()
			return // DIAL_CLS from the server, or the session ended
		}
		if err != nil {
			reason := "error"
			if errors.Is(err, context.DeadlineExceeded) {
				reason = "timeout"
			}
			fail(reason, err)
			return
		}
		a.m.dialDuration.Observe(time.Since(start).Seconds())
		connID := a.connID.Add(1)
		if s.raw {
			rc, err := s.openRaw(r.Random, connID)
			if err == nil {
				s.serveRaw(rc, conn)
				a.mu.Lock()
				a.nconns--
				a.m.openEndpointConns.Set(float64(a.nconns))
				a.mu.Unlock()
				return
			}
			a.log.Debug("raw connection not available; using a connection stream", "serverID", s.serverID, "err", err)
		}
		if s.ext {
			s.serveConnStream(r.Random, connID, conn)
		} else {
			s.serveShared(r.Random, connID, conn)
		}
		a.mu.Lock()
		a.nconns--
		a.m.openEndpointConns.Set(float64(a.nconns))
		a.mu.Unlock()
	})
}

func (a *Agent) dialChecked(ctx context.Context, addr string) (net.Conn, error) {
	target, err := a.checkDestination(ctx, addr)
	if err != nil {
		return nil, err
	}
	return a.cfg.DialEndpoint(ctx, "tcp", target)
}

// serveShared carries conn on the shared control stream (upstream server).
func (s *session) serveShared(random, connID int64, conn net.Conn) {
	e := &endpoint{conn: conn, q: make(chan []byte, 64), done: make(chan struct{})}
	s.mu.Lock()
	s.conns[connID] = e
	s.mu.Unlock()
	if err := s.send(dialResp(random, connID, nil)); err != nil {
		e.close()
	}
	go func() { // writer: server → endpoint
		for {
			select {
			case p := <-e.q:
				if _, err := conn.Write(p); err != nil {
					e.close()
					return
				}
			case <-e.done:
				return
			}
		}
	}()
	buf := make([]byte, wire.MaxDataChunk)
	var rerr error
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			if serr := s.send(dataPkt(connID, buf[:n])); serr != nil {
				rerr = serr
				break
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !isClosedByUs(e) {
				rerr = err
			}
			break
		}
	}
	e.close()
	s.mu.Lock()
	delete(s.conns, connID)
	s.mu.Unlock()
	_ = s.send(closeResp(connID, rerr))
}

func isClosedByUs(e *endpoint) bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}

// serveConnStream carries conn on its own gRPC stream (tether extension).
func (s *session) serveConnStream(random, connID int64, conn net.Conn) {
	md := s.md.Copy()
	md.Set(wire.MDConnStream, strconv.FormatInt(random, 10))
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	defer conn.Close()
	ds, err := s.svc.Connect(metadata.NewOutgoingContext(ctx, md))
	if err == nil {
		err = ds.Send(dialResp(random, connID, nil))
	}
	if err != nil {
		_ = s.send(dialResp(random, 0, fmt.Errorf("open connection stream: %w", err)))
		return
	}
	var sendMu sync.Mutex
	var closeOnce sync.Once
	sendClose := func(err error) {
		closeOnce.Do(func() {
			sendMu.Lock()
			_ = ds.Send(closeResp(connID, err))
			_ = ds.CloseSend()
			sendMu.Unlock()
		})
	}
	closedByServer := make(chan struct{})
	downDone := make(chan struct{})
	go func() { // server → endpoint
		defer close(downDone)
		for {
			pkt, err := ds.Recv()
			if err != nil {
				// Stream gone (server closed it, or the connection died):
				// close the endpoint abruptly.
				if tc, ok := conn.(*net.TCPConn); ok && !errors.Is(err, io.EOF) {
					_ = tc.SetLinger(0)
				}
				_ = conn.Close()
				return
			}
			if wire.Validate(pkt) != nil {
				cancel()
				_ = conn.Close()
				return
			}
			switch pkt.Type {
			case client.PacketType_DATA:
				if _, err := conn.Write(pkt.GetData().Data); err != nil {
					_ = conn.Close()
				}
			case client.PacketType_CLOSE_REQ:
				select {
				case <-closedByServer:
				default:
					close(closedByServer)
				}
				_ = conn.Close()
				sendClose(nil)
			}
		}
	}()
	buf := make([]byte, wire.MaxDataChunk)
	var rerr error
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			sendMu.Lock()
			serr := ds.Send(dataPkt(connID, buf[:n]))
			sendMu.Unlock()
			if serr != nil {
				break
			}
		}
		if err != nil {
			select {
			case <-closedByServer:
			default:
				if !errors.Is(err, io.EOF) {
					rerr = err
				}
			}
			break
		}
	}
	sendClose(rerr)
	// Wait for the server to end the stream (it answers CLOSE_RSP by returning).
	select {
	case <-downDone:
	case <-s.ctx.Done():
	case <-time.After(10 * time.Second):
	}
	cancel()
	<-downDone
}

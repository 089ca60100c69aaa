package server

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
	agentpb "sigs.k8s.io/apiserver-network-proxy/proto/agent"

	"github.com/tether-dev/tether/internal/konnectivity/wire"
)

// frontend is the client side of a tunnel: a gRPC Proxy stream or an HTTP
// CONNECT connection.
type frontend interface {
	// dialed reports the dial result, exactly once.
	dialed(t *tunnel, err error)
	// deliver writes agent data to the frontend, blocking while it is slow.
	deliver(t *tunnel, p []byte) error
	// closed reports the end of an established tunnel; err != nil means the
	// connection ended abnormally and must not look like a clean EOF.
	closed(t *tunnel, err error)
}

type tunnelState int

const (
	stPending     tunnelState = iota // in s.pending
	stTaken                          // DIAL_RSP received, being established
	stEstablished                    // in b.conns
	stClosing                        // CLOSE_REQ sent to the agent
	stClosed
)

type fallbackItem struct {
	data  []byte
	close bool
	err   error
}

type tunnel struct {
	s           *Server
	b           *backend
	front       frontend
	frontRandom int64
	dialID      int64 // agent-facing random; also the frontend-facing connect ID
	address     string
	start       time.Time
	timer       *time.Timer
	done        chan struct{}

	mu          sync.Mutex
	state       tunnelState
	cancelReq   bool
	fast        bool
	closeErr    error
	agentConnID int64
	data        agentpb.AgentService_ConnectServer // tether extension: own stream
	raw         net.Conn                           // tether extension: raw connection
	q           chan fallbackItem                  // upstream agents: bounded queue to the frontend

	dataMu sync.Mutex
}

func (t *tunnel) id() int64 { return t.dialID }

func (t *tunnel) err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closeErr == nil {
		return errors.New("connection closed")
	}
	return t.closeErr
}

func (t *tunnel) abortFast() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fast
}

func (s *Server) newTunnel(f frontend, frontRandom int64, address string) *tunnel {
	return &tunnel{s: s, front: f, frontRandom: frontRandom, address: address, dialID: s.nextID.Add(1),
		start: time.Now(), done: make(chan struct{})}
}

// startDial routes t to an agent and sends the DIAL_REQ. On error nothing was
// registered and dialed will not be called; otherwise dialed is called exactly once.
func (s *Server) startDial(t *tunnel) error {
	host, _, err := wire.SplitDialAddress(t.address)
	if err != nil {
		s.m.dialFailures.WithLabelValues(reasonBadRequest).Inc()
		return err
	}
	b, err := s.pickBackend(host)
	if err != nil {
		s.m.dialFailures.WithLabelValues(reasonNoBackend).Inc()
		return err
	}
	t.b = b
	t.timer = time.AfterFunc(s.cfg.DialTimeout, func() {
		if s.takePending(t.dialID, b) != nil {
			s.failDial(t, fmt.Errorf("%w (%s)", errDialTimeout, s.cfg.DialTimeout), reasonTimeout, true)
		}
	})
	s.mu.Lock()
	select {
	case <-b.done:
		s.mu.Unlock()
		t.timer.Stop()
		s.m.dialFailures.WithLabelValues(reasonBackendGone).Inc()
		return errAgentGone
	default:
	}
	if b.npending >= s.cfg.MaxPendingDialsPerAgent || len(b.conns)+b.npending >= s.cfg.MaxConnsPerAgent {
		np, nc := b.npending, len(b.conns)
		s.mu.Unlock()
		t.timer.Stop()
		s.m.dialFailures.WithLabelValues(reasonLimit).Inc()
		return fmt.Errorf("%w: agent %s has %d pending dials and %d connections", errLimit, b.agentID, np, nc)
	}
	s.pending[t.dialID] = t
	b.npending++
	s.m.pendingDials.Set(float64(len(s.pending)))
	s.mu.Unlock()
	err = b.send(&client.Packet{Type: client.PacketType_DIAL_REQ, Payload: &client.Packet_DialRequest{
		DialRequest: &client.DialRequest{Protocol: "tcp", Address: t.address, Random: t.dialID}}})
	if err != nil && s.takePending(t.dialID, b) != nil {
		s.failDial(t, err, reasonBackendGone, false)
	}
	return nil
}

// takePending removes the pending dial id of backend b; only one caller wins.
func (s *Server) takePending(id int64, b *backend) *tunnel {
	s.mu.Lock()
	t := s.pending[id]
	if t == nil || t.b != b {
		s.mu.Unlock()
		return nil
	}
	delete(s.pending, id)
	b.npending--
	s.m.pendingDials.Set(float64(len(s.pending)))
	s.mu.Unlock()
	t.timer.Stop()
	t.mu.Lock()
	t.state = stTaken
	t.mu.Unlock()
	return t
}

// failDial ends a taken dial.
func (s *Server) failDial(t *tunnel, err error, reason string, sendCls bool) {
	t.mu.Lock()
	t.state = stClosed
	t.closeErr = err
	t.mu.Unlock()
	close(t.done)
	s.m.dialFailures.WithLabelValues(reason).Inc()
	s.log.Debug("dial failed", "address", t.address, "err", err)
	t.front.dialed(t, err)
	if sendCls {
		_ = t.b.send(dialCls(t.dialID))
	}
}

// establish turns a taken dial into a connection. data is the connection's
// own stream (tether extension) or nil (upstream agent: shared stream).
func (s *Server) establish(t *tunnel, connID int64, data agentpb.AgentService_ConnectServer) bool {
	return s.establishWith(t, connID, data, nil)
}

// establishRaw turns a taken dial into a connection carried on raw.
func (s *Server) establishRaw(t *tunnel, connID int64, raw net.Conn) bool {
	return s.establishWith(t, connID, nil, raw)
}

func (s *Server) establishWith(t *tunnel, connID int64, data agentpb.AgentService_ConnectServer, raw net.Conn) bool {
	s.mu.Lock()
	if _, dup := t.b.conns[connID]; dup || connID == 0 {
		s.mu.Unlock()
		if data == nil && raw == nil && connID != 0 {
			_ = t.b.send(closeReq(connID))
		}
		s.failDial(t, fmt.Errorf("agent returned invalid connection ID %d", connID), reasonEndpoint, false)
		return false
	}
	t.b.conns[connID] = t
	s.mu.Unlock()
	t.mu.Lock()
	t.state = stEstablished
	t.agentConnID = connID
	t.data = data
	t.raw = raw
	if data == nil && raw == nil {
		t.q = make(chan fallbackItem, s.cfg.FallbackQueuePackets)
		go t.fallbackWriter()
	}
	cancel := t.cancelReq
	t.mu.Unlock()
	s.m.established.Inc()
	s.m.dialDuration.Observe(time.Since(t.start).Seconds())
	t.front.dialed(t, nil)
	if cancel {
		s.closeFromFrontend(t)
	}
	return true
}

// closeFromFrontend handles CLOSE_REQ / DIAL_CLS / a vanished frontend.
func (s *Server) closeFromFrontend(t *tunnel) {
	if t.b == nil {
		return
	}
	if s.takePending(t.dialID, t.b) != nil {
		s.failDial(t, errors.New("dial cancelled by client"), reasonFrontend, true)
		return
	}
	t.mu.Lock()
	switch t.state {
	case stTaken:
		t.cancelReq = true
		t.mu.Unlock()
		return
	case stEstablished:
		t.state = stClosing
	default:
		t.mu.Unlock()
		return
	}
	connID := t.agentConnID
	t.mu.Unlock()
	if err := t.sendAgent(closeReq(connID)); err != nil {
		s.abort(t, err, true)
		return
	}
	time.AfterFunc(s.cfg.CloseTimeout, func() { s.finish(t, nil, false) })
}

// finish ends an established tunnel and tells the frontend.
func (s *Server) finish(t *tunnel, err error, fast bool) {
	t.mu.Lock()
	if t.state != stEstablished && t.state != stClosing {
		t.mu.Unlock()
		return
	}
	t.state = stClosed
	t.closeErr = err
	t.fast = fast
	connID := t.agentConnID
	q := t.q
	raw := t.raw
	t.mu.Unlock()
	close(t.done)
	if raw != nil {
		t.dataMu.Lock() // no write in progress
		closeConn(raw, err != nil)
		t.dataMu.Unlock()
	}
	s.mu.Lock()
	if t.b.conns[connID] == t {
		delete(t.b.conns, connID)
	}
	s.mu.Unlock()
	s.m.established.Dec()
	if q == nil || fast {
		t.front.closed(t, err)
	}
	// Fallback tunnels closed normally report closed() from their writer,
	// after the queued data.
}

// abort ends t abnormally (agent gone, stream broken, stalled frontend).
func (s *Server) abort(t *tunnel, err error, notifyAgent bool) {
	if t.b != nil && s.takePending(t.dialID, t.b) != nil {
		s.failDial(t, err, reasonBackendGone, notifyAgent)
		return
	}
	t.mu.Lock()
	state, connID, shared := t.state, t.agentConnID, t.data == nil && t.raw == nil
	if state == stTaken {
		t.cancelReq = true
	}
	t.mu.Unlock()
	if state != stEstablished && state != stClosing {
		return
	}
	s.finish(t, err, true)
	if notifyAgent && shared {
		go func() { _ = t.b.send(closeReq(connID)) }()
	}
}

// sendAgent sends a frontend packet towards the agent, on the connection's
// own stream when it has one.
func (t *tunnel) sendAgent(pkt *client.Packet) error {
	t.mu.Lock()
	data, raw := t.data, t.raw
	t.mu.Unlock()
	select {
	case <-t.done:
		return errors.New("connection closed")
	default:
	}
	if raw != nil {
		return t.sendRaw(raw, pkt)
	}
	if data == nil {
		return t.b.send(pkt)
	}
	t.dataMu.Lock()
	defer t.dataMu.Unlock()
	if err := data.Send(pkt); err != nil {
		return fmt.Errorf("send to agent: %w", err)
	}
	t.s.m.streamPackets.WithLabelValues(segToAgent, pkt.Type.String()).Inc()
	return nil
}

// sendRaw writes DATA to a raw connection; CLOSE_REQ closes it (the agent
// sees a clean end and closes its endpoint).
func (t *tunnel) sendRaw(raw net.Conn, pkt *client.Packet) error {
	t.dataMu.Lock()
	defer t.dataMu.Unlock()
	switch pkt.Type {
	case client.PacketType_DATA:
		if _, err := raw.Write(pkt.GetData().Data); err != nil {
			return fmt.Errorf("send to agent: %w", err)
		}
	case client.PacketType_CLOSE_REQ:
		closeConn(raw, false)
	}
	return nil
}

func (t *tunnel) deliver(p []byte) error {
	start := time.Now()
	err := t.front.deliver(t, p)
	t.s.m.frontendWrite.Observe(time.Since(start).Seconds())
	return err
}

// enqueueFallback queues agent data for an upstream-agent tunnel. If the
// frontend does not drain the queue within FallbackStallTimeout the tunnel is
// reset rather than blocking every other connection on the agent stream.
func (t *tunnel) enqueueFallback(p []byte) {
	t.enqueue(fallbackItem{data: p})
}

func (t *tunnel) enqueue(it fallbackItem) {
	t.mu.Lock()
	q := t.q
	t.mu.Unlock()
	if q == nil {
		return
	}
	select {
	case q <- it:
		return
	case <-t.done:
		if !it.close {
			return
		}
	default:
	}
	timer := time.NewTimer(t.s.cfg.FallbackStallTimeout)
	defer timer.Stop()
	select {
	case q <- it:
	case <-t.done:
	case <-timer.C:
		t.s.log.Warn("frontend not reading; resetting connection", "address", t.address, "agentID", t.b.agentID)
		t.s.abort(t, errors.New("connection reset: client not reading (agent without flow control)"), true)
	}
}

func (t *tunnel) fallbackWriter() {
	for {
		select {
		case it := <-t.q:
			if it.close {
				t.front.closed(t, it.err)
				return
			}
			if err := t.deliver(it.data); err != nil {
				t.s.abort(t, err, true)
				return
			}
		case <-t.done:
			t.mu.Lock()
			fast := t.fast
			t.mu.Unlock()
			if fast {
				return
			}
			// Closed normally: flush what is queued, then report the close.
			for {
				select {
				case it := <-t.q:
					if it.close {
						t.front.closed(t, it.err)
						return
					}
					if err := t.deliver(it.data); err != nil {
						t.front.closed(t, err)
						return
					}
				default:
					t.front.closed(t, t.closeErrLocked())
					return
				}
			}
		}
	}
}

func (t *tunnel) closeErrLocked() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closeErr
}

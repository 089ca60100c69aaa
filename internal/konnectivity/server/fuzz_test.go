package server

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"github.com/tether-dev/tether/internal/konnectivity/wire"
)

// fakeStream is an in-memory bidirectional packet stream (server side).
type fakeStream struct {
	ctx    context.Context
	in     chan *client.Packet
	mu     sync.Mutex
	out    []*client.Packet
	header metadata.MD
}

func newFakeStream(md metadata.MD) *fakeStream {
	return &fakeStream{ctx: metadata.NewIncomingContext(context.Background(), md), in: make(chan *client.Packet)}
}

func (f *fakeStream) Recv() (*client.Packet, error) {
	p, ok := <-f.in
	if !ok {
		return nil, io.EOF
	}
	return p, nil
}

func (f *fakeStream) Send(p *client.Packet) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.out = append(f.out, proto.Clone(p).(*client.Packet))
	return nil
}

func (f *fakeStream) sent() []*client.Packet {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*client.Packet(nil), f.out...)
}

func (f *fakeStream) SetHeader(md metadata.MD) error  { f.header = md; return nil }
func (f *fakeStream) SendHeader(md metadata.MD) error { f.header = md; return nil }
func (f *fakeStream) SetTrailer(metadata.MD)          {}
func (f *fakeStream) Context() context.Context        { return f.ctx }
func (f *fakeStream) SendMsg(any) error               { return nil }
func (f *fakeStream) RecvMsg(any) error               { return nil }

// FuzzStreams feeds decoded packets, interleaved, to one agent stream and one
// frontend stream of a server. Small IDs in the input are replaced by the IDs
// the server really issued, so the fuzzer reaches established connections.
// The server must not panic, must end both streams, and must be left with no
// pending dial and no connection.
func FuzzStreams(f *testing.F) {
	enc := func(target byte, p *client.Packet) []byte {
		b, _ := proto.Marshal(p)
		out := []byte{target}
		return protowire.AppendBytes(out, b)
	}
	var seed []byte
	seed = append(seed, enc(0, &client.Packet{Type: client.PacketType_DIAL_REQ, Payload: &client.Packet_DialRequest{DialRequest: &client.DialRequest{Protocol: "tcp", Address: "a:1", Random: 9}}})...)
	seed = append(seed, enc(1, &client.Packet{Type: client.PacketType_DIAL_RSP, Payload: &client.Packet_DialResponse{DialResponse: &client.DialResponse{Random: 0, ConnectID: 3}}})...)
	seed = append(seed, enc(1, &client.Packet{Type: client.PacketType_DATA, Payload: &client.Packet_Data{Data: &client.Data{ConnectID: 3, Data: []byte("hi")}}})...)
	seed = append(seed, enc(0, &client.Packet{Type: client.PacketType_DATA, Payload: &client.Packet_Data{Data: &client.Data{ConnectID: 0, Data: []byte("yo")}}})...)
	seed = append(seed, enc(0, &client.Packet{Type: client.PacketType_CLOSE_REQ, Payload: &client.Packet_CloseRequest{CloseRequest: &client.CloseRequest{ConnectID: 0}}})...)
	seed = append(seed, enc(1, &client.Packet{Type: client.PacketType_CLOSE_RSP, Payload: &client.Packet_CloseResponse{CloseResponse: &client.CloseResponse{ConnectID: 3}}})...)
	f.Add(seed)
	f.Add(enc(1, &client.Packet{Type: client.PacketType_DIAL_CLS, Payload: &client.Packet_CloseDial{CloseDial: &client.CloseDial{Random: 0}}}))
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := New(Config{DialTimeout: time.Minute, CloseTimeout: 50 * time.Millisecond, FallbackStallTimeout: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		agentS := newFakeStream(metadata.Pairs(wire.MDAgentID, "a1", wire.MDAgentIdentifiers, "host=a"))
		frontS := newFakeStream(nil)
		var wg sync.WaitGroup
		wg.Go(func() { _ = s.Connect(agentS) })
		for s.ReadyAgents() == 0 {
			time.Sleep(time.Millisecond)
		}
		wg.Go(func() { _ = s.Proxy(frontS) })
		agentDone, frontDone := false, false
		for len(in) > 1 && !(agentDone && frontDone) {
			target := in[0]
			b, n := protowire.ConsumeBytes(in[1:])
			if n < 0 {
				break
			}
			in = in[1+n:]
			var p client.Packet
			if proto.Unmarshal(b, &p) != nil {
				continue
			}
			if target%2 == 0 {
				if frontDone {
					continue
				}
				fixFrontendIDs(&p, frontS.sent())
				if !feed(frontS, &p) {
					frontDone = true
				}
			} else {
				if agentDone {
					continue
				}
				fixAgentIDs(&p, agentS.sent())
				if !feed(agentS, &p) {
					agentDone = true
				}
			}
		}
		close(frontS.in)
		close(agentS.in)
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("stream handlers did not return")
		}
		deadline := time.Now().Add(5 * time.Second)
		for st := s.Stats(); st.Pending != 0 || st.Established != 0 || st.Backends != 0; st = s.Stats() {
			if time.Now().After(deadline) {
				t.Fatalf("state left behind: %+v", st)
			}
			time.Sleep(time.Millisecond)
		}
	})
}

// feed hands p to the handler; false if the handler stopped reading.
func feed(f *fakeStream, p *client.Packet) bool {
	select {
	case f.in <- p:
		return true
	case <-time.After(time.Second):
		return false
	}
}

func fixAgentIDs(p *client.Packet, sent []*client.Packet) {
	var dials []int64
	for _, s := range sent {
		if r := s.GetDialRequest(); r != nil {
			dials = append(dials, r.Random)
		}
	}
	if len(dials) == 0 {
		return
	}
	if r := p.GetDialResponse(); r != nil && r.Random >= 0 && r.Random < 8 {
		r.Random = dials[int(r.Random)%len(dials)]
	}
	if r := p.GetCloseDial(); r != nil && r.Random >= 0 && r.Random < 8 {
		r.Random = dials[int(r.Random)%len(dials)]
	}
}

func fixFrontendIDs(p *client.Packet, sent []*client.Packet) {
	var ids []int64
	for _, s := range sent {
		if r := s.GetDialResponse(); r != nil && r.ConnectID != 0 {
			ids = append(ids, r.ConnectID)
		}
	}
	if len(ids) == 0 {
		return
	}
	if d := p.GetData(); d != nil && d.ConnectID >= 0 && d.ConnectID < 8 {
		d.ConnectID = ids[int(d.ConnectID)%len(ids)]
	}
	if c := p.GetCloseRequest(); c != nil && c.ConnectID >= 0 && c.ConnectID < 8 {
		c.ConnectID = ids[int(c.ConnectID)%len(ids)]
	}
}

package konnectivity_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clientpb "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
	agentpb "sigs.k8s.io/apiserver-network-proxy/proto/agent"

	"github.com/tether-dev/tether/internal/konnectivity/agent"
	"github.com/tether-dev/tether/internal/konnectivity/client"
	"github.com/tether-dev/tether/internal/konnectivity/konnectivitytest"
	"github.com/tether-dev/tether/internal/konnectivity/server"
	"github.com/tether-dev/tether/internal/konnectivity/wire"
)

func newPKI(t testing.TB) *konnectivitytest.PKI {
	t.Helper()
	pki, err := konnectivitytest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	return pki
}

// TestNoHeadOfLineBlocking: a connection whose reader is stalled while its
// endpoint keeps writing must not slow another connection on the same agent.
func TestNoHeadOfLineBlocking(t *testing.T) {
	pki := newPKI(t)
	backend := konnectivitytest.NewBackend(t)
	for _, tc := range []struct {
		name string
		mode string
	}{{"grpc", server.ModeGRPC}, {"http-connect", server.ModeHTTPConnect}} {
		t.Run(tc.name, func(t *testing.T) {
			e := startOurServer(t, pki, serverOpts{mode: tc.mode})
			startOurAgent(t, e, agentOpts{id: "a1"})
			d := newDialer(t, e, frontendKind{})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			stalled, err := d.DialContext(ctx, "tcp", backend.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer stalled.Close()
			if err := konnectivitytest.Command(stalled, konnectivitytest.CmdDownload, 1<<40); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(stalled, make([]byte, 64<<10)); err != nil {
				t.Fatal(err)
			}
			// stalled is never read again. Upstream blocks the whole agent
			// stream after ~5-10 MiB; move more than that on other
			// connections, each freshly dialled.
			rounds, size := 3, int64(32<<20)
			if raceEnabled {
				rounds, size = 2, 16<<20
			}
			for i := range rounds {
				c, err := d.DialContext(ctx, "tcp", backend.Addr())
				if err != nil {
					t.Fatalf("dial %d while another connection is stalled: %v", i, err)
				}
				if err := konnectivitytest.Command(c, konnectivitytest.CmdDownload, size); err != nil {
					t.Fatal(err)
				}
				n, err := io.Copy(io.Discard, c)
				_ = c.Close()
				if err != nil || n != size {
					t.Fatalf("download %d while another connection is stalled: %d bytes, %v", i, n, err)
				}
			}
		})
	}
}

// TestDialCancelRace cancels dials at every stage; nothing may leak at the
// agent, the server or the endpoint.
func TestDialCancelRace(t *testing.T) {
	pki := newPKI(t)
	backend := konnectivitytest.NewBackend(t)
	for _, mode := range []string{server.ModeGRPC, server.ModeHTTPConnect} {
		t.Run(mode, func(t *testing.T) {
			e := startOurServer(t, pki, serverOpts{mode: mode})
			a := startOurAgent(t, e, agentOpts{id: "a1"})
			d := newDialer(t, e, frontendKind{})
			var ok, cancelled int
			for i := range 300 {
				ctx, cancel := context.WithCancel(context.Background())
				if i%3 == 0 {
					cancel() // before the dial
				} else {
					go cancel() // racing the dial
				}
				c, err := d.DialContext(ctx, "tcp", backend.Addr())
				if err == nil {
					ok++
					if i%2 == 0 {
						_ = konnectivitytest.Command(c, konnectivitytest.CmdEcho, 0)
					}
					_ = c.Close()
				} else {
					cancelled++
				}
				cancel()
			}
			t.Logf("%d dials completed, %d cancelled", ok, cancelled)
			konnectivitytest.Eventually(t, 15*time.Second, "no leaked connections", func() bool {
				st := e.ours.Stats()
				return st.Pending == 0 && st.Established == 0 && a.ours.OpenConns() == 0 && backend.Conns() == 0
			})
		})
	}
}

// TestHAAgentConnectsToEveryServer: an agent given several addresses connects
// to all, keeps serving through a server restart and reconnects.
func TestHAAgentConnectsToEveryServer(t *testing.T) {
	pki := newPKI(t)
	backend := konnectivitytest.NewBackend(t)
	s1 := startOurServer(t, pki, serverOpts{serverID: "s1", serverCnt: 2})
	s2 := startOurServer(t, pki, serverOpts{serverID: "s2", serverCnt: 2})
	a := startOurAgent(t, nil, agentOpts{pki: pki, id: "a1", servers: []string{s1.agentAddr, s2.agentAddr}})
	konnectivitytest.Eventually(t, 10*time.Second, "both servers see the agent", func() bool {
		return s1.ours.ReadyAgents() == 1 && s2.ours.ReadyAgents() == 1
	})
	d2 := newDialer(t, s2, frontendKind{})
	addr1 := s1.agentAddr
	s1.stop()
	exercise(t, d2, backend.Addr())
	konnectivitytest.Eventually(t, 5*time.Second, "agent notices server 1 gone", func() bool { return len(a.ours.ConnectedServers()) == 1 })
	// Restart server 1 on the same address: the agent must come back.
	s1b := startOurServerAt(t, pki, "s1", addr1)
	konnectivitytest.Eventually(t, 10*time.Second, "agent reconnects to restarted server", func() bool { return s1b.ours.ReadyAgents() == 1 })
	exercise(t, newDialer(t, s1b, frontendKind{}), backend.Addr())
}

func startOurServerAt(t testing.TB, pki *konnectivitytest.PKI, id, agentAddr string) *env {
	t.Helper()
	s, err := server.New(server.Config{ServerID: id, ServerCount: 2})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{pki: pki, mode: server.ModeGRPC, ours: s, uds: shortTempDir(t) + "/k.sock"}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan server.Addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- s.Run(ctx, server.ListenConfig{UDSName: e.uds, AgentAddr: agentAddr, AgentTLS: pki.ServerTLS(t),
			Ready: func(a server.Addrs) { ready <- a }})
	}()
	select {
	case a := <-ready:
		e.agentAddr = a.Agent.String()
	case err := <-done:
		cancel()
		t.Fatal(err)
	}
	e.stop = func() { cancel(); <-done }
	t.Cleanup(e.stop)
	return e
}

// TestHAServerCountBehindOneAddress: with one load-balanced address the agent
// opens serverCount connections and ends up on every server.
func TestHAServerCountBehindOneAddress(t *testing.T) {
	pki := newPKI(t)
	s1 := startOurServer(t, pki, serverOpts{serverID: "s1", serverCnt: 2})
	s2 := startOurServer(t, pki, serverOpts{serverID: "s2", serverCnt: 2})
	lb := konnectivitytest.NewRoundRobinProxy(t, s1.agentAddr, s2.agentAddr)
	a := startOurAgent(t, nil, agentOpts{pki: pki, id: "a1", servers: []string{lb}, waitCount: 2})
	if got := len(a.ours.ConnectedServers()); got != 2 {
		t.Fatalf("connected to %d servers, want 2", got)
	}
	if s1.ours.ReadyAgents() != 1 || s2.ours.ReadyAgents() != 1 {
		konnectivitytest.Eventually(t, 5*time.Second, "both servers see the agent", func() bool {
			return s1.ours.ReadyAgents() == 1 && s2.ours.ReadyAgents() == 1
		})
	}
}

// recordingDialer makes an agent dial the backend whatever the address, and
// records which agent got the dial.
func recordingDialer(name string, got *sync.Map, backend string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		got.Store(addr, name)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", backend)
	}
}

func TestRoutingStrategies(t *testing.T) {
	pki := newPKI(t)
	backend := konnectivitytest.NewBackend(t)
	var got sync.Map
	strategies, err := server.ParseStrategies("nodeName,destHost,defaultRoute")
	if err != nil {
		t.Fatal(err)
	}
	e := startOurServer(t, pki, serverOpts{cfg: server.Config{Strategies: strategies}})
	idsA, _ := wire.ParseIdentifiers("host=node-a.example&ipv4=10.1.0.5&cidr=10.2.0.0/16&ipv6=fd00::5")
	startOurAgent(t, e, agentOpts{id: "node-a", cfg: agent.Config{Identifiers: idsA, DialEndpoint: recordingDialer("node-a", &got, backend.Addr())}})
	startOurAgent(t, e, agentOpts{id: "node-b", cfg: agent.Config{Identifiers: wire.Identifiers{DefaultRoute: true}, DialEndpoint: recordingDialer("node-b", &got, backend.Addr())}})
	startOurAgent(t, e, agentOpts{id: "node-c", cfg: agent.Config{DialEndpoint: recordingDialer("node-c", &got, backend.Addr())}})
	d := newDialer(t, e, frontendKind{})
	for _, tc := range []struct{ addr, want string }{
		{"node-c:10250", "node-c"},
		{"node-b:10250", "node-b"},
		{"node-a.example:22", "node-a"},
		{"10.1.0.5:80", "node-a"},
		{"10.2.200.1:80", "node-a"},
		{"[fd00::5]:80", "node-a"},
		{"8.8.8.8:53", "node-b"},
		{"elsewhere.example:443", "node-b"},
	} {
		c, err := d.DialContext(context.Background(), "tcp", tc.addr)
		if err != nil {
			t.Fatalf("dial %s: %v", tc.addr, err)
		}
		_ = c.Close()
		v, _ := got.Load(tc.addr)
		if v != tc.want {
			t.Errorf("dial %s went to %v, want %s", tc.addr, v, tc.want)
		}
	}
	// destHost only: an unknown destination is a clear error.
	e2 := startOurServer(t, pki, serverOpts{cfg: server.Config{Strategies: []server.Strategy{server.StrategyDestHost}}})
	startOurAgent(t, e2, agentOpts{id: "node-a", cfg: agent.Config{Identifiers: idsA}})
	_, err = newDialer(t, e2, frontendKind{}).DialContext(context.Background(), "tcp", "192.0.2.1:80")
	if err == nil || !strings.Contains(err.Error(), "no konnectivity agent available") {
		t.Fatalf("dial with no matching agent: %v", err)
	}
}

func TestAgentIdentity(t *testing.T) {
	pki := newPKI(t)
	backend := konnectivitytest.NewBackend(t)
	cfg := server.Config{
		Authenticator: server.CertAuthenticator{Allow: func(cn string) error {
			if !strings.HasPrefix(cn, "system:node:") {
				return errors.New("not a node certificate")
			}
			return nil
		}},
		Entitled: server.NodeEntitlement(func(name string) ([]netip.Addr, error) {
			return map[string][]netip.Addr{"n1": {netip.MustParseAddr("10.0.0.1")}, "n2": {netip.MustParseAddr("10.0.0.2")}}[name], nil
		}, false),
	}
	e := startOurServer(t, pki, serverOpts{cfg: cfg})
	// Entitled: own name, own address.
	ids, _ := wire.ParseIdentifiers("host=n1&ipv4=10.0.0.1")
	startOurAgent(t, e, agentOpts{id: "n1", cn: "system:node:n1", cfg: agent.Config{Identifiers: ids}})
	exercise(t, newDialer(t, e, frontendKind{}), backend.Addr())
	for _, tc := range []struct {
		name, id, cn, ids string
	}{
		{"not a node cert", "n2", "someone", ""},
		{"other node's name", "n1", "system:node:n2", ""},
		{"other node's address", "n2", "system:node:n2", "ipv4=10.0.0.1"},
		{"claims default route", "n2", "system:node:n2", "default-route=true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids, _ := wire.ParseIdentifiers(tc.ids)
			a := startOurAgent(t, e, agentOpts{id: tc.id, cn: tc.cn, noWait: true, cfg: agent.Config{Identifiers: ids}})
			// The agent is refused at every attempt: check it has tried and failed.
			konnectivitytest.Eventually(t, 5*time.Second, "agent rejected", func() bool {
				return metricValue(t, a.ours, "konnectivity_network_proxy_agent_server_connection_failure_count") >= 2
			})
			if n := len(a.ours.ConnectedServers()); n != 0 {
				t.Fatalf("rejected agent connected to %d servers", n)
			}
			a.stop()
		})
	}
	if n := e.ours.ReadyAgents(); n != 1 {
		t.Fatalf("server has %d agents, want only the entitled one", n)
	}
}

func TestTokenReviewAuthenticator(t *testing.T) {
	pki := newPKI(t)
	cs := fake.NewClientset()
	cs.PrependReactor("create", "tokenreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
		tr := action.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		res := tr.DeepCopy()
		if tr.Spec.Token == "good" {
			res.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: tr.Spec.Audiences,
				User: authnv1.UserInfo{Username: "system:serviceaccount:kube-system:konnectivity-agent"}}
		}
		return true, res, nil
	})
	auth := server.TokenReviewAuthenticator{Client: cs, Namespace: "kube-system", ServiceAccount: "konnectivity-agent", Audience: "system:konnectivity-server"}
	e := startOurServer(t, pki, serverOpts{cfg: server.Config{Authenticator: auth}})
	dir := t.TempDir()
	for _, tc := range []struct {
		token string
		ok    bool
	}{{"good", true}, {"bad", false}} {
		t.Run(tc.token, func(t *testing.T) {
			path := dir + "/" + tc.token
			if err := writeFile(path, tc.token+"\n"); err != nil {
				t.Fatal(err)
			}
			a := startOurAgent(t, e, agentOpts{id: "a-" + tc.token, noWait: !tc.ok, cfg: agent.Config{TokenPath: path}})
			if !tc.ok {
				konnectivitytest.Eventually(t, 5*time.Second, "agent rejected", func() bool {
					return metricValue(t, a.ours, "konnectivity_network_proxy_agent_server_connection_failure_count") >= 2
				})
				if len(a.ours.ConnectedServers()) != 0 {
					t.Fatal("agent with a bad token connected")
				}
			}
			a.stop()
		})
	}
}

func TestAgentAllowList(t *testing.T) {
	pki := newPKI(t)
	backend := konnectivitytest.NewBackend(t)
	e := startOurServer(t, pki, serverOpts{})
	startOurAgent(t, e, agentOpts{id: "a1", cfg: agent.Config{AllowedDestinations: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}})
	d := newDialer(t, e, frontendKind{})
	exercise(t, d, backend.Addr())
	_, port, _ := net.SplitHostPort(backend.Addr())
	for _, addr := range []string{"192.0.2.1:80", "[::1]:" + port} {
		_, err := d.DialContext(context.Background(), "tcp", addr)
		if err == nil || !strings.Contains(err.Error(), "not allowed") {
			t.Fatalf("dial %s outside the allow-list: %v", addr, err)
		}
	}
}

func TestHTTPConnectHeaderTimeout(t *testing.T) {
	pki := newPKI(t)
	s, err := server.New(server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	uds := shortTempDir(t) + "/h.sock"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		done <- s.Run(ctx, server.ListenConfig{Mode: server.ModeHTTPConnect, UDSName: uds, HTTPConnectHeaderTimeout: 200 * time.Millisecond,
			Ready: func(server.Addrs) { close(ready) }})
	}()
	<-ready
	defer func() { cancel(); <-done }()
	_ = pki
	c, err := net.Dial("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "CONNECT 10.0.0.1:80 HTTP/1.1\r\nHost: 10.0.0.1"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(c) // the server must hang up on the slow client
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("server kept a connection with unfinished headers open")
	}
}

func TestAgentMetricsFromStartup(t *testing.T) {
	var addr atomic.Value
	ready := make(chan struct{})
	a, err := agent.New(agent.Config{Servers: []string{"127.0.0.1:1"}, InsecureTCP: true, HealthAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		Ready: func(h, _ net.Addr) { addr.Store(h.String()); close(ready) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-ready
	res, err := http.Get("http://" + addr.Load().(string) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	_ = res.Body.Close()
	if !strings.Contains(string(body), "konnectivity_network_proxy_agent_open_server_connections 0") {
		t.Fatalf("open_server_connections missing at start-up:\n%s", body)
	}
	res, err = http.Get("http://" + addr.Load().(string) + "/healthz")
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", res, err)
	}
	_ = res.Body.Close()
}

// fakeServer is a minimal AgentService that lets a test script the server side.
type fakeServer struct {
	agentpb.UnimplementedAgentServiceServer
	streams chan agentpb.AgentService_ConnectServer
	hold    chan struct{}
}

func (f *fakeServer) Connect(s agentpb.AgentService_ConnectServer) error {
	md, _ := metadata.FromIncomingContext(s.Context())
	if len(md.Get(wire.MDConnStream)) > 0 {
		return errors.New("not supported")
	}
	_ = s.SendHeader(metadata.Pairs(wire.MDServerID, "fake", wire.MDServerCount, "1"))
	f.streams <- s
	select {
	case <-f.hold:
	case <-s.Context().Done():
	}
	return nil
}

func TestAgentRejectsBadDialsAndMalformedPackets(t *testing.T) {
	pki := newPKI(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fs := &fakeServer{streams: make(chan agentpb.AgentService_ConnectServer, 4), hold: make(chan struct{})}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(pki.ServerTLS(t))))
	agentpb.RegisterAgentServiceServer(gs, fs)
	go func() { _ = gs.Serve(l) }()
	defer gs.Stop()
	defer close(fs.hold)
	var dialed atomic.Int32
	startOurAgent(t, nil, agentOpts{pki: pki, id: "a1", servers: []string{l.Addr().String()}, cfg: agent.Config{
		DialEndpoint: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dialed.Add(1)
			return nil, errors.New("unexpected dial")
		}}})
	s := <-fs.streams
	for _, proto := range []string{"unix", "udp", ""} {
		if err := s.Send(&clientpb.Packet{Type: clientpb.PacketType_DIAL_REQ, Payload: &clientpb.Packet_DialRequest{
			DialRequest: &clientpb.DialRequest{Protocol: proto, Address: "/var/run/docker.sock", Random: 7}}}); err != nil {
			t.Fatal(err)
		}
		pkt, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if pkt.Type != clientpb.PacketType_DIAL_RSP || !strings.Contains(pkt.GetDialResponse().Error, "not allowed") {
			t.Fatalf("protocol %q: got %v", proto, pkt)
		}
	}
	if dialed.Load() != 0 {
		t.Fatal("agent dialled a non-tcp request")
	}
	// A malformed packet ends this stream only; the agent reconnects.
	if err := s.Send(&clientpb.Packet{Type: clientpb.PacketType_DATA}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("agent kept a stream that sent a malformed packet")
	}
	select {
	case <-fs.streams:
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not reconnect after a malformed packet")
	}
}

func TestServerMalformedFrontendPacketClosesOnlyThatStream(t *testing.T) {
	pki := newPKI(t)
	backend := konnectivitytest.NewBackend(t)
	e := startOurServer(t, pki, serverOpts{})
	startOurAgent(t, e, agentOpts{id: "a1"})
	d := newDialer(t, e, frontendKind{})
	good, err := d.DialContext(context.Background(), "tcp", backend.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	if err := konnectivitytest.Command(good, konnectivitytest.CmdEcho, 0); err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("unix://"+e.uds, grpc.WithTransportCredentials(insecureCreds()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for _, bad := range []*clientpb.Packet{
		{Type: clientpb.PacketType_DIAL_REQ},
		{Type: clientpb.PacketType_DATA, Payload: &clientpb.Packet_CloseRequest{CloseRequest: &clientpb.CloseRequest{}}},
		{Type: 99},
	} {
		st, err := clientpb.NewProxyServiceClient(cc).Proxy(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(bad); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err == nil || !strings.Contains(err.Error(), "malformed") {
			t.Fatalf("bad packet %v: %v", bad, err)
		}
	}
	if err := konnectivitytest.EchoRoundTrip(good, []byte("still alive")); err != nil {
		t.Fatal(err)
	}
	if e.ours.ReadyAgents() != 1 {
		t.Fatal("agent lost")
	}
}

var _ = bufio.NewReader
var _ = fmt.Sprint
var _ = client.ErrReset

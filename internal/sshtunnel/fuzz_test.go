package sshtunnel

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// FuzzEndpointChannelOpen sends arbitrary channel-open requests (type and
// payload) to a running Endpoint over one authenticated connection: each is
// refused unless it is a well-formed direct-tcpip to the allowed echo
// server, and the endpoint keeps serving (a keepalive is answered after
// every input). Complements FuzzParseDirectTCPIP with the whole handler.
func FuzzEndpointChannelOpen(f *testing.F) {
	echo := echoServer(f)
	hub, host := newSigner(f), newSigner(f)
	sshAddr := startEndpoint(f, host, hub.PublicKey(), Destinations{IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Ports: []uint16{uint16(echo.Port)}})
	c, err := ssh.Dial("tcp", sshAddr.String(), &ssh.ClientConfig{User: "tether", Auth: []ssh.AuthMethod{ssh.PublicKeys(hub)},
		HostKeyCallback: ssh.FixedHostKey(host.PublicKey()), Timeout: 10 * time.Second})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { c.Close() })
	allowed := ssh.Marshal(wirePayload{"127.0.0.1", uint32(echo.Port), "127.0.0.1", 1})
	f.Add("direct-tcpip", allowed)
	f.Add("direct-tcpip", ssh.Marshal(wirePayload{"127.0.0.1", 22, "", 0}))
	f.Add("direct-tcpip", ssh.Marshal(wirePayload{"localhost", uint32(echo.Port), "", 0}))
	f.Add("direct-tcpip", []byte{0, 0, 0, 200, 1})
	f.Add("session", []byte(nil))
	f.Add("x11", ssh.Marshal(struct {
		A string
		P uint32
	}{"127.0.0.1", 6000}))
	f.Add("direct-streamlocal@openssh.com", ssh.Marshal(struct {
		Path, R string
		P       uint32
	}{"/run/x.sock", "", 0}))
	f.Add("auth-agent@openssh.com", []byte(nil))
	f.Fuzz(func(t *testing.T, typ string, payload []byte) {
		if len(typ) > 64 || len(payload) > 4096 {
			return
		}
		ch, reqs, err := c.OpenChannel(typ, payload)
		if err == nil {
			go ssh.DiscardRequests(reqs)
			ch.Close()
			p, perr := parseDirectTCPIP(payload)
			if typ != "direct-tcpip" || perr != nil || p.Host != netip.MustParseAddr("127.0.0.1") || p.Port != uint16(echo.Port) {
				t.Fatalf("endpoint accepted channel %q with payload %x", typ, payload)
			}
		}
		if _, _, err := c.SendRequest("keepalive@openssh.com", true, nil); err != nil {
			t.Fatalf("endpoint stopped serving after channel %q %x: %v", typ, payload, err)
		}
	})
}

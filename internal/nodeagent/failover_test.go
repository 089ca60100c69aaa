package nodeagent

import (
	"context"
	"net"
	"testing"
)

func TestFailoverDialer(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	live, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	go func() {
		for {
			c, err := live.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	switched := ""
	d := &failoverDialer{addrs: []string{deadAddr, live.Addr().String()}, timeout: 2e9, onSwitch: func(a string) { switched = a }}
	c, err := d.DialContext(context.Background(), "tcp", deadAddr)
	if err != nil {
		t.Fatalf("dial with one live replica: %v", err)
	}
	c.Close()
	if c.RemoteAddr().String() != live.Addr().String() || switched != live.Addr().String() || d.cur != 1 {
		t.Fatalf("connected to %s, switched %q, cur %d", c.RemoteAddr(), switched, d.cur)
	}
	// All down: a clear error, not a hang.
	live.Close()
	if _, err := d.DialContext(context.Background(), "tcp", deadAddr); err == nil {
		t.Fatal("dial with no live replica succeeded")
	}
}

func TestServersValidated(t *testing.T) {
	if _, err := New(Config{DataDir: t.TempDir(), NodeName: "n", Server: "https://127.0.0.1:1", Servers: []string{"http://127.0.0.1:2"}}); err == nil {
		t.Fatal("plain-HTTP replica accepted")
	}
	a, err := New(Config{DataDir: t.TempDir(), NodeName: "n", Servers: []string{"https://127.0.0.1:1", "https://127.0.0.1:2"}})
	if err != nil {
		t.Fatal(err)
	}
	if a.cfg.Server != "https://127.0.0.1:1" || len(a.cfg.Servers) != 1 {
		t.Fatalf("server %q, servers %v", a.cfg.Server, a.cfg.Servers)
	}
}

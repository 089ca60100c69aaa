package isolation

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestTopology builds a two-node topology and checks, with real sockets in
// the namespaces, that nodes reach the hub's allowed port only, the hub
// reaches nodes only on the SSH port, and Close leaves nothing behind.
func TestTopology(t *testing.T) {
	if err := Check(); err != nil {
		t.Fatalf("this test needs root and iproute2 (CI runs as root): %v", err)
	}
	for _, ssh := range []bool{false, true} {
		t.Run("ssh="+strconv.FormatBool(ssh), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cfg := Config{
				StateFile: filepath.Join(t.TempDir(), "isolation.json"),
				CIDR:      netip.MustParsePrefix("100.73.0.0/16"),
				Nodes:     2, HubPorts: []uint16{6443},
				Prefix: "tu" + strconv.FormatInt(int64(os.Getpid()), 36) + map[bool]string{false: "a", true: "b"}[ssh],
			}
			if ssh {
				cfg.HubToNodePorts = []uint16{22}
			}
			topo, err := Create(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			closed := false
			defer func() {
				if !closed {
					topo.Close()
				}
			}()
			listen := func(ns, addr string) net.Listener {
				var ln net.Listener
				if err := inNetNS(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
					t.Fatal(err)
				}
				go func() {
					for {
						c, err := ln.Accept()
						if err != nil {
							return
						}
						c.Write([]byte("hi"))
						c.Close()
					}
				}()
				t.Cleanup(func() { ln.Close() })
				return ln
			}
			hubAddr := net.JoinHostPort(topo.HubIP.String(), "6443")
			listen(topo.HubNS, hubAddr)
			listen(topo.HubNS, net.JoinHostPort(topo.HubIP.String(), "7000"))
			n1 := topo.Nodes[0]
			listen(n1.NetNS, net.JoinHostPort(n1.IP.String(), "10250"))
			listen(n1.NetNS, net.JoinHostPort(n1.IP.String(), "22"))
			dial := func(ns, addr string) error {
				dctx, cancel := context.WithTimeout(ctx, time.Second)
				defer cancel()
				c, err := DialContext(dctx, ns, addr)
				if err != nil {
					return err
				}
				defer c.Close()
				b := make([]byte, 2)
				_, err = c.Read(b)
				return err
			}
			for _, n := range topo.Nodes {
				if err := dial(n.NetNS, hubAddr); err != nil {
					t.Errorf("%s → hub: %v", n.Name, err)
				}
				if err := dial(n.NetNS, net.JoinHostPort(topo.HubIP.String(), "7000")); err == nil {
					t.Errorf("%s → hub port 7000 (not allowed) connected", n.Name)
				}
			}
			err = dial(topo.HubNS, net.JoinHostPort(n1.IP.String(), "10250"))
			if err == nil {
				t.Fatal("hub → node kubelet port connected")
			}
			if !ssh && !errors.Is(err, syscall.ENETUNREACH) {
				t.Errorf("hub → node without SSH egress: %v, want network unreachable (no route)", err)
			}
			if err := dial(topo.HubNS, net.JoinHostPort(n1.IP.String(), "22")); ssh && err != nil {
				t.Errorf("hub → node SSH port: %v", err)
			} else if !ssh && err == nil {
				t.Error("hub → node SSH port connected without SSH egress")
			}
			if d, err := topo.Dropped(); err != nil || (ssh && d == 0) {
				t.Errorf("drop counter %d, %v", d, err)
			}
			if err := topo.Close(); err != nil {
				t.Fatal(err)
			}
			closed = true
			for _, ns := range append([]string{topo.Router, topo.HubNS}, topo.nodeNS()...) {
				if _, err := os.Stat(nsPath(ns)); err == nil {
					t.Errorf("namespace %s left behind", ns)
				}
			}
			if _, err := os.Stat(cfg.StateFile); err == nil {
				t.Error("state file left behind")
			}
		})
	}
}

// TestCleanStale: a run that died leaves its state file; the next start
// removes its namespaces and routes, and nothing else.
func TestCleanStale(t *testing.T) {
	if err := Check(); err != nil {
		t.Fatalf("this test needs root and iproute2 (CI runs as root): %v", err)
	}
	ctx := context.Background()
	stateFile := filepath.Join(t.TempDir(), "isolation.json")
	topo, err := Create(ctx, Config{StateFile: stateFile, CIDR: netip.MustParsePrefix("100.74.0.0/16"), Nodes: 1,
		Prefix: "ts" + strconv.FormatInt(int64(os.Getpid()), 36)})
	if err != nil {
		t.Fatal(err)
	}
	// A process inside a namespace, as a crashed run's agent would leave.
	cmd := Command(ctx, topo.Nodes[0].NetNS, "sleep", "300")
	if err := cmd.Start(); err != nil {
		topo.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	// Pretend the recording run is dead.
	topo.state.PID = 0
	if err := topo.state.save(stateFile); err != nil {
		t.Fatal(err)
	}
	if err := CleanStale(stateFile, nil); err != nil {
		topo.Close()
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Error("process in the stale namespace still runs")
	}
	for _, ns := range topo.state.NetNS {
		if _, err := os.Stat(nsPath(ns)); err == nil {
			t.Errorf("namespace %s left behind", ns)
		}
	}
	if len(topo.state.Routes) != 1 {
		t.Errorf("routes recorded %v, want the one unreachable route", topo.state.Routes)
	}
}

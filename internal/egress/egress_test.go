package egress

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "egress.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const sshFile = `apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: SSH
- name: controlplane
  connection:
    proxyProtocol: Direct
`

// TestSelectorFileSSH: proxyProtocol SSH in the file routes the cluster
// egress through the SSH dialer the hub provides.
func TestSelectorFileSSH(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var viaSSH atomic.Int64
	var d net.Dialer
	tunnel := DialerFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
		viaSSH.Add(1)
		return d.DialContext(ctx, network, addr)
	})
	cfg := Config{SelectorConfigFile: writeFile(t, sshFile), SSH: tunnel}
	need, err := NeedsSSH(cfg)
	if err != nil || !need {
		t.Fatalf("NeedsSSH = %v, %v", need, err)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Mode("cluster") != ModeSSH || s.Mode("controlplane") != ModeDirect {
		t.Fatalf("modes: cluster %q controlplane %q", s.Mode("cluster"), s.Mode("controlplane"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := s.Cluster().DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if viaSSH.Load() != 1 {
		t.Fatalf("cluster dial did not use the SSH dialer")
	}
}

func TestSelectorFileSSHErrors(t *testing.T) {
	tunnel := DialerFunc(func(context.Context, string, string) (net.Conn, error) { return nil, nil })
	tests := []struct {
		name, file string
		ssh        Dialer
		want       string
	}{
		{"no-tunneler", sshFile, nil, "needs the SSH tunneler"},
		{"etcd", strings.Replace(sshFile, "name: cluster", "name: etcd", 1), tunnel, "only for the cluster egress"},
		{"transport", strings.Replace(sshFile, "proxyProtocol: SSH", "proxyProtocol: SSH\n    transport:\n      uds:\n        udsName: /x", 1), tunnel, "takes no transport"},
		{"unknown-protocol", strings.Replace(sshFile, "proxyProtocol: SSH", "proxyProtocol: Telnet", 1), tunnel, "unsupported proxyProtocol"},
		{"unknown-name", strings.Replace(sshFile, "name: cluster", "name: moon", 1), tunnel, "unknown egress name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(Config{SelectorConfigFile: writeFile(t, tt.file), SSH: tt.ssh})
			if err == nil {
				s.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not say %q", err, tt.want)
			}
		})
	}
	if need, err := NeedsSSH(Config{Mode: ModeDirect}); err != nil || need {
		t.Fatalf("direct: NeedsSSH = %v, %v", need, err)
	}
	if _, err := NeedsSSH(Config{SelectorConfigFile: writeFile(t, "kind: Nope\n")}); err == nil {
		t.Fatal("bad file accepted")
	}
}

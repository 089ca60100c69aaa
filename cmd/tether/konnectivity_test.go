package main

import (
	"strings"
	"testing"
)

// Upstream proxy-server / proxy-agent flag defaults (cmd/*/app/options in
// apiserver-network-proxy v0.36.0); a manifest written for upstream must
// behave the same when only the binary changes.
func TestKonnectivityFlagDefaultsMatchUpstream(t *testing.T) {
	for _, tc := range []struct {
		cmd  string
		want map[string]string
	}{
		{"server", map[string]string{
			"mode": "grpc", "uds-name": "", "server-port": "8090", "agent-port": "8091", "health-port": "8092",
			"admin-port": "8095", "admin-bind-address": "127.0.0.1", "server-count": "1", "proxy-strategies": "default",
			"keepalive-time": "1h0m0s", "frontend-keepalive-time": "1h0m0s", "delete-existing-uds-file": "true",
			"lease-namespace": "kube-system", "lease-label": "k8s-app=konnectivity-server", "enable-lease-controller": "false",
			"cluster-cert": "", "cluster-key": "", "cluster-ca-cert": "", "server-cert": "", "server-key": "", "server-ca-cert": "",
			"agent-namespace": "", "agent-service-account": "", "authentication-audience": "", "kubeconfig": "",
		}},
		{"agent", map[string]string{
			"proxy-server-host": "127.0.0.1", "proxy-server-port": "8091", "health-server-port": "8093", "admin-server-port": "8094",
			"admin-bind-address": "127.0.0.1", "sync-interval": "1s", "sync-interval-cap": "10s", "probe-interval": "1s",
			"keepalive-time": "1h0m0s", "agent-identifiers": "", "service-account-token-path": "", "xfr-channel-size": "150",
			"count-server-leases": "false", "ca-cert": "", "agent-cert": "", "agent-key": "",
		}},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			cmd := newKonnectivityServerCmd()
			if tc.cmd == "agent" {
				cmd = newKonnectivityAgentCmd()
			}
			for name, want := range tc.want {
				f := cmd.Flags().Lookup(name)
				if f == nil {
					t.Errorf("flag --%s missing", name)
					continue
				}
				if f.DefValue != want {
					t.Errorf("--%s default %q, want %q", name, f.DefValue, want)
				}
			}
		})
	}
}

func TestKonnectivityServerRefusesPlaintextTCP(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"agent listener without cert", []string{"--uds-name=/tmp/x.sock"}, "--cluster-cert"},
		{"frontend TCP without cert", []string{"--cluster-cert=a", "--cluster-key=b", "--insecure-agent-tcp"}, "--server-cert"},
		{"bad mode", []string{"--mode=socks"}, "--mode"},
		{"bad strategy", []string{"--proxy-strategies=random"}, "unknown proxy strategy"},
		{"partial token auth", []string{"--uds-name=/tmp/x.sock", "--insecure-agent-tcp", "--agent-namespace=kube-system"}, "must be set together"},
		{"missing cert file", []string{"--uds-name=/tmp/x.sock", "--cluster-cert=/nonexistent", "--cluster-key=/nonexistent", "--tls-min-version=VersionTLS10"}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, f := konnectivityServerCommand()
			if err := cmd.Flags().Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			_, _, err := f.config(newLogger(false))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}
}

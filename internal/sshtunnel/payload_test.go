package sshtunnel

import (
	"net/netip"
	"testing"

	"golang.org/x/crypto/ssh"
)

type wirePayload struct {
	Host       string
	Port       uint32
	OriginHost string
	OriginPort uint32
}

func TestParseDirectTCPIP(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		want    directTCPIP
		wantErr bool
	}{
		{"ipv4", ssh.Marshal(wirePayload{"10.0.0.1", 10250, "127.0.0.1", 4242}), directTCPIP{Host: netip.MustParseAddr("10.0.0.1"), Port: 10250, OriginHost: "127.0.0.1", OriginPort: 4242}, false},
		{"ipv6", ssh.Marshal(wirePayload{"fd00::1", 80, "", 0}), directTCPIP{Host: netip.MustParseAddr("fd00::1"), Port: 80}, false},
		{"v4-mapped", ssh.Marshal(wirePayload{"::ffff:10.0.0.1", 80, "", 0}), directTCPIP{Host: netip.MustParseAddr("10.0.0.1"), Port: 80}, false},
		{"name", ssh.Marshal(wirePayload{"kubelet.local", 80, "", 0}), directTCPIP{}, true},
		{"zone", ssh.Marshal(wirePayload{"fe80::1%eth0", 80, "", 0}), directTCPIP{}, true},
		{"port0", ssh.Marshal(wirePayload{"10.0.0.1", 0, "", 0}), directTCPIP{}, true},
		{"port-too-big", ssh.Marshal(wirePayload{"10.0.0.1", 70000, "", 0}), directTCPIP{}, true},
		{"trailing", append(ssh.Marshal(wirePayload{"10.0.0.1", 80, "", 0}), 1), directTCPIP{}, true},
		{"empty", nil, directTCPIP{}, true},
		{"short-string", []byte{0, 0, 0, 9, '1'}, directTCPIP{}, true},
		{"huge-length", []byte{0xff, 0xff, 0xff, 0xff}, directTCPIP{}, true},
		{"no-origin", ssh.Marshal(struct {
			H string
			P uint32
		}{"10.0.0.1", 80}), directTCPIP{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseDirectTCPIP(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Fatalf("got %+v want %+v", got, tt.want)
			}
		})
	}
}

func FuzzParseDirectTCPIP(f *testing.F) {
	f.Add(ssh.Marshal(wirePayload{"10.0.0.1", 10250, "127.0.0.1", 4242}))
	f.Add(ssh.Marshal(wirePayload{"fd00::1", 1, "", 0}))
	f.Add([]byte{0, 0, 0, 1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseDirectTCPIP(b)
		if err != nil {
			return
		}
		if !p.Host.IsValid() || p.Port == 0 || p.Host.Zone() != "" {
			t.Fatalf("accepted invalid destination %+v", p)
		}
		// Whatever we accept re-encodes to the same wire form (modulo the
		// canonical spelling of the address).
		again, err := parseDirectTCPIP(ssh.Marshal(wirePayload{p.Host.String(), uint32(p.Port), p.OriginHost, p.OriginPort}))
		if err != nil || again != p {
			t.Fatalf("round trip: %+v → %+v, %v", p, again, err)
		}
		var d Destinations
		_ = d.Allows(p.Host, p.Port)
	})
}

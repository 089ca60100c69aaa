package wire

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
)

func TestParseIdentifiers(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Identifiers
		wantErr bool
	}{
		{in: ""},
		{in: "host=Node-A&host=node-a.example", want: Identifiers{Hosts: []string{"node-a", "node-a.example"}}},
		{in: "ipv4=10.0.0.1&ipv6=fd00::1&cidr=10.1.2.3/16&default-route=true", want: Identifiers{
			IPv4: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, IPv6: []netip.Addr{netip.MustParseAddr("fd00::1")},
			CIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}, DefaultRoute: true}},
		{in: "uid=abc&future=1", want: Identifiers{}},
		{in: "ipv4=fd00::1", wantErr: true},
		{in: "ipv6=10.0.0.1", wantErr: true},
		{in: "cidr=10.0.0.0/33", wantErr: true},
		{in: "default-route=maybe", wantErr: true},
		{in: "host=", wantErr: true},
		{in: "host=a%2Fb", wantErr: true},
		{in: "%zz", wantErr: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseIdentifiers(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if got.Encode() != tc.want.Encode() {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			// Round trip.
			again, err := ParseIdentifiers(got.Encode())
			if err != nil || again.Encode() != got.Encode() {
				t.Fatalf("round trip: %+v, %v", again, err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		pkt  *client.Packet
		ok   bool
	}{
		{"nil", nil, false},
		{"dial", &client.Packet{Type: client.PacketType_DIAL_REQ, Payload: &client.Packet_DialRequest{DialRequest: &client.DialRequest{}}}, true},
		{"dial without payload", &client.Packet{Type: client.PacketType_DIAL_REQ}, false},
		{"data with close payload", &client.Packet{Type: client.PacketType_DATA, Payload: &client.Packet_CloseRequest{CloseRequest: &client.CloseRequest{}}}, false},
		{"drain empty", &client.Packet{Type: client.PacketType_DRAIN}, true},
		{"unknown type", &client.Packet{Type: 42}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := Validate(tc.pkt); (err == nil) != tc.ok {
				t.Fatalf("Validate = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestSplitDialAddress(t *testing.T) {
	for _, tc := range []struct {
		in   string
		host string
		ok   bool
	}{
		{"node-a:10250", "node-a", true},
		{"[fd00::1]:443", "fd00::1", true},
		{"10.0.0.1:0", "", false},
		{"10.0.0.1", "", false},
		{"[fe80::1%eth0]:80", "", false},
		{":80", "", false},
		{"a b:80", "", false},
		{"host:99999", "", false},
	} {
		h, _, err := SplitDialAddress(tc.in)
		if (err == nil) != tc.ok || h != tc.host {
			t.Errorf("SplitDialAddress(%q) = %q, %v", tc.in, h, err)
		}
	}
}

func TestCapabilities(t *testing.T) {
	md := metadata.Pairs(MDCapabilities, "a, conn-streams.v1", MDCapabilities, "b")
	if !HasCap(md, CapConnStreams) || !HasCap(md, "b") || HasCap(md, "c") {
		t.Fatal(Capabilities(md.Get(MDCapabilities)))
	}
}

func FuzzPacket(f *testing.F) {
	for _, p := range []*client.Packet{
		{Type: client.PacketType_DIAL_REQ, Payload: &client.Packet_DialRequest{DialRequest: &client.DialRequest{Protocol: "tcp", Address: "a:1", Random: 5}}},
		{Type: client.PacketType_DATA, Payload: &client.Packet_Data{Data: &client.Data{ConnectID: 1, Data: []byte("x")}}},
		{Type: client.PacketType_CLOSE_RSP, Payload: &client.Packet_CloseResponse{CloseResponse: &client.CloseResponse{ConnectID: 1, Error: "e"}}},
	} {
		b, _ := proto.Marshal(p)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p client.Packet
		if proto.Unmarshal(b, &p) != nil {
			return
		}
		if Validate(&p) == nil {
			// A valid packet has the payload its accessors promise.
			switch p.Type {
			case client.PacketType_DATA:
				_ = p.GetData().GetData()
			case client.PacketType_DIAL_REQ:
				_, _, _ = SplitDialAddress(p.GetDialRequest().Address)
			}
		}
	})
}

func FuzzParseIdentifiers(f *testing.F) {
	for _, s := range []string{"", "host=a&ipv4=1.2.3.4", "cidr=10.0.0.0/8&default-route=true", "ipv6=::1&uid=x", "%", "host=a;b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseIdentifiers(s)
		if err != nil {
			return
		}
		again, err := ParseIdentifiers(id.Encode())
		if err != nil {
			t.Fatalf("re-parse of %q (from %q): %v", id.Encode(), s, err)
		}
		if again.Encode() != id.Encode() {
			t.Fatalf("round trip changed %q to %q", id.Encode(), again.Encode())
		}
	})
}

func FuzzSplitDialAddress(f *testing.F) {
	for _, s := range []string{"a:1", "[::1]:80", "1.2.3.4:65535", ":", "[", "a:b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, p, err := SplitDialAddress(s)
		if err == nil && (h == "" || p == 0) {
			t.Fatalf("accepted %q as %q:%d", s, h, p)
		}
	})
}

func FuzzCapabilities(f *testing.F) {
	f.Add("conn-streams.v1,x")
	f.Fuzz(func(t *testing.T, s string) {
		if len(Capabilities([]string{s, s})) > 32 {
			t.Fatal("capability set not bounded")
		}
	})
}

// FuzzReadRawHello: any bytes either decode to a hello that re-encodes to
// the same prefix, or give ErrMalformed; nothing panics or over-allocates.
func FuzzReadRawHello(f *testing.F) {
	good, _ := RawHello{Random: 7, ConnID: 9, AgentID: "node-a", ServerID: "s1"}.MarshalBinary()
	f.Add(good)
	f.Add([]byte("TKR1"))
	f.Add(append([]byte("TKR1"), make([]byte, 20)...))
	f.Add([]byte{'T', 'K', 'R', '1', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ReadRawHello(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not ErrMalformed: %v", err)
			}
			return
		}
		enc, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded hello does not encode: %+v: %v", h, err)
		}
		if !bytes.HasPrefix(b, enc) {
			t.Fatalf("round trip: %x is not a prefix of %x", enc, b)
		}
	})
}

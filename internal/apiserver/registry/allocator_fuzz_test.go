package registry

import (
	"net"
	"testing"
)

// FuzzIPAllocatorIndex checks the service IP allocator's value/index
// functions for any range and any input: value(i) lies in the range and
// maps back to i; index accepts exactly the addresses value can produce;
// nothing panics.
func FuzzIPAllocatorIndex(f *testing.F) {
	f.Add([]byte{10, 96, 0, 0}, uint8(12), int64(0), "10.96.0.1")
	f.Add([]byte{10, 96, 0, 0}, uint8(12), int64(1<<20-3), "10.111.255.255")
	f.Add([]byte{192, 168, 1, 0}, uint8(30), int64(1), "192.168.1.3")
	f.Add([]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, uint8(64), int64(1<<40), "fd00::ffff:ffff:ffff:ffff")
	f.Add([]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, uint8(108), int64(5), "10.96.0.1")
	f.Add([]byte{10, 0, 0, 0}, uint8(8), int64(-1), "::ffff:10.0.0.1")
	f.Fuzz(func(t *testing.T, ipBytes []byte, ones uint8, i int64, s string) {
		if len(ipBytes) != 4 && len(ipBytes) != 16 {
			return
		}
		bits := len(ipBytes) * 8
		if int(ones) > bits {
			return
		}
		mask := net.CIDRMask(int(ones), bits)
		cidr := &net.IPNet{IP: net.IP(ipBytes).Mask(mask), Mask: mask}
		a, err := NewIPAllocator(nil, "/p/", cidr)
		if err != nil {
			return
		}
		if i >= 0 && i < a.size {
			v := a.value(i)
			ip := net.ParseIP(v)
			if ip == nil || !cidr.Contains(ip) {
				t.Fatalf("%s: value(%d) = %q outside the range", cidr, i, v)
			}
			if got, ok := a.index(v); !ok || got != i {
				t.Fatalf("%s: index(value(%d) = %s) = %d, %v", cidr, i, v, got, ok)
			}
		}
		if idx, ok := a.index(s); ok {
			if idx < 0 || idx >= a.size {
				t.Fatalf("%s: index(%q) = %d accepted outside [0, %d)", cidr, s, idx, a.size)
			}
			if v := a.value(idx); !net.ParseIP(v).Equal(net.ParseIP(s)) {
				t.Fatalf("%s: index(%q) = %d but value(%d) = %s", cidr, s, idx, idx, v)
			}
		}
	})
}

// FuzzPortAllocatorIndex does the same for node ports.
func FuzzPortAllocatorIndex(f *testing.F) {
	f.Add(30000, 32767, int64(0), "30000")
	f.Add(30000, 32767, int64(2767), "32768")
	f.Add(1, 65535, int64(7), "-0")
	f.Add(30000, 30000, int64(0), "+30000")
	f.Fuzz(func(t *testing.T, first, last int, i int64, s string) {
		if first < 1 || last > 65535 || first > last {
			return
		}
		a := NewPortAllocator(nil, "/p/", first, last)
		if i >= 0 && i < a.size {
			v := a.value(i)
			if got, ok := a.index(v); !ok || got != i {
				t.Fatalf("[%d,%d]: index(value(%d) = %s) = %d, %v", first, last, i, v, got, ok)
			}
		}
		if idx, ok := a.index(s); ok {
			if idx < 0 || idx >= a.size {
				t.Fatalf("[%d,%d]: index(%q) = %d accepted outside the range", first, last, s, idx)
			}
			// Allocations are keyed by the string: two spellings of one
			// port must not both be accepted, or both could be allocated.
			if v := a.value(idx); v != s {
				t.Fatalf("[%d,%d]: index accepts %q, a second spelling of %s", first, last, s, v)
			}
		}
	})
}

package servicenet

import (
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"
)

// BenchmarkKernelProxyThroughput compares bulk TCP throughput from the node
// to a local sink through a ClusterIP (nftables DNAT, output hook) with a
// direct connection, in the same run; it reports both rates and
// vip/direct. Root only (it programs nftables and a local route).
func BenchmarkKernelProxyThroughput(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("the kernel data path needs root (nftables, routes)")
	}
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	port := sink.Addr().(*net.TCPAddr).Port
	vip := netip.AddrFrom4([4]byte{10, 251, byte(rand.IntN(250)), byte(1 + rand.IntN(250))})
	k, err := newKernelPath(Kernel{Table: "tether-bench-" + strconv.Itoa(os.Getpid())})
	if err != nil {
		b.Fatal(err)
	}
	defer k.close()
	err = k.apply([]target{{vip: vip, port: 443, backends: []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))}}})
	if err != nil {
		b.Fatal(err)
	}
	const size = 256 << 20
	buf := make([]byte, 256<<10)
	send := func(addr string) time.Duration {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		for sent := 0; sent < size; sent += len(buf) {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}
	direct := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	viaVIP := net.JoinHostPort(vip.String(), "443")
	send(viaVIP) // warm up, and proves the path works
	var td, tv time.Duration
	b.SetBytes(2 * size)
	b.ResetTimer()
	for range b.N {
		td += send(direct)
		tv += send(viaVIP)
	}
	b.StopTimer()
	rate := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / (1 << 20) }
	b.ReportMetric(rate(td), "direct-MiB/s")
	b.ReportMetric(rate(tv), "vip-MiB/s")
	b.ReportMetric(rate(tv)/rate(td), "vip/direct")
}

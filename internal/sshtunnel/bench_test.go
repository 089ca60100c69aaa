package sshtunnel

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"testing"
	"time"
)

// fetch asks a sourceServer for n bytes over c and drains them.
func fetch(b *testing.B, c net.Conn, n int64, buf []byte) {
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(n))
	if _, err := c.Write(hdr[:]); err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyBuffer(io.Discard, io.LimitReader(c, n), buf); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkThroughput moves the same bytes over direct loopback TCP and
// through an SSH tunnel (our endpoint) in one run and reports both rates and
// their ratio (tunnel/direct).
func BenchmarkThroughput(b *testing.B) {
	const size = 64 << 20
	src := sourceServer(b)
	tun, _, _, _, _ := setupWith(b, src)
	ctx := context.Background()
	buf := make([]byte, 256<<10)
	b.ReportAllocs()
	b.SetBytes(2 * size)
	var direct, tunnel time.Duration
	for b.Loop() {
		c, err := net.Dial("tcp", src.String())
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		fetch(b, c, size, buf)
		direct += time.Since(start)
		c.Close()

		c, err = tun.DialContext(ctx, "tcp", src.String())
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		fetch(b, c, size, buf)
		tunnel += time.Since(start)
		c.Close()
	}
	n := float64(b.N) * size / (1 << 20)
	b.ReportMetric(n/direct.Seconds(), "direct-MiB/s")
	b.ReportMetric(n/tunnel.Seconds(), "tunnel-MiB/s")
	b.ReportMetric(direct.Seconds()/tunnel.Seconds(), "ratio")
}

// BenchmarkDialLatency is the time to open a new channel on an existing
// connection (and get the first echo byte back).
func BenchmarkDialLatency(b *testing.B) {
	echo := echoServer(b)
	tun, _, _, _, _ := setupWith(b, echo)
	ctx := context.Background()
	warm, err := tun.DialContext(ctx, "tcp", echo.String())
	if err != nil {
		b.Fatal(err)
	}
	defer warm.Close()
	var lat []time.Duration
	one := make([]byte, 1)
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		c, err := tun.DialContext(ctx, "tcp", echo.String())
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		if _, err := c.Write(one); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, one); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

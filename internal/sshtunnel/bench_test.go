package sshtunnel

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
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

// tlsPair is a TLS server config (self-signed, 127.0.0.1) and a client
// config trusting it — the hub → kubelet leg.
func tlsPair(b *testing.B) (*tls.Config, *tls.Config) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubelet"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		b.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12},
		&tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// tlsSourceServer is sourceServer behind TLS.
func tlsSourceServer(b *testing.B, conf *tls.Config) *net.TCPAddr {
	buf := make([]byte, 256<<10)
	return serveTCP(b, func(raw net.Conn) {
		c := tls.Server(raw, conf)
		defer c.Close()
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := int64(binary.BigEndian.Uint64(hdr[:]))
		for n > 0 {
			m := min(n, int64(len(buf)))
			if _, err := c.Write(buf[:m]); err != nil {
				return
			}
			n -= m
		}
	})
}

// BenchmarkThroughput moves the same bytes, in one run, over: direct
// loopback TCP and TCP through the SSH tunnel (our endpoint); direct TLS
// and TLS through the tunnel (the hub → kubelet leg of logs, exec and
// port-forward). ratio-tls = tunnel TLS / direct TLS (the target is ≥ 0.5);
// ratio-tcp = tunnel TCP / direct TCP.
func BenchmarkThroughput(b *testing.B) {
	const size = 64 << 20
	serverTLS, clientTLS := tlsPair(b)
	src, tsrc := sourceServer(b), tlsSourceServer(b, serverTLS)
	tun := benchTunnel(b, src.Port, tsrc.Port)
	ctx := context.Background()
	buf := make([]byte, 256<<10)
	b.ReportAllocs()
	b.SetBytes(4 * size)
	var direct, tunnel, directTLS, tunnelTLS time.Duration
	var cpuDirect, cpuTunnel, cpuDirectTLS, cpuTunnelTLS time.Duration
	cpuOf := map[*time.Duration]*time.Duration{&direct: &cpuDirect, &tunnel: &cpuTunnel, &directTLS: &cpuDirectTLS, &tunnelTLS: &cpuTunnelTLS}
	run := func(d *time.Duration, dial func() (net.Conn, error), wrap bool) {
		c, err := dial()
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if wrap {
			tc := tls.Client(c, clientTLS)
			if err := tc.HandshakeContext(ctx); err != nil {
				b.Fatal(err)
			}
			c = tc
		}
		start, cpu := time.Now(), cpuTime()
		fetch(b, c, size, buf)
		*d += time.Since(start)
		*cpuOf[d] += cpuTime() - cpu
	}
	for b.Loop() {
		run(&direct, func() (net.Conn, error) { return net.Dial("tcp", src.String()) }, false)
		run(&tunnel, func() (net.Conn, error) { return tun.DialContext(ctx, "tcp", src.String()) }, false)
		run(&directTLS, func() (net.Conn, error) { return net.Dial("tcp", tsrc.String()) }, true)
		run(&tunnelTLS, func() (net.Conn, error) { return tun.DialContext(ctx, "tcp", tsrc.String()) }, true)
	}
	n := float64(b.N) * size / (1 << 20)
	b.ReportMetric(n/direct.Seconds(), "tcp-direct-MiB/s")
	b.ReportMetric(n/tunnel.Seconds(), "tcp-tunnel-MiB/s")
	b.ReportMetric(n/directTLS.Seconds(), "tls-direct-MiB/s")
	b.ReportMetric(n/tunnelTLS.Seconds(), "tls-tunnel-MiB/s")
	b.ReportMetric(direct.Seconds()/tunnel.Seconds(), "ratio-tcp")
	b.ReportMetric(directTLS.Seconds()/tunnelTLS.Seconds(), "ratio-tls")
	// CPU seconds per byte (the whole process: client, endpoint, server):
	// the cost ratio, stable on a loaded machine where wall time is not.
	b.ReportMetric(cpuDirectTLS.Seconds()/cpuTunnelTLS.Seconds(), "cpu-ratio-tls")
	b.ReportMetric(cpuDirect.Seconds()/cpuTunnel.Seconds(), "cpu-ratio-tcp")
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchTunnel is our endpoint allowing ports on 127.0.0.1, and a tunneler.
func benchTunnel(b *testing.B, ports ...int) *Tunneler {
	hub, host := newSigner(b), newSigner(b)
	d := Destinations{IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	for _, p := range ports {
		d.Ports = append(d.Ports, uint16(p))
	}
	sshAddr := startEndpoint(b, host, hub.PublicKey(), d)
	nodes := &fakeNodes{}
	nodes.set(testNode("node-a", sshAddr.Port, host.PublicKey()))
	return startTunneler(b, Config{Signer: hub, Nodes: nodes.list})
}

// BenchmarkDialLatency is the time to open a new channel on an existing
// connection (DialContext returns when the endpoint accepted the channel,
// i.e. it connected to the destination); the echo round trip is not timed.
func BenchmarkDialLatency(b *testing.B) {
	echo := echoServer(b)
	tun := benchTunnel(b, echo.Port)
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

// BenchmarkConcurrentChannels opens 1000 channels at once on one
// connection, echoes through each while all are open, and reports the
// errors (must be 0) and the time for the whole batch.
func BenchmarkConcurrentChannels(b *testing.B) {
	const n = 1000
	echo := echoServer(b)
	tun := benchTunnel(b, echo.Port)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var failures int
	b.ReportAllocs()
	for b.Loop() {
		conns := make([]net.Conn, n)
		errs := make(chan error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := tun.DialContext(ctx, "tcp", echo.String())
				if err != nil {
					errs <- err
					return
				}
				conns[i] = c
				msg := "channel " + strconv.Itoa(i)
				got := make([]byte, len(msg))
				if _, err := io.WriteString(c, msg); err != nil {
					errs <- err
				} else if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
					errs <- fmt.Errorf("channel %d: %q %v", i, got, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			failures++
			b.Error(err)
		}
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	b.ReportMetric(float64(failures), "errors")
	b.ReportMetric(n, "channels/conn")
}

// BenchmarkIdleConnMemory is the hub's memory per idle node connection:
// heap and goroutine stacks of the tunneler before and after connecting to
// 50 "nodes" — all served by one test-owned OpenSSH sshd, so the node side
// is outside this process and not counted.
func BenchmarkIdleConnMemory(b *testing.B) {
	const nodesN = 50
	hub := newSigner(b)
	echo := echoServer(b)
	srv := startOpenSSH(b, hub.PublicKey(), echo.String())
	known := filepath.Join(b.TempDir(), "known_hosts")
	if err := os.WriteFile(known, []byte(srv.hostLn), 0o600); err != nil {
		b.Fatal(err)
	}
	var perConn, goroutines float64
	for b.Loop() {
		var list []corev1.Node
		for i := range nodesN {
			list = append(list, testNode("node-"+strconv.Itoa(i), srv.port, nil))
		}
		nodes := &fakeNodes{}
		nodes.set(list...)
		tun, err := New(Config{User: currentUser(b), Signer: hub, Nodes: nodes.list, KnownHostsFile: known, Logger: quietLogger()})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- tun.Run(ctx) }()
		before, g0 := memInUse()
		for i := range list {
			if _, err := tun.client(ctx, list[i]); err != nil {
				b.Fatal(err)
			}
		}
		after, g1 := memInUse()
		perConn = float64(after-before) / nodesN
		goroutines = float64(g1-g0) / nodesN
		cancel()
		<-done
	}
	b.ReportMetric(perConn/1024, "KiB/conn")
	b.ReportMetric(goroutines, "goroutines/conn")
}

// memInUse is heap in use plus goroutine stacks after a GC, and the
// number of goroutines.
func memInUse() (uint64, int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse, runtime.NumGoroutine()
}

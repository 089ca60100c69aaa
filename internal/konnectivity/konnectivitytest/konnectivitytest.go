// Package konnectivitytest has test helpers for the Konnectivity packages: a
// throw-away PKI, a loopback backend speaking a tiny command protocol, and
// polling helpers that wait on conditions instead of sleeping.
package konnectivitytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// PKI is a CA with helpers to issue loopback serving and client certificates.
type PKI struct {
	CA     *x509.Certificate
	CAKey  *ecdsa.PrivateKey
	CAPEM  []byte
	Pool   *x509.CertPool
	serial int64
	mu     sync.Mutex
}

// NewPKI creates a CA.
func NewPKI() (*PKI, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "konnectivity-test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &PKI{CA: ca, CAKey: key, CAPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), Pool: pool, serial: 1}, nil
}

// Issue returns a certificate for cn, valid for loopback serving and client auth.
func (p *PKI) Issue(cn string) (tls.Certificate, []byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	p.mu.Lock()
	p.serial++
	serial := p.serial
	p.mu.Unlock()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.CA, &key.PublicKey, p.CAKey)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	return c, certPEM, keyPEM, err
}

// ServerTLS returns a server config requiring client certificates from this CA.
func (p *PKI) ServerTLS(t testing.TB) *tls.Config {
	t.Helper()
	c, _, _, err := p.Issue("konnectivity-server")
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{c}, ClientCAs: p.Pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
}

// ClientTLS returns a client config with a certificate for cn.
func (p *PKI) ClientTLS(t testing.TB, cn string) *tls.Config {
	t.Helper()
	c, _, _, err := p.Issue(cn)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{c}, RootCAs: p.Pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// WriteFiles writes ca.crt and <name>.crt/.key into dir and returns their paths.
func (p *PKI) WriteFiles(dir, name, cn string) (ca, cert, key string, err error) {
	_, cp, kp, err := p.Issue(cn)
	if err != nil {
		return "", "", "", err
	}
	ca, cert, key = filepath.Join(dir, "ca.crt"), filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	for f, b := range map[string][]byte{ca: p.CAPEM, cert: cp, key: kp} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			return "", "", "", err
		}
	}
	return ca, cert, key, nil
}

// Backend commands: the first byte a client sends selects the behaviour.
const (
	CmdEcho     = 'e' // echo everything back
	CmdDownload = 'd' // followed by 8-byte big-endian n: the backend sends n bytes and closes
	CmdUpload   = 'u' // followed by n: the backend reads n bytes, then answers one byte
	CmdReset    = 'r' // followed by n: the backend sends n bytes, then resets the connection
)

// Backend is a loopback TCP server speaking the command protocol above.
type Backend struct {
	L     net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// NewBackend starts a backend on 127.0.0.1 and stops it at test cleanup.
func NewBackend(t testing.TB) *Backend {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{L: l, conns: map[net.Conn]struct{}{}}
	b.wg.Go(b.serve)
	t.Cleanup(b.Close)
	return b
}

// Addr returns host:port.
func (b *Backend) Addr() string { return b.L.Addr().String() }

// Close stops the backend and its connections.
func (b *Backend) Close() {
	_ = b.L.Close()
	b.mu.Lock()
	for c := range b.conns {
		_ = c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// Conns returns the number of open backend connections.
func (b *Backend) Conns() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

func (b *Backend) serve() {
	for {
		c, err := b.L.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		b.conns[c] = struct{}{}
		b.mu.Unlock()
		b.wg.Go(func() {
			defer func() {
				b.mu.Lock()
				delete(b.conns, c)
				b.mu.Unlock()
				_ = c.Close()
			}()
			_ = Handle(c)
		})
	}
}

var zeros = make([]byte, 256<<10)

// Handle runs the command protocol on c.
func Handle(c net.Conn) error {
	var cmd [1]byte
	if _, err := io.ReadFull(c, cmd[:]); err != nil {
		return err
	}
	switch cmd[0] {
	case CmdEcho:
		_, err := io.Copy(c, c)
		return err
	case CmdDownload, CmdUpload, CmdReset:
		var nb [8]byte
		if _, err := io.ReadFull(c, nb[:]); err != nil {
			return err
		}
		n := int64(binary.BigEndian.Uint64(nb[:]))
		if cmd[0] == CmdUpload {
			if _, err := io.CopyN(io.Discard, c, n); err != nil {
				return err
			}
			_, err := c.Write([]byte{1})
			return err
		}
		for n > 0 {
			k := min(n, int64(len(zeros)))
			if _, err := c.Write(zeros[:k]); err != nil {
				return err
			}
			n -= k
		}
		if cmd[0] == CmdReset {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
		}
		return nil
	default:
		return fmt.Errorf("unknown command %q", cmd[0])
	}
}

// Command writes a command with a size argument.
func Command(w io.Writer, cmd byte, n int64) error {
	var b [9]byte
	b[0] = cmd
	binary.BigEndian.PutUint64(b[1:], uint64(n))
	if cmd == CmdEcho {
		_, err := w.Write(b[:1])
		return err
	}
	_, err := w.Write(b[:])
	return err
}

// Eventually polls cond every few milliseconds until it holds or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ErrTimeout is returned by Wait on timeout.
var ErrTimeout = errors.New("timeout")

// EchoRoundTrip writes msg on c (which must be in echo mode) and reads it back.
func EchoRoundTrip(c net.Conn, msg []byte) error {
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	for i := range got {
		if got[i] != msg[i] {
			return errors.New("echo mismatch")
		}
	}
	return nil
}

// Proxy is a loopback TCP proxy that sends each new connection to the next
// of its targets (a stand-in for a load balancer, or a network path that can
// be cut).
type Proxy struct {
	l    net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	open map[net.Conn]struct{}
}

// NewRoundRobinProxy starts a Proxy and returns its address.
func NewRoundRobinProxy(t testing.TB, targets ...string) string {
	return NewProxy(t, targets...).Addr()
}

// NewProxy starts a Proxy; it is stopped at test cleanup.
func NewProxy(t testing.TB, targets ...string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{l: l, open: map[net.Conn]struct{}{}}
	p.wg.Go(func() {
		for i := 0; ; i++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", targets[i%len(targets)])
			if err != nil {
				_ = c.Close()
				continue
			}
			p.track(c, true)
			p.track(up, true)
			p.wg.Go(func() {
				_, _ = io.Copy(up, c)
				_ = up.Close()
				p.track(up, false)
			})
			p.wg.Go(func() {
				_, _ = io.Copy(c, up)
				_ = c.Close()
				p.track(c, false)
			})
		}
	})
	t.Cleanup(func() {
		_ = l.Close()
		p.Kill()
		p.wg.Wait()
	})
	return p
}

func (p *Proxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.open[c] = struct{}{}
	} else {
		delete(p.open, c)
	}
}

// Addr returns the proxy's address.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// Kill resets every proxied connection, as if the peer process died or the
// network path was cut: neither end gets to send anything more.
func (p *Proxy) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.open {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
}

// CloseAll closes every proxied connection normally (FIN), as the kernel does
// for a killed process that had nothing unread: a TLS peer sees its stream
// end without close_notify.
func (p *Proxy) CloseAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.open {
		_ = c.Close()
	}
}

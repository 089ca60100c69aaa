package nodeagent

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/tether-dev/tether/internal/pki"
)

// A rotated client certificate is used by new connections while a stream
// opened before the rotation keeps flowing.
func TestCertClientConfigRotatesWithoutDroppingStreams(t *testing.T) {
	ca, err := pki.NewCA("ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair := func(cn string) *tls.Certificate {
		c, k, err := ca.Issue(pki.CertSpec{CommonName: cn, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			t.Fatal(err)
		}
		p, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return &p
	}
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cn := "none"
		if len(r.TLS.PeerCertificates) > 0 {
			cn = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		if r.URL.Path == "/stream" {
			_, _ = io.WriteString(w, cn+"\n")
			w.(http.Flusher).Flush()
			<-release
			_, _ = io.WriteString(w, "still "+cn+"\n")
			return
		}
		_, _ = io.WriteString(w, cn)
	}))
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	srv.StartTLS()
	defer srv.Close()

	var current atomic.Pointer[tls.Certificate]
	current.Store(pair("old"))
	cfg, err := certClientConfig(&rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{CAData: srv.Certificate().Raw}}, current.Load)
	if err == nil {
		t.Fatal("expected an error for a DER (not PEM) CA")
	}
	caPEM := pemOf(srv.Certificate())
	cfg, err = certClientConfig(&rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{CAData: caPEM}}, current.Load)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: cfg.Transport, Timeout: 10 * time.Second}
	resp, err := client.Get(srv.URL + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if line, _ := br.ReadString('\n'); line != "old\n" {
		t.Fatalf("stream: %q", line)
	}
	current.Store(pair("new"))
	resp2, err := client.Get(srv.URL + "/whoami")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	if string(body) != "new" {
		t.Fatalf("new connection presented %q", body)
	}
	close(release)
	if line, _ := br.ReadString('\n'); !strings.HasPrefix(line, "still old") {
		t.Fatalf("stream after rotation: %q", line)
	}
}

func pemOf(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func TestParseTokenAndHash(t *testing.T) {
	for tok, ok := range map[string]bool{
		"abcdef.0123456789abcdef": true, "ABCDEF.0123456789abcdef": false, "abcdef0123456789abcdef": false,
		"abcde.0123456789abcdef": false, "": false, "abcdef.0123456789abcde!": false,
	} {
		if _, err := parseToken(tok); (err == nil) != ok {
			t.Errorf("parseToken(%q) = %v", tok, err)
		}
	}
	for h, ok := range map[string]bool{
		"sha256:" + strings.Repeat("a", 64): true, "sha256:abc": false, strings.Repeat("a", 64): false, "md5:" + strings.Repeat("a", 64): false,
	} {
		if _, err := hashBytes(h); (err == nil) != ok {
			t.Errorf("hashBytes(%q) = %v", h, err)
		}
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no data dir":  {NodeName: "n"},
		"bad name":     {DataDir: "d", NodeName: "Not_A_Name"},
		"bad token":    {DataDir: "d", NodeName: "n", Token: "x", CACertHash: "sha256:" + strings.Repeat("a", 64)},
		"token no pin": {DataDir: "d", NodeName: "n", Token: "abcdef.0123456789abcdef"},
		"http server":  {DataDir: "d", NodeName: "n", Server: "http://hub:6443"},
		"bad port":     {DataDir: "d", NodeName: "n", KubeletPort: 70000},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

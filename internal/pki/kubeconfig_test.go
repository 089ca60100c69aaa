package pki

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

func TestWriteKubeconfig(t *testing.T) {
	dir := t.TempDir()
	c, err := EnsureCluster(Options{Dir: filepath.Join(dir, "pki")})
	if err != nil {
		t.Fatal(err)
	}
	// Serve with a certificate issued by the cluster CA, on loopback only.
	servCert, servKey, err := c.CA.Issue(CertSpec{CommonName: "hub", IPs: []net.IP{net.ParseIP("127.0.0.1")}, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(servCert, servKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(c.CA.Cert)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) > 0 {
			io.WriteString(w, "cert:"+r.TLS.PeerCertificates[0].Subject.CommonName)
			return
		}
		io.WriteString(w, "auth:"+r.Header.Get("Authorization"))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	defer srv.Close()

	other, err := NewCA("other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		kc   Kubeconfig
		want string // body seen by the server; "" means the request must fail
		// writeErr: WriteKubeconfig must refuse kc.
		writeErr bool
	}{
		{"client cert", Kubeconfig{Server: srv.URL, CAPEM: c.CA.CertPEM, CertPEM: c.AdminCertPEM, KeyPEM: c.AdminKeyPEM}, "cert:tether-admin", false},
		{"token", Kubeconfig{Server: srv.URL, CAPEM: c.CA.CertPEM, Token: "abc.def", ClusterName: "c", UserName: "u", ContextName: "x"}, "auth:Bearer abc.def", false},
		{"wrong CA", Kubeconfig{Server: srv.URL, CAPEM: other.CertPEM, Token: "t"}, "", false},
		{"no auth", Kubeconfig{Server: srv.URL, CAPEM: c.CA.CertPEM}, "", true},
		{"cert and token", Kubeconfig{Server: srv.URL, CAPEM: c.CA.CertPEM, CertPEM: c.AdminCertPEM, KeyPEM: c.AdminKeyPEM, Token: "t"}, "", true},
		{"cert without key", Kubeconfig{Server: srv.URL, CAPEM: c.CA.CertPEM, CertPEM: c.AdminCertPEM}, "", true},
		{"no CA", Kubeconfig{Server: srv.URL, Token: "t"}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name, "kubeconfig")
			err := WriteKubeconfig(path, tt.kc)
			if (err != nil) != tt.writeErr {
				t.Fatalf("WriteKubeconfig: err = %v, want error %v", err, tt.writeErr)
			}
			if err != nil {
				return
			}
			if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("mode %v, err %v", fi.Mode(), err)
			}
			raw, err := clientcmd.LoadFromFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if tt.kc.ContextName != "" && raw.CurrentContext != tt.kc.ContextName {
				t.Errorf("current context %q", raw.CurrentContext)
			}
			if tt.kc.ContextName == "" && (raw.CurrentContext != "tether" || raw.AuthInfos["admin"] == nil || raw.Clusters["tether"] == nil) {
				t.Errorf("defaults not applied: %+v", raw)
			}
			cfg, err := clientcmd.BuildConfigFromFlags("", path)
			if err != nil {
				t.Fatal(err)
			}
			client, err := rest.HTTPClientFor(cfg)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client.Get(srv.URL)
			if tt.want == "" {
				if err == nil {
					resp.Body.Close()
					t.Fatal("TLS handshake succeeded with the wrong CA")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if string(body) != tt.want {
				t.Fatalf("server saw %q, want %q", body, tt.want)
			}
		})
	}
}

package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// The pod server is this very test binary started as a pod's process (pods
// are processes, so no separate build is needed): with
// TETHER_E2E_PODSERVER=1 it serves plain HTTP on $PODSERVER_HTTP and HTTPS
// (self-signed) on $PODSERVER_HTTPS (comma-separated host:port lists), and never runs any test.
//
//	/               "hello from <POD_NAME> over <http|https>"
//	/redirect       302 to $PODSERVER_REDIRECT (an "internal" URL)
//	/bytes?n=N      N zero bytes (throughput)
func init() {
	if os.Getenv("TETHER_E2E_PODSERVER") != "1" {
		return
	}
	if err := runPodServer(); err != nil {
		fmt.Fprintln(os.Stderr, "podserver:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func podServerHandler(scheme string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s over %s path %s\n", os.Getenv("POD_NAME"), scheme, r.URL.Path)
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, os.Getenv("PODSERVER_REDIRECT"), http.StatusFound)
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		buf := make([]byte, 256<<10)
		for n > 0 {
			c := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:c]); err != nil {
				return
			}
			n -= c
		}
	})
	return mux
}

func runPodServer() error {
	fmt.Println("podserver starting")
	errc := make(chan error, 8)
	cert, err := selfSignedCert("podserver", net.ParseIP("127.0.0.1"))
	if err != nil {
		return err
	}
	for _, scheme := range []string{"http", "https"} {
		addrs := os.Getenv("PODSERVER_" + strings.ToUpper(scheme))
		if addrs == "" {
			continue
		}
		for _, addr := range strings.Split(addrs, ",") {
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			if scheme == "https" {
				l = tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
			}
			srv := &http.Server{Handler: podServerHandler(scheme), ReadHeaderTimeout: 10 * time.Second}
			go func() { errc <- srv.Serve(l) }()
		}
	}
	fmt.Println("podserver listening")
	return <-errc
}

// selfSignedCert is a throwaway self-signed serving certificate.
func selfSignedCert(cn string, ips ...net.IP) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

package kubeletapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	x509request "k8s.io/apiserver/pkg/authentication/request/x509"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/utils/exec"

	"github.com/tether-dev/tether/internal/nodeagent/runtime"
	"github.com/tether-dev/tether/internal/pki"
)

// fixture: a runtime with one running pod behind the kubelet API, with the
// real x509 authenticator and an authorizer that allows only "admin".
type fixture struct {
	base                string
	adminCert, adminKey []byte
	ca                  *pki.CA
	admin               tls.Certificate
	user                tls.Certificate
	rt                  *runtime.Runtime
}

func issue(t *testing.T, ca *pki.CA, cn string, usage x509.ExtKeyUsage, ips ...net.IP) tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(pki.CertSpec{CommonName: cn, Usages: []x509.ExtKeyUsage{usage}, IPs: ips})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ca, err := pki.NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{ca: ca, user: issue(t, ca, "someone", x509.ExtKeyUsageClientAuth)}
	if f.adminCert, f.adminKey, err = ca.Issue(pki.CertSpec{CommonName: "admin", Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	if f.admin, err = tls.X509KeyPair(f.adminCert, f.adminKey); err != nil {
		t.Fatal(err)
	}
	serving := issue(t, ca, "system:node:n1", x509.ExtKeyUsageServerAuth, net.IPv4(127, 0, 0, 1))
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rt, err := runtime.New(runtime.Config{Dir: t.TempDir(), StopPodsOnExit: true, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	f.rt = rt
	rtDone := make(chan struct{})
	go func() { defer close(rtDone); _ = rt.Run(ctx) }()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	authn := x509request.New(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, x509request.CommonNameUserConversion)
	authz := authorizer.AuthorizerFunc(func(_ context.Context, a authorizer.Attributes) (authorizer.Decision, string, error) {
		if a.GetUser().GetName() == "admin" && a.GetResource() == "nodes" && a.GetName() == "n1" {
			return authorizer.DecisionAllow, "", nil
		}
		return authorizer.DecisionNoOpinion, "", nil
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{NodeName: "n1", Listener: ln, Provider: rt, Authenticator: authn, Authorizer: authz, Logger: log,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &serving, nil }})
	if err != nil {
		t.Fatal(err)
	}
	srvDone := make(chan struct{})
	go func() { defer close(srvDone); _ = srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-srvDone; <-rtDone })
	f.base = "https://" + ln.Addr().String()

	rt.SyncPod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: types.UID("uid-1"), CreationTimestamp: metav1.Now()},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Command: []string{"/bin/sh", "-c", "echo line1; echo line2; echo line3; exec sleep 300"}}}},
	})
	eventually(t, 20*time.Second, func() error {
		st, ok := rt.Status("uid-1")
		if !ok || st.Phase != corev1.PodRunning {
			return fmt.Errorf("phase %v", st.Phase)
		}
		var buf bytes.Buffer
		if err := rt.Logs(context.Background(), "ns", "p", "c", runtime.LogOptions{}, &buf); err != nil {
			return err
		}
		if !strings.Contains(buf.String(), "line3") {
			return fmt.Errorf("logs %q", buf.String())
		}
		return nil
	})
	return f
}

func eventually(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("not done after %s: %v", d, err)
}

func (f *fixture) tlsConfig(certs ...tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(f.ca.Cert)
	return &tls.Config{RootCAs: pool, Certificates: certs, MinVersion: tls.VersionTLS12}
}

func (f *fixture) client(certs ...tls.Certificate) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: f.tlsConfig(certs...)}, Timeout: 20 * time.Second}
}

func (f *fixture) restConfig() *rest.Config {
	return &rest.Config{Host: f.base, TLSClientConfig: rest.TLSClientConfig{CAData: f.ca.CertPEM, CertData: f.adminCert, KeyData: f.adminKey}}
}

func TestHTTPEndpoints(t *testing.T) {
	f := newFixture(t)
	admin, other, anon := f.client(f.admin), f.client(f.user), f.client()
	for _, tc := range []struct {
		client *http.Client
		method string
		path   string
		code   int
		body   string
	}{
		{anon, "GET", "/healthz", 401, "Unauthorized"},
		{other, "GET", "/healthz", 403, "subresource(s)=[healthz proxy]"},
		{other, "GET", "/containerLogs/ns/p/c", 403, "subresource(s)=[proxy]"},
		{admin, "GET", "/healthz", 200, "ok"},
		{admin, "GET", "/pods", 200, `"name":"p"`},
		{admin, "GET", "/containerLogs/ns/p/c", 200, "line1\nline2\nline3\n"},
		{admin, "GET", "/containerLogs/ns/p/c?tailLines=1", 200, "line3\n"},
		{admin, "GET", "/containerLogs/ns/p/c?limitBytes=3", 200, "lin"},
		{admin, "GET", "/containerLogs/ns/p/c?follow=maybe", 400, "boolean"},
		{admin, "GET", "/containerLogs/ns/p/c?sinceSeconds=0", 400, "sinceSeconds"},
		{admin, "GET", "/containerLogs/ns/p/c?sinceSeconds=5&sinceTime=2020-01-01T00:00:00Z", 400, "at most one"},
		{admin, "GET", "/containerLogs/ns/p/c?previous=true", 404, "previous"},
		{admin, "GET", "/containerLogs/ns/p/zz", 404, "not found"},
		{admin, "GET", "/containerLogs/ns/p", 404, ""},
		{admin, "GET", "/containerLogs/ns/nope/c", 404, "not found"},
		{admin, "POST", "/exec/ns/p/c", 400, "command"},
		{admin, "POST", "/run/ns/p/c?cmd=echo+hi+there", 200, "hi there\n"},
		{admin, "POST", "/run/ns/p/c", 400, "cmd"},
		{admin, "GET", "/metrics", 200, "kubelet_http_requests_total"},
		{admin, "GET", "/%zz", 400, ""},
		{admin, "DELETE", "/pods", 404, ""},
	} {
		req, err := http.NewRequest(tc.method, f.base+tc.path, nil)
		if err != nil {
			// malformed paths are rejected by the client library already
			continue
		}
		resp, err := tc.client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(string(body), tc.body) {
			t.Errorf("%s %s: %d %q, want %d containing %q", tc.method, tc.path, resp.StatusCode, body, tc.code, tc.body)
		}
	}
	// timestamps=true prefixes RFC3339Nano times.
	resp, err := admin.Get(f.base + "/containerLogs/ns/p/c?timestamps=true&tailLines=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	ts, rest, _ := strings.Cut(string(body), " ")
	if _, err := time.Parse(time.RFC3339Nano, ts); err != nil || rest != "line3\n" {
		t.Errorf("timestamps: %q (%v)", body, err)
	}
}

func TestLogsFollow(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", f.base+"/containerLogs/ns/p/c?follow=true", nil)
	resp, err := f.client(f.admin).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 0, 64)
	tmp := make([]byte, 64)
	for !strings.Contains(string(buf), "line3") {
		n, err := resp.Body.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if err != nil {
			t.Fatalf("follow: %v after %q", err, buf)
		}
	}
}

func TestExecSPDY(t *testing.T) {
	f := newFixture(t)
	u, _ := url.Parse(f.base + "/exec/ns/p/c?command=/bin/sh&command=-c&command=" + url.QueryEscape("cat; echo err >&2; exit 3") + "&input=1&output=1&error=1")
	ex, err := remotecommand.NewSPDYExecutor(f.restConfig(), "POST", u)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: strings.NewReader("hello\n"), Stdout: &stdout, Stderr: &stderr})
	var ee exec.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 3 {
		t.Fatalf("exit: %v, want exit code 3", err)
	}
	if stdout.String() != "hello\n" || stderr.String() != "err\n" {
		t.Fatalf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
	// With a TTY.
	u, _ = url.Parse(f.base + "/exec/ns/p/c?command=/bin/sh&command=-c&command=" + url.QueryEscape("tty >/dev/null && echo is-a-tty") + "&output=1&tty=1")
	ex, err = remotecommand.NewSPDYExecutor(f.restConfig(), "POST", u)
	if err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Tty: true}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "is-a-tty") {
		t.Fatalf("tty exec: %q", stdout.String())
	}
}

func TestExecWebSocket(t *testing.T) {
	f := newFixture(t)
	d := websocket.Dialer{TLSClientConfig: f.tlsConfig(f.admin), Subprotocols: []string{"v4.channel.k8s.io"}, HandshakeTimeout: 10 * time.Second}
	wsURL := strings.Replace(f.base, "https", "wss", 1) + "/exec/ns/p/c?command=/bin/sh&command=-c&command=" + url.QueryEscape("echo ws-out; exit 2") + "&output=1&error=1"
	conn, resp, err := d.Dial(wsURL, nil)
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	defer conn.Close()
	if conn.Subprotocol() != "v4.channel.k8s.io" {
		t.Fatalf("subprotocol %q", conn.Subprotocol())
	}
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	var out, status string
	for {
		_, msg, err := conn.ReadMessage()
		if err != nil {
			break
		}
		if len(msg) < 1 {
			continue
		}
		switch msg[0] {
		case 1:
			out += string(msg[1:])
		case 3:
			status += string(msg[1:])
		}
	}
	if out != "ws-out\n" || !strings.Contains(status, `"ExitCode"`) || !strings.Contains(status, `"2"`) {
		t.Fatalf("out %q status %q", out, status)
	}
}

func TestPortForwardSPDY(t *testing.T) {
	f := newFixture(t)
	// Host networking: the pod's port is a port on the node's loopback.
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	go func() {
		for {
			c, err := backend.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	port := backend.Addr().(*net.TCPAddr).Port
	transport, upgrader, err := spdy.RoundTripperFor(f.restConfig())
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(f.base + "/portForward/ns/p")
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, "POST", u)
	stop, ready := make(chan struct{}), make(chan struct{})
	pf, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- pf.ForwardPorts() }()
	defer func() { close(stop); <-errc }()
	select {
	case <-ready:
	case err := <-errc:
		t.Fatal(err)
	case <-time.After(20 * time.Second):
		t.Fatal("port-forward not ready")
	}
	ports, err := pf.GetPorts()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0].Local), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		msg := fmt.Sprintf("ping %d", i)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			t.Fatalf("echo: %q %v", got, err)
		}
		c.Close()
	}
}

func TestAttributes(t *testing.T) {
	u := &user.DefaultInfo{Name: "x"}
	for _, tc := range []struct {
		method, path string
		verb         string
		subs         string
	}{
		{"GET", "/healthz", "get", "healthz proxy"},
		{"GET", "/pods", "get", "pods proxy"},
		{"GET", "/pods/", "get", "pods proxy"},
		{"GET", "/runningpods/", "get", "pods proxy"},
		{"GET", "/stats/summary", "get", "stats"},
		{"GET", "/metrics", "get", "metrics"},
		{"GET", "/metrics/cadvisor", "get", "metrics"},
		{"GET", "/logs/syslog", "get", "log"},
		{"GET", "/containerLogs/a/b/c", "get", "proxy"},
		{"POST", "/exec/a/b/c", "create", "proxy"},
		{"GET", "/metricsfoo", "get", "proxy"},
		{"PUT", "/configz", "update", "configz proxy"},
	} {
		r, _ := http.NewRequest(tc.method, "https://x"+tc.path, nil)
		attrs := Attributes(u, r, "n1")
		var subs []string
		for _, a := range attrs {
			if a.GetVerb() != tc.verb || a.GetResource() != "nodes" || a.GetName() != "n1" || !a.IsResourceRequest() {
				t.Errorf("%s %s: %+v", tc.method, tc.path, a)
			}
			subs = append(subs, a.GetSubresource())
		}
		if strings.Join(subs, " ") != tc.subs {
			t.Errorf("%s %s: subresources %v, want %s", tc.method, tc.path, subs, tc.subs)
		}
	}
}

func FuzzLogOptions(f *testing.F) {
	f.Add("follow=true&tailLines=10&limitBytes=5&sinceSeconds=3&timestamps=1&previous=0")
	f.Add("sinceTime=2020-01-01T00:00:00Z&tailLines=-1")
	f.Fuzz(func(t *testing.T, q string) {
		v, err := url.ParseQuery(q)
		if err != nil {
			return
		}
		o, err := LogOptionsFromQuery(v)
		if err == nil && ((o.TailLines != nil && *o.TailLines < 0) || (o.LimitBytes != nil && *o.LimitBytes < 1)) {
			t.Fatalf("accepted invalid options %q", q)
		}
	})
}

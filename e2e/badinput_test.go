package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
)

type rawResponse struct {
	code    int
	header  http.Header
	body    []byte
	status  *metav1.Status // decoded when the body is a JSON Status
	request string
}

func rawDo(t *testing.T, client *http.Client, method, url, contentType string, body []byte) rawResponse {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	r := rawResponse{code: resp.StatusCode, header: resp.Header, body: b, request: method + " " + strings.TrimPrefix(url, "https://")}
	var s metav1.Status
	if json.Unmarshal(b, &s) == nil && s.Kind == "Status" {
		r.status = &s
	}
	return r
}

// wantStatus checks the HTTP code and that the body is a Kubernetes
// Status with the same code, the reason and a message containing msg.
func (r rawResponse) wantStatus(t *testing.T, code int, reason metav1.StatusReason, msg string) {
	t.Helper()
	if r.code != code {
		t.Errorf("%s: HTTP %d, want %d: %s", r.request, r.code, code, r.body)
		return
	}
	if r.status == nil {
		t.Errorf("%s: body is not a Status: %q", r.request, r.body)
		return
	}
	if r.status.Code != int32(code) || r.status.Status != metav1.StatusFailure || (reason != "" && r.status.Reason != reason) {
		t.Errorf("%s: Status code=%d status=%q reason=%q, want %d Failure %q", r.request, r.status.Code, r.status.Status, r.status.Reason, code, reason)
	}
	if !strings.Contains(r.status.Message, msg) {
		t.Errorf("%s: Status message %q lacks %q", r.request, r.status.Message, msg)
	}
}

func protobufBytes(t *testing.T, obj runtime.Object) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme).Encode(obj, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestBadInput(t *testing.T) {
	h := sharedHub(t)
	cs := h.Client(t)
	ns := testNamespace(t, cs)
	client, err := rest.HTTPClientFor(h.Config(t))
	if err != nil {
		t.Fatal(err)
	}
	base := h.URL()
	cms := base + "/api/v1/namespaces/" + ns + "/configmaps"
	const jsonCT, pbCT = "application/json", "application/vnd.kubernetes.protobuf"
	good := protobufBytes(t, &corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: "pb-ok"}, Data: map[string]string{"a": strings.Repeat("x", 64)}})
	huge := []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"huge"},"data":{"a":"` + strings.Repeat("x", 4<<20) + `"}}`)

	cases := []struct {
		name, method, url, ct string
		body                  []byte
		code                  int
		reason                metav1.StatusReason
		msg                   string
	}{
		{"malformed JSON", "POST", cms, jsonCT, []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":`), 400, metav1.StatusReasonBadRequest, ""},
		{"JSON of the wrong shape", "POST", cms, jsonCT, []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":[1,2]}`), 400, metav1.StatusReasonBadRequest, "data"},
		{"JSON null", "POST", cms, jsonCT, []byte(`null`), 422, metav1.StatusReasonInvalid, "metadata.name"},
		{"empty body", "POST", cms, jsonCT, nil, 400, metav1.StatusReasonBadRequest, ""},
		{"kind mismatch", "POST", cms, jsonCT, []byte(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}`), 400, metav1.StatusReasonBadRequest, "Secret"},
		{"protobuf garbage", "POST", cms, pbCT, []byte("this is not protobuf"), 400, metav1.StatusReasonBadRequest, ""},
		{"protobuf bad payload", "POST", cms, pbCT, append([]byte("k8s\x00"), 0x0a, 0xff, 0xff, 0xff, 0x7f, 0x01), 400, metav1.StatusReasonBadRequest, ""},
		{"protobuf truncated", "POST", cms, pbCT, good[:len(good)-20], 400, metav1.StatusReasonBadRequest, ""},
		{"unknown field, strict", "POST", cms + "?fieldValidation=Strict", jsonCT, []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"strict"},"bogus":1}`), 400, metav1.StatusReasonBadRequest, `unknown field "bogus"`},
		{"duplicate field, strict", "POST", cms + "?fieldValidation=Strict", jsonCT, []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dup"},"data":{"a":"1"},"data":{"b":"2"}}`), 400, metav1.StatusReasonBadRequest, `duplicate field "data"`},
		{"unknown fieldValidation", "POST", cms + "?fieldValidation=Sloppy", jsonCT, []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}`), 422, metav1.StatusReasonInvalid, "fieldValidation"},
		{"body over 3 MiB", "POST", cms, jsonCT, huge, 413, metav1.StatusReasonRequestEntityTooLarge, ""},
		{"update body over 3 MiB", "PUT", cms + "/huge", jsonCT, huge, 413, metav1.StatusReasonRequestEntityTooLarge, ""},
		{"text/plain", "POST", cms, "text/plain", []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}`), 415, metav1.StatusReasonUnsupportedMediaType, "application/json"},
		{"xml", "POST", cms, "application/xml", []byte(`<ConfigMap/>`), 415, metav1.StatusReasonUnsupportedMediaType, ""},
		{"patch with a non-patch type", "PATCH", cms + "/x", jsonCT, []byte(`{}`), 415, metav1.StatusReasonUnsupportedMediaType, ""},
		{"invalid name", "POST", cms, jsonCT, []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}`), 422, metav1.StatusReasonInvalid, "metadata.name"},
		{"invalid data key", "POST", cms, jsonCT, []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"ok"},"data":{"bad key!":"v"}}`), 422, metav1.StatusReasonInvalid, "data[bad key!]"},
		{"invalid namespace name", "POST", base + "/api/v1/namespaces", jsonCT, []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"UPPER"}}`), 422, metav1.StatusReasonInvalid, "metadata.name"},
		{"name .. in path", "GET", cms + "/..", "", nil, 400, metav1.StatusReasonBadRequest, ".."},
		{"name . in path", "DELETE", cms + "/.", "", nil, 400, metav1.StatusReasonBadRequest, ""},
		{"namespace .. in path", "GET", base + "/api/v1/namespaces/../configmaps", "", nil, 400, metav1.StatusReasonBadRequest, ".."},
		{"namespace . in path", "GET", base + "/api/v1/namespaces/./configmaps/x", "", nil, 400, metav1.StatusReasonBadRequest, ""},
		{"encoded .. namespace", "POST", base + "/api/v1/namespaces/%2E%2E/configmaps", jsonCT, []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}`), 400, metav1.StatusReasonBadRequest, ""},
		{"%2F in name", "GET", cms + "/a%2Fb", "", nil, 400, metav1.StatusReasonBadRequest, "%2F"},
		{"%2F in namespace", "GET", base + "/api/v1/namespaces/" + ns + "%2Fconfigmaps", "", nil, 400, metav1.StatusReasonBadRequest, "%2F"},
		{"%2f in namespace", "GET", base + "/api/v1/namespaces/kube-system%2fsecrets/x", "", nil, 400, metav1.StatusReasonBadRequest, ""},
		{"unknown resource", "GET", base + "/api/v1/namespaces/" + ns + "/frobs", "", nil, 404, metav1.StatusReasonNotFound, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rawDo(t, client, c.method, c.url, c.ct, c.body).wantStatus(t, c.code, c.reason, c.msg)
			stillServing(t, client, base, ns)
		})
	}

	t.Run("unknown field warns without strict", func(t *testing.T) {
		r := rawDo(t, client, "POST", cms, jsonCT, []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"warned"},"bogus":1}`))
		if r.code != http.StatusCreated || !strings.Contains(r.header.Get("Warning"), `unknown field \"bogus\"`) {
			t.Errorf("HTTP %d, Warning %q: %s", r.code, r.header.Get("Warning"), r.body)
		}
	})
	t.Run("protobuf create", func(t *testing.T) {
		if r := rawDo(t, client, "POST", cms, pbCT, good); r.code != http.StatusCreated {
			t.Errorf("valid protobuf create: HTTP %d %s", r.code, r.body)
		}
	})
	t.Run("nothing half-created", func(t *testing.T) {
		list, err := cs.CoreV1().ConfigMaps(ns).List(testContext(t, 30*time.Second), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, cm := range list.Items {
			if cm.Name != "kube-root-ca.crt" {
				names = append(names, cm.Name)
			}
		}
		if strings.Join(names, ",") != "pb-ok,warned" {
			t.Errorf("configmaps after bad input: %v, want only pb-ok and warned", names)
		}
	})
}

// stillServing fails unless the hub answers a normal request.
func stillServing(t *testing.T, client *http.Client, base, ns string) {
	t.Helper()
	r := rawDo(t, client, "GET", base+"/api/v1/namespaces/"+ns, "", nil)
	if r.code != http.StatusOK {
		t.Fatalf("hub stopped serving: GET namespace: HTTP %d %s", r.code, r.body)
	}
}

func TestUnauthenticated(t *testing.T) {
	h := sharedHub(t)
	cfg := h.Config(t)
	caPEM, err := os.ReadFile(filepathCA(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tlsTo := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs, MinVersion: tls.VersionTLS12}}}
	}
	foreign := foreignClientCert(t)
	clients := map[string]*http.Client{
		"no credentials":            tlsTo(),
		"certificate of another CA": tlsTo(foreign),
	}
	for name, c := range clients {
		t.Run(name, func(t *testing.T) {
			for _, path := range []string{"/api/v1/namespaces", "/api", "/version", "/readyz", "/openapi/v2", "/apis/authentication.k8s.io/v1/selfsubjectreviews"} {
				method := "GET"
				if strings.HasSuffix(path, "selfsubjectreviews") {
					method = "POST"
				}
				rawDo(t, c, method, h.URL()+path, "application/json", []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`)).wantStatus(t, 401, metav1.StatusReasonUnauthorized, "")
			}
		})
	}
	t.Run("bad bearer token", func(t *testing.T) {
		req, _ := http.NewRequest("GET", h.URL()+"/api/v1/namespaces", nil)
		req.Header.Set("Authorization", "Bearer not-a-valid-token")
		resp, err := tlsTo().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("bad bearer token: HTTP %d", resp.StatusCode)
		}
	})
	t.Run("TLS below 1.2 refused", func(t *testing.T) {
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS11, MinVersion: tls.VersionTLS10}}}
		if resp, err := c.Get(h.URL() + "/version"); err == nil {
			resp.Body.Close()
			t.Error("TLS 1.1 handshake succeeded")
		}
	})
	t.Run("plain HTTP refused", func(t *testing.T) {
		c := &http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get("http://127.0.0.1:" + strings.TrimPrefix(h.URL(), "https://127.0.0.1:") + "/api")
		if err == nil {
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("plain HTTP: %s", resp.Status)
			}
		}
	})
	stillServing(t, mustHTTPClient(t, cfg), h.URL(), "default")
}

func mustHTTPClient(t *testing.T, cfg *rest.Config) *http.Client {
	t.Helper()
	c, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// filepathCA writes the kubeconfig's CA to a file (it is inline there).
func filepathCA(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	if cfg.CAFile != "" {
		return cfg.CAFile
	}
	p := t.TempDir() + "/ca.crt"
	if err := os.WriteFile(p, cfg.CAData, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// foreignClientCert is an admin-looking client certificate
// (CN=tether-admin, O=system:masters) from a CA the hub does not trust.
func foreignClientCert(t *testing.T) tls.Certificate {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "evil-ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "tether-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}
}

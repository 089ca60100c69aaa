package check

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"
)

// checkAPIServer: HTTPS only, anonymous requests rejected, TLS versions and
// cipher suites offered, serving certificate names and expiry.
func (c *Checker) checkAPIServer(ctx context.Context, e *env) {
	c.checkPlainHTTP(ctx, e)
	c.checkAnonymous(ctx, e)
	c.checkTLSVersions(ctx, e)
	c.checkWeakCiphers(ctx, e)
	c.checkServingCert(ctx, e)
}

// checkPlainHTTP sends a plain-HTTP request to the API port.
func (c *Checker) checkPlainHTTP(ctx context.Context, e *env) {
	const name = "plain HTTP refused"
	fix := "serve the API over HTTPS only: remove --insecure-port/--insecure-bind-address (tether has no plain-HTTP port)"
	status, body, err := plainHTTP(ctx, e.host, c.cfg.Timeout)
	switch {
	case err != nil && status == "":
		c.unknown(PathAPIServer, name, "hub", err, "")
	case strings.Contains(status, " 400 ") && strings.Contains(body, "HTTPS"):
		c.add(Finding{Path: PathAPIServer, Check: name, State: Pass,
			Evidence: fmt.Sprintf("plain HTTP to %s answered %q: %s", e.host, status, strings.TrimSpace(body))})
	case status == "closed":
		c.add(Finding{Path: PathAPIServer, Check: name, State: Pass,
			Evidence: fmt.Sprintf("plain HTTP to %s: connection closed without an HTTP answer", e.host)})
	default:
		c.add(Finding{Path: PathAPIServer, Check: name, State: Fail, Risk: RiskHigh,
			Evidence: fmt.Sprintf("plain HTTP to %s answered %q: %.200s", e.host, status, strings.TrimSpace(body)), Fix: fix})
	}
}

// plainHTTP returns the status line and start of the body of GET /version
// sent without TLS, or status "closed" when the server hung up.
func plainHTTP(ctx context.Context, addr string, timeout time.Duration) (string, string, error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(conn, "GET /version HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr); err != nil {
		return "closed", "", nil
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		// Not an HTTP answer: TLS alert bytes or a hang-up.
		return "closed", "", nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return resp.Proto + " " + resp.Status, string(body), nil
}

// checkAnonymous sends a request without credentials. It carries no secret,
// so the probe does not need to verify the hub.
func (c *Checker) checkAnonymous(ctx context.Context, e *env) {
	const name = "anonymous requests rejected"
	fix := "restart the hub with --anonymous-auth=false (tether's default; kube-apiserver: --anonymous-auth=false)"
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true} //nolint:gosec // no credentials sent
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: c.cfg.Timeout}
	u := "https://" + e.host + "/api/v1/namespaces?limit=1"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		c.unknown(PathAPIServer, name, "hub", err, "")
		return
	}
	resp, err := client.Do(req)
	if err != nil && clientCertRequired(err) {
		c.add(Finding{Path: PathAPIServer, Check: name, State: Pass,
			Evidence: "GET " + u + " without credentials: the TLS handshake was refused (" + err.Error() + "): the hub requires a client certificate"})
		return
	}
	if err != nil {
		c.unknown(PathAPIServer, name, "hub", err, "")
		return
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	resp.Body.Close()
	ev := fmt.Sprintf("GET %s without credentials → %s", u, resp.Status)
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		c.add(Finding{Path: PathAPIServer, Check: name, State: Pass, Evidence: ev})
	case http.StatusForbidden:
		c.add(Finding{Path: PathAPIServer, Check: name, State: Fail, Risk: RiskHigh,
			Evidence: ev + ": the request was authenticated as system:anonymous (only RBAC stands between the network and the API): " + statusMessage(body), Fix: fix})
	default:
		c.add(Finding{Path: PathAPIServer, Check: name, State: Fail, Risk: RiskHigh,
			Evidence: ev + ": " + statusMessage(body), Fix: fix})
	}
}

// clientCertRequired: the server refused the handshake for want of a
// client certificate (TLS alerts "certificate required" / "bad certificate").
func clientCertRequired(err error) bool {
	s := err.Error()
	return strings.Contains(s, "certificate required") || strings.Contains(s, "bad certificate")
}

// statusMessage extracts "message" from a Status body, else the raw start.
func statusMessage(body []byte) string {
	var st struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &st) == nil && st.Message != "" {
		return st.Message
	}
	s := strings.TrimSpace(string(body))
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

var tlsVersionNames = map[uint16]string{tls.VersionTLS10: "TLS 1.0", tls.VersionTLS11: "TLS 1.1", tls.VersionTLS12: "TLS 1.2", tls.VersionTLS13: "TLS 1.3"}

// checkTLSVersions tries one handshake per protocol version.
func (c *Checker) checkTLSVersions(ctx context.Context, e *env) {
	const name = "TLS versions offered"
	var offered, refused []string
	var lastErr error
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11, tls.VersionTLS12, tls.VersionTLS13} {
		cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: v, MaxVersion: v, ServerName: e.serverURL.Hostname()} //nolint:gosec // probe only
		if v < tls.VersionTLS12 {
			// Offer every suite an old client could, so a refusal is about the version.
			cfg.CipherSuites = allSuiteIDs()
		}
		// A server that then demands a client certificate did negotiate the version.
		if _, err := handshake(ctx, e.host, cfg, c.cfg.Timeout); err != nil && !clientCertRequired(err) {
			refused = append(refused, tlsVersionNames[v])
			if isDialError(err) {
				lastErr = err
			}
			continue
		}
		offered = append(offered, tlsVersionNames[v])
	}
	ev := fmt.Sprintf("handshakes with %s: accepted %s; refused %s", e.host, join(offered), join(refused))
	switch {
	case len(offered) == 0 && lastErr != nil:
		c.unknown(PathAPIServer, name, "hub", lastErr, "")
	case len(offered) == 0:
		c.add(Finding{Path: PathAPIServer, Check: name, State: Unknown, Evidence: "could not verify: no TLS version was accepted: " + ev})
	case slices.Contains(offered, "TLS 1.0") || slices.Contains(offered, "TLS 1.1"):
		c.add(Finding{Path: PathAPIServer, Check: name, State: Warn, Risk: RiskMedium, Evidence: ev,
			Fix: "set --tls-min-version=VersionTLS12 on the API server (tether accepts TLS 1.2+ only)"})
	default:
		c.add(Finding{Path: PathAPIServer, Check: name, State: Pass, Evidence: ev})
	}
}

// weakSuites are the suites Go rates insecure (RC4, 3DES, CBC-SHA256) and
// those without forward secrecy (static RSA key exchange). ECDHE suites with
// CBC-SHA1 are Go's and Kubernetes' defaults; tether's listeners refuse them
// unless configured, and accepting them is a low-risk warning.
func weakSuites() []*tls.CipherSuite {
	var out []*tls.CipherSuite
	out = append(out, tls.InsecureCipherSuites()...)
	for _, s := range tls.CipherSuites() {
		if strings.HasPrefix(s.Name, "TLS_RSA_") {
			out = append(out, s)
		}
	}
	return out
}

// cbcSuites are the forward-secret CBC-SHA1 suites Go still enables.
func cbcSuites() []*tls.CipherSuite {
	var out []*tls.CipherSuite
	for _, s := range tls.CipherSuites() {
		if strings.HasPrefix(s.Name, "TLS_ECDHE_") && strings.Contains(s.Name, "_CBC_") {
			out = append(out, s)
		}
	}
	return out
}

func allSuiteIDs() []uint16 {
	var ids []uint16
	for _, s := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		ids = append(ids, s.ID)
	}
	return ids
}

// checkWeakCiphers offers one weak TLS 1.2 suite per handshake.
func (c *Checker) checkWeakCiphers(ctx context.Context, e *env) {
	const name = "weak TLS cipher suites refused"
	try := func(suites []*tls.CipherSuite) (accepted []string, tried int, lastErr error) {
		for _, s := range suites {
			cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS12, //nolint:gosec // probe only
				CipherSuites: []uint16{s.ID}, ServerName: e.serverURL.Hostname()}
			_, err := handshake(ctx, e.host, cfg, c.cfg.Timeout)
			if err != nil && isDialError(err) {
				lastErr = err
				continue
			}
			tried++
			if err == nil || clientCertRequired(err) {
				accepted = append(accepted, s.Name)
			}
		}
		return accepted, tried, lastErr
	}
	accepted, tried, lastErr := try(weakSuites())
	cbc, _, _ := try(cbcSuites())
	note := ""
	if len(cbc) > 0 {
		note = "; accepts forward-secret CBC-SHA1 suites (Go and Kubernetes defaults): " + strings.Join(cbc, ", ")
	}
	const fix = "restrict --tls-cipher-suites to ECDHE AEAD suites (TLS_ECDHE_*_WITH_AES_*_GCM_SHA*, *_CHACHA20_POLY1305*; tether's default)"
	switch {
	case tried == 0 && lastErr != nil:
		c.unknown(PathAPIServer, name, "hub", lastErr, "")
	case len(accepted) > 0:
		c.add(Finding{Path: PathAPIServer, Check: name, State: Warn, Risk: RiskMedium,
			Evidence: fmt.Sprintf("%s accepted %d of %d weak suites offered alone: %s%s", e.host, len(accepted), tried, strings.Join(accepted, ", "), note),
			Fix:      fix})
	case len(cbc) > 0:
		c.add(Finding{Path: PathAPIServer, Check: name, State: Warn, Risk: RiskLow,
			Evidence: fmt.Sprintf("%s refused all %d weak suites offered alone (RC4, 3DES, CBC-SHA256, static RSA key exchange)%s", e.host, tried, note),
			Fix:      fix})
	default:
		c.add(Finding{Path: PathAPIServer, Check: name, State: Pass,
			Evidence: fmt.Sprintf("%s refused all %d weak suites offered alone (RC4, 3DES, CBC-SHA256, static RSA key exchange)%s", e.host, tried, note)})
	}
}

// checkServingCert verifies the hub's certificate against the kubeconfig's CA
// and the name the admin dials, and reports its SANs and expiry.
func (c *Checker) checkServingCert(ctx context.Context, e *env) {
	const name = "serving certificate"
	st, err := handshake(ctx, e.host, &tls.Config{InsecureSkipVerify: true, ServerName: e.serverURL.Hostname()}, c.cfg.Timeout) //nolint:gosec // verified below
	if err != nil {
		c.unknown(PathAPIServer, name, "hub", err, "")
		return
	}
	leaf := st.PeerCertificates[0]
	ev := certSummary(leaf, c.cfg.Now()) + "; SANs " + join(sans(leaf))
	if e.caErr != nil {
		c.add(Finding{Path: PathAPIServer, Check: name, State: Unknown, Evidence: "could not verify the chain: " + e.caErr.Error() + "; " + ev})
		return
	}
	if err := verifyChain(st.PeerCertificates, e.caPool, x509.ExtKeyUsageServerAuth, c.cfg.Now()); err != nil {
		c.add(Finding{Path: PathAPIServer, Check: name, State: Fail, Risk: RiskHigh, Evidence: "does not verify against the kubeconfig's CA: " + err.Error() + "; " + ev,
			Fix: "serve a certificate issued by the cluster CA (tether regenerates pki/apiserver.crt when removed), or fix the kubeconfig's certificate-authority-data"})
		return
	}
	if err := leaf.VerifyHostname(e.serverURL.Hostname()); err != nil {
		c.add(Finding{Path: PathAPIServer, Check: name, State: Fail, Risk: RiskHigh, Evidence: err.Error() + "; " + ev,
			Fix: "add the address clients use to the serving certificate's SANs (tether: --advertise-address / --bind-address, then remove pki/apiserver.crt and restart)"})
		return
	}
	var missing []string
	for _, n := range []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc"} {
		if leaf.VerifyHostname(n) != nil {
			missing = append(missing, n)
		}
	}
	state, risk, exp := c.expiry(leaf)
	if state != Pass {
		ev = exp + "; " + ev
	}
	fix := ""
	if state != Pass {
		fix = "rotate the API server's serving certificate (tether: remove <data-dir>/pki/apiserver.crt and restart the hub)"
	}
	if len(missing) > 0 && state == Pass {
		state, risk = Warn, RiskMedium
		fix = "add the in-cluster names to the serving certificate's SANs so pods can verify the hub"
		ev = "missing in-cluster names " + join(missing) + "; " + ev
	}
	c.add(Finding{Path: PathAPIServer, Check: name, State: state, Risk: risk, Evidence: ev, Fix: fix})
}

func isDialError(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

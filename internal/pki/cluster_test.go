package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var leafFiles = []string{"apiserver", "admin", "kubelet-client", "controller-manager", "scheduler"}

func readCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ParseCertPEM(data)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func serials(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{"ca": readCert(t, filepath.Join(dir, "ca.crt")).SerialNumber.String()}
	for _, n := range leafFiles {
		m[n] = readCert(t, filepath.Join(dir, n+".crt")).SerialNumber.String()
	}
	return m
}

func TestEnsureClusterFirstRun(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	c, err := EnsureCluster(Options{Dir: dir, ServingHosts: []string{"hub.example", "10.96.0.1", "192.0.2.7", " "}})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode: %v %v", fi.Mode(), err)
	}
	for _, n := range append([]string{"ca", "sa"}, leafFiles...) {
		key := filepath.Join(dir, n+".key")
		if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, err %v", key, fi.Mode(), err)
		}
		pub := filepath.Join(dir, n+".crt")
		if n == "sa" {
			pub = filepath.Join(dir, "sa.pub")
		}
		if fi, err := os.Stat(pub); err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v, err %v", pub, fi.Mode(), err)
		}
	}
	if c.CA.Cert.Subject.CommonName != "tether-ca" || time.Until(c.CA.Cert.NotAfter) < 9*365*24*time.Hour {
		t.Errorf("CA: %v until %v", c.CA.Cert.Subject, c.CA.Cert.NotAfter)
	}
	if c.CACertFile != filepath.Join(dir, "ca.crt") || c.KubeletClientKeyFile != filepath.Join(dir, "kubelet-client.key") ||
		c.ServiceAccountPubFile != filepath.Join(dir, "sa.pub") || c.ServiceAccountKey == nil {
		t.Errorf("paths: %+v", c)
	}

	serving := readCert(t, c.ServingCertFile)
	for _, h := range []string{"hub.example", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.96.0.1", "192.0.2.7", "127.0.0.1", "::1"} {
		if err := verify(c.CA, serving, x509.ExtKeyUsageServerAuth, h); err != nil {
			t.Errorf("serving cert for %s: %v", h, err)
		}
	}

	clients := []struct {
		name, cn, org string
		cert          []byte
	}{
		{"admin", "tether-admin", "system:masters", c.AdminCertPEM},
		{"kubelet-client", "tether-apiserver-kubelet-client", "system:masters", nil},
		{"controller-manager", "system:kube-controller-manager", "", c.ControllerManagerCertPEM},
		{"scheduler", "system:kube-scheduler", "", c.SchedulerCertPEM},
	}
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			cert := readCert(t, filepath.Join(dir, cl.name+".crt"))
			if cl.cert != nil && !bytes.Equal(cl.cert, cert.Raw) {
				if p, _ := ParseCertPEM(cl.cert); p == nil || !p.Equal(cert) {
					t.Error("PEM field differs from file")
				}
			}
			if cert.Subject.CommonName != cl.cn || strings.Join(cert.Subject.Organization, "") != cl.org {
				t.Errorf("subject %v", cert.Subject)
			}
			if err := verify(c.CA, cert, x509.ExtKeyUsageClientAuth, ""); err != nil {
				t.Error(err)
			}
			if verify(c.CA, cert, x509.ExtKeyUsageServerAuth, "") == nil {
				t.Error("client cert valid for server auth")
			}
		})
	}
	for _, p := range [][2][]byte{{c.AdminCertPEM, c.AdminKeyPEM}, {c.ControllerManagerCertPEM, c.ControllerManagerKeyPEM}, {c.SchedulerCertPEM, c.SchedulerKeyPEM}} {
		cert, _ := ParseCertPEM(p[0])
		key, err := ParseKey(p[1])
		if err != nil || keyMatches(cert, key) != nil {
			t.Error("PEM pair mismatch")
		}
	}
}

func TestEnsureClusterRestart(t *testing.T) {
	day := 24 * time.Hour
	start := time.Now()
	tests := []struct {
		name     string
		hosts    []string
		now      time.Time
		reissued []string // leaf files expected to change; CA never changes
	}{
		{"same", []string{"hub.example"}, start, nil},
		{"subset of hosts", []string{"HUB.example."}, start, nil},
		{"new host", []string{"hub.example", "10.0.0.9"}, start, []string{"apiserver"}},
		{"300 days later", []string{"hub.example"}, start.Add(300 * day), nil},
		{"340 days later", []string{"hub.example"}, start.Add(340 * day), leafFiles},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			first, err := EnsureCluster(Options{Dir: dir, ServingHosts: []string{"hub.example"}, Now: func() time.Time { return start }})
			if err != nil {
				t.Fatal(err)
			}
			before := serials(t, dir)
			second, err := EnsureCluster(Options{Dir: dir, ServingHosts: tt.hosts, Now: func() time.Time { return tt.now }})
			if err != nil {
				t.Fatal(err)
			}
			after := serials(t, dir)
			if !second.CA.Cert.Equal(first.CA.Cert) || before["ca"] != after["ca"] {
				t.Fatal("CA changed on restart")
			}
			for _, n := range leafFiles {
				want := false
				for _, r := range tt.reissued {
					want = want || r == n
				}
				if changed := before[n] != after[n]; changed != want {
					t.Errorf("%s: reissued=%v, want %v", n, changed, want)
				}
			}
			if !second.ServiceAccountKey.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(first.ServiceAccountKey.Public()) {
				t.Error("SA key changed")
			}
			if tt.reissued != nil {
				cert := readCert(t, second.ServingCertFile)
				if cert.NotAfter.Sub(tt.now) < 360*day {
					t.Errorf("reissued cert not valid from now: %v", cert.NotAfter)
				}
				if err := verify(second.CA, cert, x509.ExtKeyUsageServerAuth, "hub.example"); err != nil && tt.now == start {
					t.Error(err)
				}
			}
		})
	}
}

func TestEnsureClusterBadFiles(t *testing.T) {
	other, err := NewCA("other", time.Hour*24*365)
	if err != nil {
		t.Fatal(err)
	}
	otherCert, otherKey, _ := other.Issue(CertSpec{CommonName: "x", Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	tests := []struct {
		name   string
		mutate func(dir string) // applied after a successful first run
		file   string           // path expected in the error
	}{
		{"corrupt CA cert", func(d string) { write(d, "ca.crt", []byte("garbage")) }, "ca.crt"},
		{"corrupt CA key", func(d string) {
			write(d, "ca.key", []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
		}, "ca.key"},
		{"CA key missing", func(d string) { os.Remove(filepath.Join(d, "ca.key")) }, "ca.key"},
		{"mismatched CA key", func(d string) { write(d, "ca.key", must(EncodeKey(other.Key))) }, "ca.crt"},
		{"corrupt serving cert", func(d string) { write(d, "apiserver.crt", []byte("x")) }, "apiserver.crt"},
		{"mismatched admin key", func(d string) { copyFile(d, "scheduler.key", "admin.key") }, "admin.key"},
		{"admin from another CA", func(d string) { write(d, "admin.crt", otherCert); write(d, "admin.key", otherKey) }, "admin.crt"},
		{"cert without key", func(d string) { os.Remove(filepath.Join(d, "scheduler.key")) }, "scheduler.key"},
		{"corrupt sa key", func(d string) { write(d, "sa.key", []byte("nope")) }, "sa.key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := EnsureCluster(Options{Dir: dir}); err != nil {
				t.Fatal(err)
			}
			tt.mutate(dir)
			snapshot := readAll(t, dir)
			_, err := EnsureCluster(Options{Dir: dir})
			if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, tt.file)) {
				t.Fatalf("err = %v, want one naming %s", err, tt.file)
			}
			if got := readAll(t, dir); !equalMaps(got, snapshot) {
				t.Error("files were modified despite the error")
			}
		})
	}
}

func TestEnsureClusterInterruptedFirstRun(t *testing.T) {
	dir := t.TempDir()
	if _, err := EnsureCluster(Options{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	keyBefore, _ := os.ReadFile(filepath.Join(dir, "admin.key"))
	os.Remove(filepath.Join(dir, "admin.crt")) // key written, cert not: crash in between
	c, err := EnsureCluster(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.AdminKeyPEM, keyBefore) {
		t.Error("existing key was replaced")
	}
}

func TestEnsureClusterOperatorFiles(t *testing.T) {
	opDir := t.TempDir()
	ca, err := NewCA("operator-ca", 5*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	write(opDir, "ca.crt", ca.CertPEM)
	write(opDir, "ca.key", must(EncodeKey(ca.Key)))
	servCert, servKey, _ := ca.Issue(CertSpec{CommonName: "op", DNSNames: []string{"only.example"}, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	write(opDir, "srv.crt", servCert)
	write(opDir, "srv.key", servKey)
	saCert, saKey, _ := ca.Issue(CertSpec{CommonName: "sa", Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	_ = saCert
	write(opDir, "sa.pem", saKey)
	before := readAll(t, opDir)

	dir := filepath.Join(t.TempDir(), "pki")
	o := Options{
		Dir: dir, ServingHosts: []string{"hub.example"},
		CACertFile: filepath.Join(opDir, "ca.crt"), CAKeyFile: filepath.Join(opDir, "ca.key"),
		ServingCertFile: filepath.Join(opDir, "srv.crt"), ServingKeyFile: filepath.Join(opDir, "srv.key"),
		ServiceAccountKeyFile: filepath.Join(opDir, "sa.pem"),
	}
	for range 2 {
		c, err := EnsureCluster(o)
		if err != nil {
			t.Fatal(err)
		}
		if !c.CA.Cert.Equal(ca.Cert) || c.CACertFile != o.CACertFile || c.ServingCertFile != o.ServingCertFile || c.ServiceAccountKeyFile != o.ServiceAccountKeyFile {
			t.Fatalf("operator files not used: %+v", c)
		}
		if _, err := os.Stat(filepath.Join(dir, "apiserver.crt")); !os.IsNotExist(err) {
			t.Error("serving cert generated despite operator-provided one")
		}
		if _, err := os.Stat(filepath.Join(dir, "ca.crt")); !os.IsNotExist(err) {
			t.Error("CA written to Dir despite operator-provided one")
		}
		if _, err := os.Stat(c.ServiceAccountPubFile); err != nil {
			t.Error(err)
		}
		admin, _ := ParseCertPEM(c.AdminCertPEM)
		if err := verify(ca, admin, x509.ExtKeyUsageClientAuth, ""); err != nil {
			t.Error(err)
		}
	}
	if !equalMaps(readAll(t, opDir), before) {
		t.Error("operator files modified")
	}

	for _, bad := range []Options{
		{Dir: dir, CACertFile: o.CACertFile},
		{Dir: dir, ServingKeyFile: o.ServingKeyFile},
		{Dir: dir, CACertFile: o.CACertFile, CAKeyFile: filepath.Join(opDir, "srv.key")},
		{Dir: dir, CACertFile: o.CACertFile, CAKeyFile: o.CAKeyFile, ServingCertFile: o.ServingCertFile, ServingKeyFile: o.CAKeyFile},
		{Dir: dir, ServingHosts: []string{"hub.example:6443"}},
		{},
	} {
		if _, err := EnsureCluster(bad); err == nil {
			t.Errorf("EnsureCluster(%+v) succeeded, want error", bad)
		}
	}
}

func TestServingSpec(t *testing.T) {
	spec, err := servingSpec([]string{"[2001:db8::1]", "Hub.Example.", "10.96.0.1", "10.96.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.IPs) != 4 || !spec.IPs[3].Equal(net.ParseIP("10.96.0.1")) || !spec.IPs[2].Equal(net.ParseIP("2001:db8::1")) {
		t.Errorf("IPs = %v", spec.IPs)
	}
	if len(spec.DNSNames) != 6 || spec.DNSNames[5] != "hub.example" {
		t.Errorf("DNS = %v", spec.DNSNames)
	}
}

func write(dir, name string, data []byte) {
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
		panic(err)
	}
}

func copyFile(dir, from, to string) {
	data, err := os.ReadFile(filepath.Join(dir, from))
	if err != nil {
		panic(err)
	}
	write(dir, to, data)
}

func readAll(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = string(data)
	}
	return m
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

package proxy

import (
	"strings"
	"testing"
)

// FuzzParseTarget feeds arbitrary proxy targets ("[scheme:]name[:port]",
// the {name} segment of nodes|pods|services/proxy) to ParseTarget: it must
// never panic, and what it accepts is well formed.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{
		"web", "web:8080", "https:web:8443", "http:web:80", "https:web:", ":web:80",
		"ftp:web:21", "", ":", "::", ":::", "a:b:c:d", "https::443", "web:http",
		"n1:10250", "https:n1", "%2F..%2F", "web:-1", "web:99999999999999999999",
		"\x00:\xff:\x7f", strings.Repeat("a:", 1000),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		scheme, name, port, err := ParseTarget(id)
		if err != nil {
			if scheme != "" || name != "" || port != "" {
				t.Fatalf("ParseTarget(%q) = %q, %q, %q with error %v", id, scheme, name, port, err)
			}
			return
		}
		if name == "" {
			t.Fatalf("ParseTarget(%q): empty name accepted", id)
		}
		if scheme != "" && scheme != "https" {
			t.Fatalf("ParseTarget(%q): scheme %q", id, scheme)
		}
		if strings.Contains(name, ":") || strings.Contains(port, ":") {
			t.Fatalf("ParseTarget(%q) = name %q, port %q: a colon leaked", id, name, port)
		}
	})
}

// FuzzProxyable: any string, never a panic; accepted strings are IPs.
func FuzzProxyable(f *testing.F) {
	for _, s := range []string{"10.0.0.1", "127.0.0.1", "169.254.169.254", "::1", "fe80::1", "0.0.0.0", "::", "ff02::1", "x", ""} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, ip string, loopback bool) {
		if Proxyable(ip, loopback) == nil && !isIP(ip) {
			t.Fatalf("Proxyable(%q) accepted a non-IP", ip)
		}
	})
}

func isIP(s string) bool {
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF.:", c) {
			return false
		}
	}
	return s != ""
}

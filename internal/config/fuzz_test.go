package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// FuzzApply feeds arbitrary YAML and environment values through Apply: it
// must return an error or set flags, never panic, and an explicit flag
// always wins.
func FuzzApply(f *testing.F) {
	for _, seed := range []struct{ yaml, env string }{
		{"secure-port: 6443\ndata-dir: /var/lib/tether\nanonymous-auth: false\n", "7443"},
		{"etcd-servers: [https://a:2379, https://b:2379]\n", ""},
		{"secure-port: 6443.5\n", "x"},
		{"unknown-key: 1\n", ""},
		{"- a\n- b\n", ""},
		{"secure-port: {a: 1}\n", ""},
		{"timeout: 1m30s\nsecure-port: 1e3\n", "1e3"},
		{"data-dir: null\nanonymous-auth: yes\n", "true"},
		{"&a [*a]", ""},
		{"secure-port: 99999999999999999999\n", "-1"},
	} {
		f.Add([]byte(seed.yaml), seed.env)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, raw []byte, env string) {
		path := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		fs := pflag.NewFlagSet("fuzz", pflag.ContinueOnError)
		fs.Int("secure-port", 6443, "")
		fs.String("data-dir", "/d", "")
		fs.String("explicit", "def", "")
		fs.Bool("anonymous-auth", false, "")
		fs.StringSlice("etcd-servers", nil, "")
		fs.Duration("timeout", time.Second, "")
		if err := fs.Parse([]string{"--explicit=cli"}); err != nil {
			t.Fatal(err)
		}
		lookup := func(k string) (string, bool) {
			if k == EnvName("secure-port") || k == EnvName("explicit") {
				return env, true
			}
			return "", false
		}
		_ = Apply(fs, path, lookup)
		if v, _ := fs.GetString("explicit"); v != "cli" {
			t.Fatalf("explicit flag overridden: %q", v)
		}
	})
}

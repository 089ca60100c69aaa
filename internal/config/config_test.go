package config

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/pflag"
)

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(file, []byte("port: 3\nname: fromfile\nlist: [a, b]\nonly-file: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	port := fs.Int("port", 1, "")
	name := fs.String("name", "def", "")
	list := fs.StringSlice("list", nil, "")
	onlyFile := fs.String("only-file", "", "")
	untouched := fs.String("untouched", "default", "")
	if err := fs.Parse([]string{"--name=fromflag"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"TETHER_PORT": "2", "TETHER_NAME": "fromenv"}
	err := Apply(fs, file, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	if *port != 2 || *name != "fromflag" || len(*list) != 2 || *onlyFile != "x" || *untouched != "default" {
		t.Fatalf("got port=%d name=%s list=%v only-file=%s untouched=%s", *port, *name, *list, *onlyFile, *untouched)
	}
}

func TestUnknownKeyAndBadValue(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, body string }{
		{"unknown", "nope: 1\n"},
		{"badvalue", "port: notanumber\n"},
		{"notyaml", "port: [\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(dir, tc.name+".yaml")
			if err := os.WriteFile(file, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			fs.Int("port", 1, "")
			if err := Apply(fs, file, func(string) (string, bool) { return "", false }); err == nil {
				t.Fatal("want error")
			}
		})
	}
}

func TestEnvName(t *testing.T) {
	if got := EnvName("secure-port"); got != "TETHER_SECURE_PORT" {
		t.Fatal(got)
	}
}

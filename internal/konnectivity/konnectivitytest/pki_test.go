package konnectivitytest

import (
	"os"
	"testing"
)

// TestWriteFiles also generates a PKI for manual runs:
// KONN_PKI_DIR=/tmp/pki go test -run TestWriteFiles ./internal/konnectivity/konnectivitytest/
func TestWriteFiles(t *testing.T) {
	dir := os.Getenv("KONN_PKI_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	p, err := NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []struct{ name, cn string }{{"server", "konnectivity-server"}, {"agent", "system:node:node-1"}, {"frontend", "system:konnectivity-server"}} {
		if _, _, _, err := p.WriteFiles(dir, n.name, n.cn); err != nil {
			t.Fatal(err)
		}
	}
}

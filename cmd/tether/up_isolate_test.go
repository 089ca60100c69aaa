package main

import (
	"strings"
	"testing"
)

// TestForwardedServerFlags: what the user set on `tether up` (flag or
// TETHER_* environment) reaches the hub's `tether server`, except what the
// isolated topology decides itself and the flags only `up` has.
func TestForwardedServerFlags(t *testing.T) {
	t.Setenv("TETHER_CLUSTER_SIGNING_DURATION", "40s")
	cmd := newUpCmd()
	if err := cmd.ParseFlags([]string{"--nodes", "2", "--isolate-nodes", "--egress=konnectivity", "--secure-port", "7443",
		"--data-dir", "/tmp/x", "--bind-address", "127.0.0.1", "--bootstrap-token", "abcdef.0123456789abcdef", "--bootstrap-token", "ghijkl.0123456789abcdef"}); err != nil {
		t.Fatal(err)
	}
	if err := cmd.PreRunE(cmd, nil); err != nil { // applies TETHER_* (withConfig)
		t.Fatal(err)
	}
	args, err := forwardedServerFlags(cmd.Flags())
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(args, " ")
	for _, want := range []string{"--egress=konnectivity", "--secure-port=7443", "--cluster-signing-duration=40s",
		"--bootstrap-token=abcdef.0123456789abcdef", "--bootstrap-token=ghijkl.0123456789abcdef"} {
		if !strings.Contains(got, want) {
			t.Errorf("forwarded %q lacks %s", got, want)
		}
	}
	for _, not := range []string{"--nodes", "--isolate", "--data-dir", "--bind-address"} {
		if strings.Contains(got, not) {
			t.Errorf("forwarded %q has %s", got, not)
		}
	}
}

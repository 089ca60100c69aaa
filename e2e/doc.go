// Package e2e holds tether's end-to-end acceptance tests. They build the
// tether binary once (TestMain), run it as a child process (`tether up
// --nodes 0` on a loopback port with a temporary data directory), wait on
// its ready file and /readyz, and judge it with real clients: every
// installed kubectl 1.27–1.33 (/usr/lib/google-cloud-sdk/bin/kubectl.1.*,
// from the Debian `kubectl` package) and client-go. They also feed the hub
// bad input, restart it, and kill -9 it during writes.
//
// Run with `go test -race ./e2e`; the whole package takes a few minutes.
// GOFLAGS given to `go test` also apply to the build of the binary.
package e2e

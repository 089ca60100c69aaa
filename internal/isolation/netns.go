package isolation

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// nsPath is where ip(8) keeps named network namespaces.
func nsPath(name string) string { return "/run/netns/" + name }

// inNetNS runs f on an OS thread switched into namespace ns. Sockets f
// creates stay in ns after the thread switches back. If switching back
// fails the thread stays locked and is discarded when the goroutine ends.
func inNetNS(ns string, f func() error) error {
	target, err := os.Open(nsPath(ns))
	if err != nil {
		return fmt.Errorf("network namespace %s: %w", ns, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	// A fresh goroutine: its thread is the only one that ever switches.
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns back from %s: %w", ns, err) // thread stays locked: discarded
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DialContext opens a TCP connection from inside namespace ns.
func DialContext(ctx context.Context, ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetNS(ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// writeSysctl writes a /proc/sys file of namespace ns.
func writeSysctl(ns, path, value string) error {
	return inNetNS(ns, func() error { return os.WriteFile(path, []byte(value), 0o644) })
}

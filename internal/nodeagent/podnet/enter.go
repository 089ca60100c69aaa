package podnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	goruntime "runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount is a read-only bind mount of Source at Target.
type Mount struct{ Source, Target string }

// ParseMount parses "target=source" (the pod-init flag format).
func ParseMount(s string) (Mount, error) {
	t, src, ok := strings.Cut(s, "=")
	if !ok || !strings.HasPrefix(t, "/") || !strings.HasPrefix(src, "/") {
		return Mount{}, fmt.Errorf("mount %q: want /target=/source", s)
	}
	return Mount{Source: src, Target: t}, nil
}

// Exec is the pod init: it enters the network namespace at netnsPath (if
// any), unshares a mount namespace whose mounts are all private (so nothing
// propagates back to the node), bind-mounts each mount read-only, and execs
// argv with env. It returns only on failure. Run it in a fresh process (the
// hidden `tether pod-init` command): it changes the calling thread's
// namespaces for good.
func Exec(netnsPath string, mounts []Mount, argv, env []string) error {
	if len(argv) == 0 {
		return errors.New("pod-init: no command")
	}
	goruntime.LockOSThread() // never unlocked: the thread execs or the process exits
	if netnsPath != "" {
		fd, err := unix.Open(netnsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("pod-init: open %s: %w", netnsPath, err)
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("pod-init: enter network namespace %s: %w", netnsPath, err)
		}
		unix.Close(fd)
	}
	if len(mounts) > 0 {
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("pod-init: new mount namespace: %w", err)
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return fmt.Errorf("pod-init: make mounts private: %w", err)
		}
		for _, m := range mounts {
			if err := os.MkdirAll(m.Target, 0o755); err != nil {
				return fmt.Errorf("pod-init: %w", err)
			}
			if err := unix.Mount(m.Source, m.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				return fmt.Errorf("pod-init: bind %s at %s: %w", m.Source, m.Target, err)
			}
			if err := unix.Mount("", m.Target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
				return fmt.Errorf("pod-init: read-only %s: %w", m.Target, err)
			}
		}
	}
	err := unix.Exec(argv[0], argv, env)
	return fmt.Errorf("pod-init: exec %s: %w", argv[0], err)
}

// DialIn connects to address from inside the network namespace at
// netnsPath (port-forward and probes of a pod with its own network). The
// socket is made by a dedicated, locked thread that returns to the agent's
// namespace, or dies if it cannot.
func DialIn(ctx context.Context, netnsPath, network, address string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			goruntime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer unix.Close(orig)
		fd, err := unix.Open(netnsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			goruntime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("pod network namespace: %w", err)}
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			goruntime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("enter pod network namespace: %w", err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, address)
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			goruntime.UnlockOSThread()
		} // else: the goroutine ends locked and its thread is discarded
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// Main is the pod init's command line (after "pod-init"):
//
//	[--netns PATH] [--mount /target=/source]... -- COMMAND [ARG]...
//
// Flags are parsed by hand, never from the environment (the container's
// environment passes through unchanged). It returns only on failure.
func Main(args []string) error {
	var nsPath string
	var mounts []Mount
	for len(args) > 0 && args[0] != "--" {
		switch {
		case args[0] == "--netns" && len(args) > 1:
			nsPath, args = args[1], args[2:]
		case args[0] == "--mount" && len(args) > 1:
			m, err := ParseMount(args[1])
			if err != nil {
				return err
			}
			mounts, args = append(mounts, m), args[2:]
		default:
			return errors.New("pod-init: usage: pod-init [--netns PATH] [--mount /target=/source]... -- COMMAND [ARG]...; got " + strings.Join(args, " "))
		}
	}
	if len(args) < 2 {
		return errors.New("pod-init: no command after --")
	}
	return Exec(nsPath, mounts, args[1:], os.Environ())
}

package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tether-dev/tether/internal/nodeagent/podnet"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// splitName splits the "namespace/name" pod names the streaming handlers use.
func splitName(full string) (string, string, error) {
	ns, name, ok := strings.Cut(full, "/")
	if !ok || ns == "" || name == "" {
		return "", "", fmt.Errorf("pod name %q must be namespace/name", full)
	}
	return ns, name, nil
}

func (r *Runtime) container(ns, name, uid, cname string) (*container, error) {
	w := r.find(ns, name, uid)
	if w == nil {
		return nil, fmt.Errorf("pod %s/%s: %w", ns, name, ErrNotFound)
	}
	for _, c := range append(append([]*container{}, w.mains...), w.inits...) {
		if c.spec.Name == cname {
			return c, nil
		}
	}
	if cname == "" && len(w.mains) == 1 {
		return w.mains[0], nil
	}
	return nil, fmt.Errorf("container %q in pod %s/%s: %w", cname, ns, name, ErrNotFound)
}

// Logs writes a container's log per opts to w.
func (r *Runtime) Logs(ctx context.Context, ns, name, cname string, opts LogOptions, out io.Writer) error {
	c, err := r.container(ns, name, "", cname)
	if err != nil {
		return err
	}
	c.w.mu.Lock()
	restarts := c.restartCount
	sink := c.sink
	var ended <-chan struct{}
	if c.proc != nil {
		ended = c.proc.done
	}
	c.w.mu.Unlock()
	if opts.Previous {
		if restarts == 0 {
			return fmt.Errorf("previous terminated container %q in pod %q: %w", cname, name, ErrNotFound)
		}
		restarts--
		sink, ended = nil, nil
		opts.Follow = false
	}
	path := c.logPath(restarts)
	files := []string{path + ".1", path}
	if ended == nil {
		closed := make(chan struct{})
		close(closed)
		ended = closed
	}
	return readLogs(ctx, files, opts, out, sink, ended)
}

// execEnv is the environment of the container's running process (resolved
// again for a process adopted from a previous agent).
func (r *Runtime) execEnv(ctx context.Context, c *container) ([]string, string, error) {
	w := c.w
	w.mu.Lock()
	pod := w.pod.DeepCopy()
	extra := w.extraEnv
	env := c.env
	w.mu.Unlock()
	dir := c.spec.WorkingDir
	if dir == "" {
		dir = "/"
	}
	if env != nil {
		return env, dir, nil
	}
	res, err := r.resolveEnvQuiet(ctx, pod, &c.spec, w.podIPOrHost(), extra)
	if err != nil {
		return nil, "", err
	}
	return envList(res.process(pod.Name)), dir, nil
}

// ExecInContainer runs cmd with the container's environment and working
// directory (remotecommand.Executor).
func (r *Runtime) ExecInContainer(ctx context.Context, podName, uid, cname string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, timeout time.Duration) error {
	ns, name, err := splitName(podName)
	if err != nil {
		return err
	}
	c, err := r.container(ns, name, uid, cname)
	if err != nil {
		return err
	}
	if len(cmd) == 0 {
		return errors.New("exec needs a command")
	}
	env, dir, err := r.execEnv(ctx, c)
	if err != nil {
		return err
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	envMap := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		envMap[k] = v
	}
	path, err := lookPath(cmd[0], envMap)
	if err != nil {
		return err
	}
	args := append([]string{path}, cmd[1:]...)
	// Enter the container's namespaces (mount, network) when it has them.
	c.w.mu.Lock()
	mounts, proc, nsPath := len(c.w.mounts) > 0, c.proc, c.w.netns
	c.w.mu.Unlock()
	if (mounts || nsPath != "") && os.Geteuid() == 0 {
		switch {
		case proc != nil && mounts:
			nsenter, err := exec.LookPath("nsenter")
			if err != nil {
				return fmt.Errorf("exec into a pod with its own mount namespace needs nsenter (util-linux): %w", err)
			}
			ns := []string{nsenter, "--target", strconv.Itoa(proc.pid), "--mount"}
			if nsPath != "" {
				ns = append(ns, "--net="+nsPath)
			}
			args = append(append(ns, "--"), args...)
		default:
			if wrapped, ok := r.withNamespaces(nsPath, nil, args); ok {
				args = wrapped
			}
		}
	}
	command := exec.CommandContext(ctx, args[0], args[1:]...)
	command.Env, command.Dir = env, dir
	command.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if tty {
		return runWithTTY(command, in, out, resize)
	}
	command.Stdin, command.Stdout, command.Stderr = in, out, errw
	return exitError(command.Run())
}

func exitError(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return &utilexec.ExitErrorWrapper{ExitError: ee}
	}
	return err
}

// runWithTTY runs command on a new pseudo-terminal.
func runWithTTY(command *exec.Cmd, in io.Reader, out io.Writer, resize <-chan remotecommand.TerminalSize) error {
	ptmx, tty, err := openPTY()
	if err != nil {
		return err
	}
	defer ptmx.Close()
	command.Stdin, command.Stdout, command.Stderr = tty, tty, tty
	command.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := command.Start(); err != nil {
		tty.Close()
		return err
	}
	tty.Close()
	go func() {
		for size := range resize {
			ws := &unix.Winsize{Row: size.Height, Col: size.Width}
			_ = unix.IoctlSetWinsize(int(ptmx.Fd()), unix.TIOCSWINSZ, ws)
		}
	}()
	if in != nil {
		go func() { _, _ = io.Copy(ptmx, in) }()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(out, ptmx)
	}()
	err = command.Wait()
	_ = ptmx.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	<-done
	return exitError(err)
}

func openPTY() (*os.File, *os.File, error) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	var unlock int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, ptmx.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		ptmx.Close()
		return nil, nil, fmt.Errorf("unlock pty: %w", e)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		ptmx.Close()
		return nil, nil, fmt.Errorf("pty number: %w", err)
	}
	tty, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		ptmx.Close()
		return nil, nil, fmt.Errorf("open tty: %w", err)
	}
	return ptmx, tty, nil
}

// AttachContainer streams the container's output from now on and, for a
// container with stdin: true, copies in to its stdin
// (remotecommand.Attacher). With stdinOnce the container's stdin is closed
// when the first attach that carried stdin ends. The attach ends when the
// process exits (after its last output has been delivered), when ctx ends,
// or when the client is gone (a failed write or stdin read).
//
// A container with tty: true has a terminal: input goes to it, its output
// (stdout and stderr together) arrives as written, and resize events set
// its size.
func (r *Runtime) AttachContainer(ctx context.Context, podName, uid, cname string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	ns, name, err := splitName(podName)
	if err != nil {
		return err
	}
	c, err := r.container(ns, name, uid, cname)
	if err != nil {
		return err
	}
	c.w.mu.Lock()
	sink, p := c.sink, c.proc
	c.w.mu.Unlock()
	if sink == nil || p == nil {
		return fmt.Errorf("container %q is not running", cname)
	}
	select {
	case <-p.done:
		return fmt.Errorf("container %q is not running", cname)
	default:
	}
	sub := &subscriber{failed: make(chan struct{})}
	if out != nil {
		sub.out = out
	}
	if errw != nil {
		sub.err = errw
	} else {
		sub.err = sub.out
	}
	unsubscribe := sink.subscribe(sub)
	defer unsubscribe()
	c.w.mu.Lock()
	ptmx, ttyPumped := c.ptmx, c.ttyPumped
	c.w.mu.Unlock()
	if resize != nil {
		go func() {
			for size := range resize {
				if ptmx != nil {
					_ = setWinsize(ptmx, size)
				}
			}
		}()
	}
	gone := make(chan struct{})
	switch {
	case in == nil:
	case c.spec.TTY:
		c.attachTerminal(in, gone)
	default:
		stdin, _ := c.stdinWriter(false)
		if !c.spec.Stdin || stdin == nil {
			// The container has no stdin (or a stdinOnce stdin already
			// closed): the client's input is read and dropped.
			go func() { _, _ = io.Copy(io.Discard, in) }()
		} else {
			if c.spec.StdinOnce {
				defer c.closeStdin(stdin)
			}
			go func() {
				_, err := io.Copy(stdin, in)
				switch {
				case err == nil && c.spec.StdinOnce:
					c.closeStdin(stdin) // the client closed its stdin: EOF
				case err != nil && !errors.Is(err, os.ErrClosed):
					close(gone) // the client's stream broke
				}
			}()
		}
	}
	select {
	case <-ctx.Done():
	case <-sub.failed:
	case <-gone:
	case <-p.done:
		if ptmx != nil {
			// A pty's output is in transit in the kernel for a while;
			// the pump reads all of it before the hang-up (EIO).
			t := time.NewTimer(2 * time.Second)
			select {
			case <-ttyPumped:
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		} else {
			for i := range c.fifos {
				drain(ctx, c.fifos[i], &c.pumps[i])
			}
		}
	}
	return nil
}

// attachTerminal copies in to the terminal of a tty: true container with
// stdin: true. With stdinOnce, the end of the first attach that carried
// input sends end-of-file (^D, as the terminal's line discipline reads it)
// and later input is dropped.
func (c *container) attachTerminal(in io.Reader, gone chan struct{}) {
	c.w.mu.Lock()
	ptmx, closed := c.ptmx, c.ttyClosed
	c.w.mu.Unlock()
	if !c.spec.Stdin || ptmx == nil || closed {
		go func() { _, _ = io.Copy(io.Discard, in) }()
		return
	}
	go func() {
		_, err := io.Copy(ptmx, in)
		if c.spec.StdinOnce {
			c.w.mu.Lock()
			first := !c.ttyClosed && c.ptmx == ptmx
			c.ttyClosed = true
			c.w.mu.Unlock()
			if first {
				_, _ = ptmx.Write([]byte{4})
			}
		}
		if err != nil && !errors.Is(err, os.ErrClosed) {
			close(gone)
		}
	}()
}

// setWinsize sets the terminal size of the pty master f.
func setWinsize(f *os.File, size remotecommand.TerminalSize) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: size.Height, Col: size.Width})
	}); err != nil {
		return err
	}
	return serr
}

// fifoQueued is the number of bytes waiting in f (FIONREAD), without
// f.Fd(), which would take f out of the runtime poller.
func fifoQueued(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCINQ) }); err != nil {
		return 0, err
	}
	return n, ierr
}

// drain waits (bounded) until the output a container wrote to f before it
// exited has been read and handed to the sink by f's pump.
func drain(ctx context.Context, f *os.File, n *pumpCount) {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		queued, err := fifoQueued(f)
		if err != nil || (queued == 0 && n.read.Load() == n.written.Load()) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// PortForward connects stream to port on the pod's network (the host's
// loopback with host networking) (portforward.PortForwarder).
func (r *Runtime) PortForward(ctx context.Context, podName, uid string, port int32, stream io.ReadWriteCloser) error {
	ns, name, err := splitName(podName)
	if err != nil {
		return err
	}
	w := r.find(ns, name, uid)
	if w == nil {
		return fmt.Errorf("pod %s: %w", podName, ErrNotFound)
	}
	if port <= 0 || port > 65535 {
		return fmt.Errorf("invalid port %d", port)
	}
	defer stream.Close()
	// The pod's localhost: in its own network namespace, or the node's.
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	var conn net.Conn
	if nsPath := w.podNetns(); nsPath != "" {
		conn, err = podnet.DialIn(ctx, nsPath, "tcp", addr)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return fmt.Errorf("port-forward to %s port %d: %w", podName, port, err)
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(conn, stream); closeWrite(conn); done <- struct{}{} }()
	go func() { _, _ = io.Copy(stream, conn); done <- struct{}{} }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// stateDirs lists pod state directories (for adoption).
func (r *Runtime) stateDirs() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(r.cfg.Dir, "pods"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, filepath.Join(r.cfg.Dir, "pods", e.Name()))
		}
	}
	return out, nil
}

package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// podWorker owns one pod's processes.
type podWorker struct {
	rt  *Runtime
	dir string
	// immutable copies
	uid  types.UID
	key  string // namespace/name
	spec *corev1.PodSpec

	mu          sync.Mutex
	pod         *corev1.Pod
	inits       []*container
	mains       []*container
	initsDone   bool
	failed      bool // init container failed with restartPolicy Never
	waitReason  string
	waitMessage string
	startTime   metav1.Time
	extraEnv    []string
	mounts      []Mount
	netns       string // pod network namespace (own network only)
	podIP       net.IP

	terminating chan struct{}
	termOnce    sync.Once
	termDone    chan struct{}
	detached    chan struct{}
	detachOnce  sync.Once
	running     sync.WaitGroup // container supervisors
}

// container is one container of the pod and its current process.
type container struct {
	w    *podWorker
	spec corev1.Container
	init bool
	dir  string

	// guarded by w.mu
	proc         *procEntry
	startedAt    time.Time
	restartCount int32
	lastTerm     *corev1.ContainerStateTerminated
	term         *corev1.ContainerStateTerminated // current state when terminated
	waitReason   string
	waitMessage  string
	ready        bool
	sink         *logSink
	stopped      bool     // supervisor finished
	env          []string // the running process's environment (for exec)

	fifos []*os.File
	pumps [2]pumpCount // stdout, stderr
	// stdinW is the agent's end of stdin.fifo for containers with
	// stdin: true (guarded by w.mu); nil after a stdinOnce attach closed it.
	stdinW *os.File
	// ptmx is the terminal master of a tty: true container's current
	// process (guarded by w.mu); ttyClosed after a stdinOnce attach.
	ptmx      *os.File
	ttyPumped chan struct{} // closed when ptmx's pump has read everything (EIO)
	ttyClosed bool
	ttyPump   pumpCount
}

// containerState is persisted so a restarted agent can adopt processes.
type containerState struct {
	Pid          int                              `json:"pid"`
	StartTicks   uint64                           `json:"startTicks"`
	StartedAt    time.Time                        `json:"startedAt"`
	RestartCount int32                            `json:"restartCount"`
	LastTerm     *corev1.ContainerStateTerminated `json:"lastTerm,omitempty"`
	Term         *corev1.ContainerStateTerminated `json:"term,omitempty"`
}

func newPodWorker(r *Runtime, pod *corev1.Pod) *podWorker {
	w := &podWorker{
		rt: r, dir: filepath.Join(r.cfg.Dir, "pods", string(pod.UID)), pod: pod,
		uid: pod.UID, key: pod.Namespace + "/" + pod.Name, spec: pod.Spec.DeepCopy(),
		terminating: make(chan struct{}), termDone: make(chan struct{}), detached: make(chan struct{}),
		startTime: metav1.Now(),
	}
	for _, c := range pod.Spec.InitContainers {
		w.inits = append(w.inits, &container{w: w, spec: c, init: true, dir: filepath.Join(w.dir, "init-"+c.Name)})
	}
	for _, c := range pod.Spec.Containers {
		w.mains = append(w.mains, &container{w: w, spec: c, dir: filepath.Join(w.dir, c.Name)})
	}
	return w
}

func (w *podWorker) snapshot() *corev1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pod.DeepCopy()
}

func (w *podWorker) update(pod *corev1.Pod) {
	w.mu.Lock()
	// Spec is immutable for process pods; keep metadata fresh.
	p := w.pod.DeepCopy()
	p.ObjectMeta = *pod.ObjectMeta.DeepCopy()
	w.pod = p
	w.mu.Unlock()
}

func (w *podWorker) changed() { w.rt.cfg.OnChange(w.uid) }

func (w *podWorker) log() interface {
	Info(string, ...any)
	Warn(string, ...any)
} {
	return w.rt.log.With("pod", w.key)
}

// run drives the pod: state dir, volumes, init containers, then the
// containers' supervisors. adopted marks pods found on disk at start.
func (w *podWorker) run(ctx context.Context, adopted map[string]*containerState) {
	defer w.detach()
	if err := os.MkdirAll(w.dir, 0o700); err != nil {
		w.setWaiting("CreateContainerConfigError", err.Error())
		return
	}
	if adopted == nil {
		data, err := json.Marshal(w.snapshot())
		if err == nil {
			err = writeAtomic(filepath.Join(w.dir, "pod.json"), data)
		}
		if err != nil {
			w.setWaiting("CreateContainerConfigError", err.Error())
			return
		}
	}
	// The pod's network, then volumes and credentials, retried until they
	// work.
	backoff := time.Second
	for w.rt.cfg.Network != nil {
		nsPath, ip, err := w.rt.cfg.Network.Add(ctx, w.uid)
		if err == nil {
			w.mu.Lock()
			w.netns, w.podIP = nsPath, ip
			w.mu.Unlock()
			break
		}
		w.setWaiting("NetworkNotReady", err.Error())
		if !w.sleep(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, 30*time.Second)
	}
	backoff = time.Second
	for w.rt.cfg.PrepareVolumes != nil {
		vols, err := w.rt.cfg.PrepareVolumes(ctx, w.snapshot())
		if err == nil {
			w.mu.Lock()
			w.extraEnv, w.mounts = vols.Env, vols.Mounts
			w.mu.Unlock()
			break
		}
		w.setWaiting("CreateContainerConfigError", err.Error())
		if !w.sleep(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, 30*time.Second)
	}
	w.setWaiting("", "")
	for _, c := range append(append([]*container{}, w.inits...), w.mains...) {
		if err := c.openFIFOs(); err != nil {
			c.setWaiting("CreateContainerError", err.Error())
			return
		}
	}
	defer func() {
		for _, c := range append(append([]*container{}, w.inits...), w.mains...) {
			c.closeFIFOs()
		}
	}()
	initsDone := adopted != nil && len(adopted) > 0
	for _, c := range w.mains {
		if st, ok := adopted[c.spec.Name]; ok && st != nil {
			initsDone = true
		}
	}
	if !initsDone {
		for _, c := range w.inits {
			if !c.runInit(ctx) {
				w.mu.Lock()
				failed := w.failed
				w.mu.Unlock()
				if failed {
					w.changed()
				}
				// terminated, detached, or failed for good: no mains.
				if failed {
					<-w.stopping(ctx)
				}
				return
			}
		}
	}
	w.mu.Lock()
	w.initsDone = true
	w.mu.Unlock()
	w.changed()
	for _, c := range w.mains {
		w.running.Add(1)
		go func() {
			defer w.running.Done()
			c.supervise(ctx, adopted[c.spec.Name])
		}()
	}
	w.running.Wait()
	w.changed()
	<-w.stopping(ctx)
}

// stopping returns a channel closed when the worker should stop.
func (w *podWorker) stopping(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		select {
		case <-ctx.Done():
		case <-w.detached:
		case <-w.terminating:
		}
	}()
	return ch
}

func (w *podWorker) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
	case <-w.terminating:
	case <-w.detached:
	}
	return false
}

func (w *podWorker) setWaiting(reason, msg string) {
	w.mu.Lock()
	w.waitReason, w.waitMessage = reason, msg
	w.mu.Unlock()
	w.changed()
}

// terminate stops every process: SIGTERM, then SIGKILL after grace.
func (w *podWorker) terminate(grace time.Duration) {
	w.termOnce.Do(func() {
		close(w.terminating)
		go func() {
			defer close(w.termDone)
			w.killAll(grace)
		}()
	})
	<-w.termDone
	w.changed()
}

func (w *podWorker) killAll(grace time.Duration) {
	var procs []*procEntry
	w.mu.Lock()
	for _, c := range append(append([]*container{}, w.inits...), w.mains...) {
		if c.proc != nil {
			procs = append(procs, c.proc)
		}
	}
	w.mu.Unlock()
	for _, p := range procs {
		signalGroup(p.pid, syscall.SIGTERM)
	}
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	for _, p := range procs {
		select {
		case <-p.done:
		case <-deadline.C:
			for _, q := range procs {
				signalGroup(q.pid, syscall.SIGKILL)
			}
			for _, q := range procs {
				<-q.done
			}
			return
		}
	}
	// Also kill leftovers of the groups (children that ignored SIGTERM).
	for _, p := range procs {
		signalGroup(p.pid, syscall.SIGKILL)
	}
}

// detach stops supervising without touching the processes.
func (w *podWorker) detach() {
	w.detachOnce.Do(func() { close(w.detached) })
}

func (w *podWorker) allStopped() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range append(append([]*container{}, w.inits...), w.mains...) {
		if c.proc != nil {
			select {
			case <-c.proc.done:
			default:
				return false
			}
		}
	}
	return true
}

func (w *podWorker) isTerminating() bool {
	select {
	case <-w.terminating:
		return true
	default:
		return false
	}
}

// ---- containers ----

func (c *container) setWaiting(reason, msg string) {
	c.w.mu.Lock()
	c.waitReason, c.waitMessage = reason, msg
	c.w.mu.Unlock()
	c.w.changed()
}

func (c *container) openFIFOs() error {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return fmt.Errorf("container dir: %w", err)
	}
	for i, stream := range []string{"stdout", "stderr"} {
		f, err := openFIFO(filepath.Join(c.dir, stream+".fifo"))
		if err != nil {
			return err
		}
		c.fifos = append(c.fifos, f)
		go pump(f, stream, c.currentSink, &c.pumps[i])
	}
	if c.spec.Stdin && !c.spec.TTY {
		f, err := openFIFO(c.stdinPath())
		if err != nil {
			return err
		}
		c.w.mu.Lock()
		c.stdinW = f
		c.w.mu.Unlock()
	}
	return nil
}

// openFIFO creates (if needed) and opens a FIFO read-write and
// non-blocking: opening never waits for the other side, and the agent's
// reads and writes go through the runtime poller (deadlines, Close).
func openFIFO(path string) (*os.File, error) {
	if err := syscall.Mkfifo(path, 0o600); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("mkfifo: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open fifo: %w", err)
	}
	return f, nil
}

func (c *container) stdinPath() string { return filepath.Join(c.dir, "stdin.fifo") }

// stdinWriter returns the agent's end of the container's stdin, reopening
// it for a container that restarts after a stdinOnce attach closed it (a
// new container instance gets a new stdin, as with container engines).
func (c *container) stdinWriter(reopen bool) (*os.File, error) {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	if c.stdinW == nil && reopen {
		f, err := openFIFO(c.stdinPath())
		if err != nil {
			return nil, err
		}
		c.stdinW = f
	}
	return c.stdinW, nil
}

// closeStdin closes f, the agent's end of the container's stdin: with no
// other writer left the process reads EOF (stdinOnce).
func (c *container) closeStdin(f *os.File) {
	c.w.mu.Lock()
	if c.stdinW == f {
		c.stdinW = nil
	}
	c.w.mu.Unlock()
	_ = f.Close()
}

func (c *container) closeFIFOs() {
	for _, f := range c.fifos {
		_ = f.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	}
	for _, f := range c.fifos {
		_ = f.Close()
	}
	c.w.mu.Lock()
	if c.sink != nil {
		c.sink.close()
	}
	stdin, ptmx := c.stdinW, c.ptmx
	c.stdinW, c.ptmx = nil, nil
	c.w.mu.Unlock()
	if stdin != nil {
		_ = stdin.Close()
	}
	if ptmx != nil {
		_ = ptmx.Close()
	}
}

func (c *container) currentSink() *logSink {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	return c.sink
}

func (c *container) logPath(restart int32) string {
	return filepath.Join(c.dir, strconv.Itoa(int(restart))+".log")
}

// runInit runs an init container until it succeeds. It returns false when
// the pod must not continue.
func (c *container) runInit(ctx context.Context) bool {
	policy := c.w.spec.RestartPolicy
	crashes, configTries := 0, 0
	for {
		p, err := c.start(ctx)
		if err != nil {
			if !c.startFailed(ctx, err, &crashes, &configTries) {
				return false
			}
			continue
		}
		if !c.await(ctx, p) {
			return false
		}
		c.w.mu.Lock()
		code := c.term.ExitCode
		c.w.mu.Unlock()
		if code == 0 {
			return true
		}
		if policy == corev1.RestartPolicyNever {
			c.w.mu.Lock()
			c.w.failed = true
			c.w.mu.Unlock()
			return false
		}
		if !c.backoff(ctx, &crashes, "CrashLoopBackOff", "") {
			return false
		}
	}
}

// supervise runs a main container per the restart policy.
func (c *container) supervise(ctx context.Context, adopted *containerState) {
	defer func() {
		c.w.mu.Lock()
		c.stopped = true
		c.w.mu.Unlock()
	}()
	policy := c.w.spec.RestartPolicy
	crashes, configTries := 0, 0
	var p *procEntry
	if adopted != nil {
		p = c.adopt(adopted)
	}
	for {
		if p == nil {
			if c.w.isTerminating() {
				return
			}
			var err error
			if p, err = c.start(ctx); err != nil {
				if !c.startFailed(ctx, err, &crashes, &configTries) {
					return
				}
				continue
			}
			configTries = 0
		}
		probeCtx, stopProbes := context.WithCancel(ctx)
		go c.probe(probeCtx, p)
		ok := c.await(ctx, p)
		stopProbes()
		if !ok {
			return
		}
		c.w.mu.Lock()
		code := c.term.ExitCode
		ran := c.term.FinishedAt.Sub(c.term.StartedAt.Time)
		c.w.mu.Unlock()
		p = nil
		restart := policy == corev1.RestartPolicyAlways || policy == "" || (policy == corev1.RestartPolicyOnFailure && code != 0)
		if !restart || c.w.isTerminating() {
			return
		}
		if ran > 10*time.Minute {
			crashes = 0
		}
		if !c.backoff(ctx, &crashes, "CrashLoopBackOff", "") {
			return
		}
	}
}

// backoff waits before the next start; false when the worker stops.
func (c *container) backoff(ctx context.Context, crashes *int, reason, msg string) bool {
	d := c.w.rt.cfg.BackoffBase << min(*crashes, 16)
	d = min(d, c.w.rt.cfg.BackoffMax)
	*crashes++
	if msg == "" {
		msg = fmt.Sprintf("back-off %s restarting failed container %s in pod %s", d, c.spec.Name, c.w.key)
	}
	c.setWaiting(reason, msg)
	return c.w.sleep(ctx, d)
}

// startFailed waits before the next start attempt; false when the worker
// stops. A configuration that cannot be resolved yet (ConfigError) waits
// with CreateContainerConfigError and is retried soon (1 s doubling to
// 10 s), as kubelet retries on its next sync; other errors back off as
// crashes do.
func (c *container) startFailed(ctx context.Context, err error, crashes, configTries *int) bool {
	var ce *ConfigError
	if !errors.As(err, &ce) {
		return c.backoff(ctx, crashes, "RunContainerError", err.Error())
	}
	c.w.mu.Lock()
	repeated := c.waitReason == "CreateContainerConfigError" && c.waitMessage == err.Error()
	c.w.mu.Unlock()
	if !repeated {
		c.w.rt.event(c.w.snapshot(), corev1.EventTypeWarning, "Failed", "Error: "+err.Error())
	}
	c.setWaiting("CreateContainerConfigError", err.Error())
	d := min(time.Second<<min(*configTries, 4), 10*time.Second)
	*configTries++
	return c.w.sleep(ctx, d)
}

// start launches a new process for the container.
func (c *container) start(ctx context.Context) (*procEntry, error) {
	w := c.w
	if len(c.spec.Command) == 0 && len(c.spec.Args) == 0 {
		return nil, errors.New("the process runtime runs spec.command/args on the host; it does not run images, and this container has no command")
	}
	argv := append(append([]string{}, c.spec.Command...), c.spec.Args...)
	w.mu.Lock()
	pod := w.pod.DeepCopy()
	extra := w.extraEnv
	mounts := w.mounts
	nsPath := w.netns
	restarts := c.restartCount
	if c.term != nil {
		restarts++
	}
	w.mu.Unlock()
	res, err := w.rt.resolveEnv(ctx, pod, &c.spec, w.podIPOrHost(), extra)
	if err != nil {
		return nil, err
	}
	env := res.process(pod.Name)
	argv = expandArgs(argv, res.vars)
	path, err := lookPath(argv[0], env)
	if err != nil {
		return nil, err
	}
	if wrapped, ok := w.rt.withNamespaces(nsPath, mounts, append([]string{path}, argv[1:]...)); ok {
		path, argv = wrapped[0], wrapped
	}
	sink, err := newLogSink(c.logPath(restarts), w.rt.cfg.LogMaxBytes)
	if err != nil {
		return nil, err
	}
	var files []*os.File
	var closeFiles func()
	var ptmx *os.File
	sys := &syscall.SysProcAttr{Setpgid: true}
	if c.spec.TTY {
		// A terminal: the process's stdin, stdout and stderr are the pty
		// (its controlling terminal, in a session of its own); the agent
		// keeps the master.
		var tty *os.File
		if ptmx, tty, err = openPTY(); err != nil {
			sink.close()
			return nil, err
		}
		files, closeFiles = []*os.File{tty, tty, tty}, func() { tty.Close() }
		sys = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	} else if files, closeFiles, err = c.stdio(); err != nil {
		sink.close()
		return nil, err
	}
	// The sink is in place before the process can write anything.
	w.mu.Lock()
	if c.sink != nil {
		c.sink.close()
	}
	c.sink = sink
	w.mu.Unlock()
	defer closeFiles()
	dir := c.spec.WorkingDir
	if dir == "" {
		dir = "/"
	}
	proc, err := os.StartProcess(path, argv, &os.ProcAttr{
		Dir: dir, Env: envList(env), Files: files, Sys: sys,
	})
	if err != nil {
		if ptmx != nil {
			ptmx.Close()
		}
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	if ptmx != nil {
		pumped := make(chan struct{})
		w.mu.Lock()
		old := c.ptmx
		c.ptmx, c.ttyPumped, c.ttyClosed = ptmx, pumped, false
		w.mu.Unlock()
		if old != nil {
			old.Close()
		}
		go pumpChunks(ptmx, "stdout", c.currentSink, &c.ttyPump, pumped)
	}
	pid := proc.Pid
	_ = proc.Release()
	ticks, _, _ := procStart(pid)
	e := &procEntry{pid: pid, startTicks: ticks, child: true, done: make(chan struct{})}
	w.mu.Lock()
	c.proc = e
	if c.term != nil {
		c.lastTerm = c.term
		c.restartCount++
	}
	c.term = nil
	c.env = envList(env)
	c.startedAt = time.Now()
	c.waitReason, c.waitMessage = "", ""
	c.ready = c.spec.ReadinessProbe == nil && !c.init
	st := c.stateLocked()
	w.mu.Unlock()
	w.rt.reaper.add(e)
	_ = c.saveState(st)
	w.log().Info("container started", "container", c.spec.Name, "pid", pid)
	w.changed()
	return e, nil
}

// stdio opens the new process's stdin, stdout and stderr. Stdin is
// /dev/null unless the container has stdin: true; then it is stdin.fifo,
// which attach writes to. With stdinOnce the process holds only the read
// end, so it reads EOF when the agent closes its end after the first
// attach; otherwise the process holds it read-write and its stdin stays
// open across attaches and agent restarts.
func (c *container) stdio() ([]*os.File, func(), error) {
	var stdin *os.File
	var err error
	switch {
	case !c.spec.Stdin:
		stdin, err = os.Open(os.DevNull)
	case c.spec.StdinOnce:
		// A writer must exist, or opening the read end would block.
		if _, err = c.stdinWriter(true); err == nil {
			stdin, err = os.OpenFile(c.stdinPath(), os.O_RDONLY, 0)
		}
	default:
		if _, err = c.stdinWriter(true); err == nil {
			stdin, err = os.OpenFile(c.stdinPath(), os.O_RDWR, 0)
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("container stdin: %w", err)
	}
	files := []*os.File{stdin}
	for _, stream := range []string{"stdout", "stderr"} {
		f, err := os.OpenFile(filepath.Join(c.dir, stream+".fifo"), os.O_RDWR, 0)
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, nil, fmt.Errorf("open fifo: %w", err)
		}
		files = append(files, f)
	}
	return files, func() {
		for _, f := range files {
			f.Close()
		}
	}, nil
}

// adopt resumes supervision of a process started by a previous agent.
func (c *container) adopt(st *containerState) *procEntry {
	w := c.w
	w.mu.Lock()
	defer w.mu.Unlock()
	c.restartCount, c.lastTerm, c.term = st.RestartCount, st.LastTerm, st.Term
	if st.Pid == 0 || st.Term != nil || !alive(st.Pid, st.StartTicks) {
		if st.Pid != 0 && st.Term == nil {
			c.term = &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "ContainerStatusUnknown",
				Message: "the container exited while the agent was not running", StartedAt: metav1.NewTime(st.StartedAt), FinishedAt: metav1.Now()}
		}
		return nil
	}
	sink, err := newLogSink(c.logPath(st.RestartCount), w.rt.cfg.LogMaxBytes)
	if err == nil {
		c.sink = sink
	}
	e := &procEntry{pid: st.Pid, startTicks: st.StartTicks, done: make(chan struct{})}
	c.proc, c.startedAt = e, st.StartedAt
	c.ready = c.spec.ReadinessProbe == nil
	w.rt.reaper.add(e)
	w.rt.log.Info("adopted container", "pod", w.key, "container", c.spec.Name, "pid", st.Pid)
	return e
}

// await waits for p to exit and records its termination; false when the
// worker detached (the process keeps running).
func (c *container) await(ctx context.Context, p *procEntry) bool {
	select {
	case <-p.done:
	case <-ctx.Done():
		return false
	case <-c.w.detached:
		return false
	}
	w := c.w
	w.mu.Lock()
	t := &corev1.ContainerStateTerminated{ExitCode: p.exitCode, StartedAt: metav1.NewTime(c.startedAt), FinishedAt: metav1.Now()}
	switch {
	case !p.known:
		t.ExitCode, t.Reason, t.Message = 137, "ContainerStatusUnknown", "exit status of an adopted process is not observable"
	case p.exitCode == 0:
		t.Reason = "Completed"
	case p.signal != "":
		t.Reason, t.Signal = "Error", int32(p.exitCode-128)
	default:
		t.Reason = "Error"
	}
	c.term = t
	c.ready = false
	st := c.stateLocked()
	w.mu.Unlock()
	_ = c.saveState(st)
	w.log().Info("container exited", "container", c.spec.Name, "exitCode", t.ExitCode)
	w.changed()
	return true
}

func (c *container) stateLocked() containerState {
	st := containerState{RestartCount: c.restartCount, LastTerm: c.lastTerm, Term: c.term, StartedAt: c.startedAt}
	if c.proc != nil {
		st.Pid, st.StartTicks = c.proc.pid, c.proc.startTicks
	}
	return st
}

func (c *container) saveState(st containerState) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(c.dir, "state.json"), data)
}

// ---- helpers ----

// withNamespaces wraps argv in `tether pod-init`, which enters the pod's
// network namespace (if it has one) and a private mount namespace with the
// mounts applied, then execs argv. Mounts need root; without it they are
// skipped (containers find the files through Volumes.Env).
func (r *Runtime) withNamespaces(nsPath string, mounts []Mount, argv []string) ([]string, bool) {
	if os.Geteuid() != 0 {
		mounts = nil
	}
	if nsPath == "" && len(mounts) == 0 {
		return nil, false
	}
	out := []string{r.cfg.InitPath, "pod-init"}
	if nsPath != "" {
		out = append(out, "--netns", nsPath)
	}
	for _, m := range mounts {
		out = append(out, "--mount", m.ContainerPath+"="+m.HostPath)
	}
	return append(append(out, "--"), argv...), true
}

// podIPOrHost is the pod's own IP, or the host's with host networking.
func (w *podWorker) podIPOrHost() net.IP {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.podIP != nil {
		return w.podIP
	}
	return w.rt.cfg.HostIP
}

// podNetns is the pod's network namespace path ("" with host networking).
func (w *podWorker) podNetns() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.netns
}

func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// lookPath resolves argv0 using the container's PATH.
func lookPath(name string, env map[string]string) (string, error) {
	if strings.Contains(name, "/") {
		if _, err := os.Stat(name); err != nil {
			return "", fmt.Errorf("executable %q: %w", name, err)
		}
		return name, nil
	}
	path := env["PATH"]
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("executable %q not found in PATH: %w", name, exec.ErrNotFound)
}

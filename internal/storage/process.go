package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// layoutFile, in a cluster's Dir, records the members' addresses and ports
// so that one member can be started from the directory alone
// (OpenCluster, `tether etcd --cluster-dir DIR --member N`).
const layoutFile = "cluster.json"

type layout struct {
	IPs        []string `json:"ips"`
	ClientPort int      `json:"clientPort"`
	PeerPort   int      `json:"peerPort"`
}

func (c *Cluster) saveLayout() error {
	l := layout{ClientPort: c.cfg.ClientPort, PeerPort: c.cfg.PeerPort}
	for _, ip := range c.cfg.IPs {
		l.IPs = append(l.IPs, ip.String())
	}
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.cfg.Dir, layoutFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	return nil
}

// OpenCluster loads a cluster that NewCluster created in dir: its layout
// and the certificates already under dir/pki (nothing is issued).
func OpenCluster(dir string, logger *slog.Logger) (*Cluster, error) {
	b, err := os.ReadFile(filepath.Join(dir, layoutFile))
	if err != nil {
		return nil, fmt.Errorf("storage: %s is not an etcd cluster dir made by tether: %w", dir, err)
	}
	cfg, err := parseLayout(b, filepath.Join(dir, layoutFile))
	if err != nil {
		return nil, err
	}
	cfg.Dir, cfg.Logger = dir, logger
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	pkiDir := filepath.Join(dir, "pki")
	c := &Cluster{cfg: cfg, CAFile: filepath.Join(pkiDir, "ca.crt"), CertFile: filepath.Join(pkiDir, "client.crt"), KeyFile: filepath.Join(pkiDir, "client.key")}
	return c, nil
}

// parseLayout checks a cluster.json (named by path in errors).
func parseLayout(b []byte, path string) (ClusterConfig, error) {
	var l layout
	if err := json.Unmarshal(b, &l); err != nil {
		return ClusterConfig{}, fmt.Errorf("storage: %s: %w", path, err)
	}
	cfg := ClusterConfig{ClientPort: l.ClientPort, PeerPort: l.PeerPort}
	for _, s := range l.IPs {
		ip := net.ParseIP(s)
		if ip == nil {
			return ClusterConfig{}, fmt.Errorf("storage: %s: bad member address %q", path, s)
		}
		cfg.IPs = append(cfg.IPs, ip)
	}
	if len(cfg.IPs) == 0 || cfg.ClientPort < 1 || cfg.ClientPort > 65535 || cfg.PeerPort < 1 || cfg.PeerPort > 65535 {
		return ClusterConfig{}, fmt.Errorf("storage: %s: want member addresses and ports 1-65535", path)
	}
	return cfg, nil
}

// Members is the number of members.
func (c *Cluster) Members() int { return len(c.cfg.IPs) }

// readyFile is where a member process announces that it serves.
func (c *Cluster) readyFile(i int) string { return filepath.Join(c.cfg.Dir, c.name(i)+".ready") }

// RunMember runs member i (0-based) in this process until ctx ends; while
// it serves, the file <Dir>/etcd-<i+1>.ready exists (a process that dies
// leaves it behind; StartProcess removes it before a start).
func (c *Cluster) RunMember(ctx context.Context, i int) error {
	if i < 0 || i >= len(c.cfg.IPs) {
		return fmt.Errorf("storage: member %d: the cluster has members 1-%d", i+1, len(c.cfg.IPs))
	}
	m, err := New(c.Member(i))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	select {
	case <-m.Ready():
	case err := <-done:
		return err
	}
	ready := c.readyFile(i)
	if err := os.WriteFile(ready, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		cancel()
		<-done
		return fmt.Errorf("storage: %w", err)
	}
	defer os.Remove(ready)
	return <-done
}

// Process is one member running as a child process (`tether etcd`), so that
// it can be killed like a real etcd: SIGKILL leaves its data dir as a crash
// would. The child is in its own process group (a terminal's Ctrl-C reaches
// only the parent, which stops the hubs before etcd) and dies with the
// parent (Pdeathsig).
type Process struct {
	cmd    *exec.Cmd
	ready  string
	exited chan struct{}
	err    error
}

// StartProcess starts member i (0-based) as `bin etcd --cluster-dir Dir
// --member i+1`, its output going to out (nil: discarded).
func (c *Cluster) StartProcess(bin string, i int, out io.Writer) (*Process, error) {
	if i < 0 || i >= len(c.cfg.IPs) {
		return nil, fmt.Errorf("storage: member %d: the cluster has members 1-%d", i+1, len(c.cfg.IPs))
	}
	ready := c.readyFile(i)
	if err := os.Remove(ready); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("storage: %w", err)
	}
	cmd := exec.Command(bin, "etcd", "--cluster-dir", c.cfg.Dir, "--member", strconv.Itoa(i+1))
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("storage: start etcd member %d: %w", i+1, err)
	}
	p := &Process{cmd: cmd, ready: ready, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// Pid is the child's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited is closed when the child has exited; Err is valid then.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Err is the child's exit status once Exited is closed.
func (p *Process) Err() error { return p.err }

// WaitReady waits until the member serves (it needs a quorum: start the
// other members too), the child exits, or ctx ends.
func (p *Process) WaitReady(ctx context.Context) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(p.ready); err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("storage: etcd member exited before it was ready: %v", p.err)
		case <-ctx.Done():
			return fmt.Errorf("storage: etcd member not ready: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// Kill SIGKILLs the member and waits for it to be gone.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// Stop asks the member to stop (SIGTERM) and waits up to grace before
// killing it; the error says whether it had to be killed.
func (p *Process) Stop(grace time.Duration) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.exited:
		return nil
	case <-t.C:
		p.Kill()
		return fmt.Errorf("storage: etcd member pid %d did not stop within %s; killed", p.Pid(), grace)
	}
}

// maxRestarts bounds how often RunProcess restarts a member that keeps
// dying.
const maxRestarts = 10

// RunProcess runs member i as a child process (StartProcess) until ctx
// ends, then stops it with SIGTERM (SIGKILL after 30s). A member that exits
// on its own — `kill -9` of its pid, a crash — is restarted from its data
// dir after a second and rejoins the cluster; after maxRestarts RunProcess
// gives up with an error. ready (if not nil) is called once, when the
// member first serves.
func (c *Cluster) RunProcess(ctx context.Context, bin string, i int, out io.Writer, ready func()) error {
	log := c.cfg.Logger.With("etcd", c.name(i))
	var once sync.Once
	for restarts := 0; ; restarts++ {
		p, err := c.StartProcess(bin, i, out)
		if err != nil {
			return err
		}
		log.Info("etcd member started", "pid", p.Pid())
		if ready != nil {
			// Ends when the member is ready, exits, or ctx ends.
			go func() {
				if p.WaitReady(ctx) == nil {
					once.Do(ready)
				}
			}()
		}
		select {
		case <-ctx.Done():
			return p.Stop(30 * time.Second)
		case <-p.Exited():
		}
		if restarts == maxRestarts {
			return fmt.Errorf("storage: etcd member %d exited %d times, last: %v", i+1, restarts+1, p.Err())
		}
		log.Warn("etcd member exited; restarting it from its data dir", "pid", p.Pid(), "exit", p.Err())
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// procEntry tracks one container process, a child of this agent or adopted
// from a previous agent instance.
type procEntry struct {
	pid        int
	startTicks uint64
	child      bool
	done       chan struct{}
	exitCode   int32
	signal     string
	known      bool // exit status observed (false for adopted processes)
}

// reaper notices exited processes: children by wait4 on SIGCHLD, adopted
// processes by /proc polling.
type reaper struct {
	mu    sync.Mutex
	procs map[int]*procEntry
	kick  chan struct{}
}

func newReaper() *reaper {
	return &reaper{procs: map[int]*procEntry{}, kick: make(chan struct{}, 1)}
}

func (rp *reaper) add(e *procEntry) {
	rp.mu.Lock()
	rp.procs[e.pid] = e
	rp.mu.Unlock()
	select {
	case rp.kick <- struct{}{}:
	default:
	}
}

func (rp *reaper) run(ctx context.Context) {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGCHLD)
	defer signal.Stop(sig)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sig:
		case <-t.C:
		case <-rp.kick:
		}
		rp.check()
	}
}

func (rp *reaper) check() {
	rp.mu.Lock()
	entries := make([]*procEntry, 0, len(rp.procs))
	for _, e := range rp.procs {
		entries = append(entries, e)
	}
	rp.mu.Unlock()
	for _, e := range entries {
		exited := false
		if e.child {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(e.pid, &ws, syscall.WNOHANG, nil)
			switch {
			case pid == e.pid:
				exited, e.known = true, true
				if ws.Signaled() {
					e.exitCode = 128 + int32(ws.Signal())
					e.signal = ws.Signal().String()
				} else {
					e.exitCode = int32(ws.ExitStatus())
				}
			case errors.Is(err, syscall.ECHILD):
				exited = !alive(e.pid, e.startTicks)
			}
		} else {
			exited = !alive(e.pid, e.startTicks)
		}
		if exited {
			rp.mu.Lock()
			delete(rp.procs, e.pid)
			rp.mu.Unlock()
			close(e.done)
		}
	}
}

// startTicks returns the kernel start time of pid (field 22 of
// /proc/pid/stat) and whether the process is a zombie.
func procStart(pid int) (uint64, bool, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false, err
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, false, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 20 {
		return 0, false, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	ticks, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("malformed /proc/%d/stat: %w", pid, err)
	}
	return ticks, fields[0] == "Z", nil
}

// alive reports whether pid is still the process that started at ticks.
func alive(pid int, ticks uint64) bool {
	got, zombie, err := procStart(pid)
	return err == nil && !zombie && got == ticks
}

// signalGroup signals the process group of pid (containers run in their own
// group so that their children are signalled too).
func signalGroup(pid int, sig syscall.Signal) {
	if pid <= 1 {
		return
	}
	if err := syscall.Kill(-pid, sig); err != nil {
		_ = syscall.Kill(pid, sig)
	}
}

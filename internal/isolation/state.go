package isolation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// state is what one run created, written before it is created.
type state struct {
	PID    int      `json:"pid"`
	Prefix string   `json:"prefix"`
	NetNS  []string `json:"netns"`
	Routes []string `json:"unreachableRoutes,omitempty"` // root-namespace routes this run added
}

func (s *state) save(path string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// CleanStale removes what a previous run recorded in stateFile if that run
// is gone. It refuses if the recorded process still runs tether.
func CleanStale(stateFile string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b, err := os.ReadFile(stateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	s, err := parseState(b)
	if err != nil {
		return fmt.Errorf("isolation state %s: %w; not touching anything (remove the file by hand after checking `ip netns list`)", stateFile, err)
	}
	if s.PID != os.Getpid() && alive(s.PID) {
		return fmt.Errorf("another tether (pid %d) runs the isolated topology of this data dir (%s); stop it first", s.PID, stateFile)
	}
	log.Info("removing the isolated topology of a previous run", "pid", s.PID, "netns", s.NetNS, "routes", s.Routes)
	if err := s.remove(log); err != nil {
		return err
	}
	return os.Remove(stateFile)
}

// alive reports whether pid runs a tether binary.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	return strings.Contains(string(cmdline), "tether")
}

// remove kills processes inside the recorded namespaces, deletes the
// namespaces and the routes this run added. Missing pieces are fine.
func (s *state) remove(log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var errs []error
	for _, ns := range s.NetNS {
		if _, err := os.Stat(nsPath(ns)); err != nil {
			continue
		}
		if err := killIn(ns, log); err != nil {
			errs = append(errs, err)
		}
		if err := ip(ctx, "netns", "delete", ns); err != nil {
			errs = append(errs, err)
		}
	}
	for _, r := range s.Routes {
		if err := ip(ctx, "route", "del", "unreachable", r); err != nil && !strings.Contains(err.Error(), "No such process") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ProcessesIn lists pids whose network namespace is ns.
func ProcessesIn(ns string) ([]int, error) {
	var want syscall.Stat_t
	if err := syscall.Stat(nsPath(ns), &want); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name()+"/ns/net", &st) != nil {
			continue
		}
		if st.Dev == want.Dev && st.Ino == want.Ino {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// killIn kills every process inside ns (they are this run's: nothing else
// lives in a namespace it created) and waits, bounded, until they are gone.
func killIn(ns string, log *slog.Logger) error {
	for i := 0; i < 50; i++ {
		pids, err := ProcessesIn(ns)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if i == 0 {
			log.Info("killing processes left in the namespace", "netns", ns, "pids", pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond) // bounded wait for the kernel to reap them
	}
	return fmt.Errorf("processes still running in %s after SIGKILL", ns)
}

// parseState decodes a state file and checks that it names only what this
// package creates: namespaces "tether-<prefix>-…" with a plain prefix, and
// routes that are IPv4 prefixes.
func parseState(b []byte) (state, error) {
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return s, err
	}
	if s.Prefix == "" || len(s.Prefix) > 10 || strings.Trim(s.Prefix, "abcdefghijklmnopqrstuvwxyz0123456789") != "" {
		return s, fmt.Errorf("bad prefix %q", s.Prefix)
	}
	for _, ns := range s.NetNS {
		rest, ok := strings.CutPrefix(ns, "tether-"+s.Prefix+"-")
		if !ok || rest == "" || strings.ContainsAny(rest, "/\x00 ") || len(ns) > 64 {
			return s, fmt.Errorf("names %q, which this tool would not have created", ns)
		}
	}
	for _, r := range s.Routes {
		p, err := netip.ParsePrefix(r)
		if err != nil || !p.Addr().Is4() || p.Masked() != p {
			return s, fmt.Errorf("bad route %q", r)
		}
	}
	return s, nil
}

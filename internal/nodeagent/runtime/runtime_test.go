package runtime

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

type harness struct {
	t      *testing.T
	rt     *Runtime
	cancel context.CancelFunc
	done   chan struct{}
}

func start(t *testing.T, dir string, stopOnExit bool) *harness {
	t.Helper()
	rt, err := New(Config{Dir: dir, BackoffBase: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		StopPodsOnExit: stopOnExit, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, rt: rt, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(h.done); _ = rt.Run(ctx) }()
	return h
}

func (h *harness) stop() {
	h.cancel()
	select {
	case <-h.done:
	case <-time.After(30 * time.Second):
		h.t.Fatal("runtime did not stop")
	}
}

func pod(uid string, policy corev1.RestartPolicy, containers ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p-" + uid, Namespace: "ns", UID: types.UID(uid), CreationTimestamp: metav1.Now()},
		Spec:       corev1.PodSpec{RestartPolicy: policy, Containers: containers},
	}
}

func sh(name, script string) corev1.Container {
	return corev1.Container{Name: name, Command: []string{"/bin/sh", "-c", script}}
}

func waitFor(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("not done after %s: %v", d, err)
}

func (h *harness) status(uid string) corev1.PodStatus {
	st, _ := h.rt.Status(types.UID(uid))
	return st
}

func TestRestartPolicies(t *testing.T) {
	h := start(t, t.TempDir(), true)
	defer h.stop()
	h.rt.SyncPod(pod("never-ok", corev1.RestartPolicyNever, sh("c", "exit 0")))
	h.rt.SyncPod(pod("never-fail", corev1.RestartPolicyNever, sh("c", "exit 7")))
	h.rt.SyncPod(pod("onfail", corev1.RestartPolicyOnFailure, sh("c", "exit 1")))
	h.rt.SyncPod(pod("always", corev1.RestartPolicyAlways, sh("c", "echo run; exit 0")))
	waitFor(t, 20*time.Second, func() error {
		if p := h.status("never-ok").Phase; p != corev1.PodSucceeded {
			return fmt.Errorf("never-ok: %s", p)
		}
		st := h.status("never-fail")
		if st.Phase != corev1.PodFailed || st.ContainerStatuses[0].State.Terminated == nil || st.ContainerStatuses[0].State.Terminated.ExitCode != 7 {
			return fmt.Errorf("never-fail: %+v", st)
		}
		for _, uid := range []string{"onfail", "always"} {
			cs := h.status(uid).ContainerStatuses
			if len(cs) != 1 || cs[0].RestartCount < 2 {
				return fmt.Errorf("%s: %+v", uid, cs)
			}
			if cs[0].LastTerminationState.Terminated == nil {
				return fmt.Errorf("%s: no last termination", uid)
			}
		}
		return nil
	})
	// Crash looping containers report CrashLoopBackOff while waiting.
	waitFor(t, 20*time.Second, func() error {
		cs := h.status("onfail").ContainerStatuses[0]
		if cs.State.Waiting == nil || cs.State.Waiting.Reason != "CrashLoopBackOff" {
			return fmt.Errorf("%+v", cs.State)
		}
		return nil
	})
	// Previous logs of a restarted container.
	var buf bytes.Buffer
	if err := h.rt.Logs(context.Background(), "ns", "p-always", "c", LogOptions{Previous: true}, &buf); err != nil || buf.String() != "run\n" {
		t.Fatalf("previous logs: %q %v", buf.String(), err)
	}
}

func TestInitContainersAndEnv(t *testing.T) {
	h := start(t, t.TempDir(), true)
	defer h.stop()
	dir := t.TempDir()
	p := pod("init", corev1.RestartPolicyNever, corev1.Container{Name: "main", Command: []string{"/bin/sh", "-c", "cat $(DIR)/marker; echo $GREETING $POD; pwd"},
		WorkingDir: dir,
		Env: []corev1.EnvVar{{Name: "DIR", Value: dir}, {Name: "GREETING", Value: "hi-$(DIR)"},
			{Name: "POD", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}}}})
	p.Spec.InitContainers = []corev1.Container{sh("init", "echo from-init > "+filepath.Join(dir, "marker"))}
	h.rt.SyncPod(p)
	waitFor(t, 20*time.Second, func() error {
		st := h.status("init")
		if st.Phase != corev1.PodSucceeded {
			return fmt.Errorf("%s %+v", st.Phase, st.InitContainerStatuses)
		}
		return nil
	})
	var buf bytes.Buffer
	if err := h.rt.Logs(context.Background(), "ns", "p-init", "main", LogOptions{}, &buf); err != nil {
		t.Fatal(err)
	}
	want := "from-init\nhi-" + dir + " ns\n" + dir + "\n"
	if buf.String() != want {
		t.Fatalf("logs %q, want %q", buf.String(), want)
	}
}

func TestUnrunnableSpecIsWaiting(t *testing.T) {
	h := start(t, t.TempDir(), true)
	defer h.stop()
	h.rt.SyncPod(pod("noimg", corev1.RestartPolicyAlways, corev1.Container{Name: "c", Image: "nginx"}))
	h.rt.SyncPod(pod("missing", corev1.RestartPolicyAlways, corev1.Container{Name: "c", Command: []string{"/no/such/binary"}}))
	h.rt.SyncPod(pod("envfrom", corev1.RestartPolicyAlways, corev1.Container{Name: "c", Command: []string{"true"},
		EnvFrom: []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "x"}}}}}))
	waitFor(t, 20*time.Second, func() error {
		for _, uid := range []string{"noimg", "missing", "envfrom"} {
			st := h.status(uid)
			if len(st.ContainerStatuses) != 1 || st.ContainerStatuses[0].State.Waiting == nil {
				return fmt.Errorf("%s: %+v", uid, st.ContainerStatuses)
			}
			w := st.ContainerStatuses[0].State.Waiting
			if w.Message == "" && w.Reason != "CrashLoopBackOff" {
				return fmt.Errorf("%s: waiting without message: %+v", uid, w)
			}
		}
		return nil
	})
	msg := h.status("noimg").ContainerStatuses[0].State.Waiting.Message
	if !strings.Contains(msg, "does not run images") {
		t.Fatalf("message %q", msg)
	}
}

func TestGracefulTermination(t *testing.T) {
	h := start(t, t.TempDir(), true)
	defer h.stop()
	// Ignores SIGTERM: killed after the grace period.
	p := pod("stubborn", corev1.RestartPolicyAlways, sh("c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"))
	h.rt.SyncPod(p)
	waitFor(t, 20*time.Second, func() error {
		cs := h.status("stubborn").ContainerStatuses
		if len(cs) != 1 || cs[0].State.Running == nil {
			return fmt.Errorf("%+v", cs)
		}
		// The trap is installed once "ready" is printed.
		var buf bytes.Buffer
		if err := h.rt.Logs(context.Background(), "ns", "p-stubborn", "c", LogOptions{}, &buf); err != nil || !strings.Contains(buf.String(), "ready") {
			return fmt.Errorf("not ready yet: %q %v", buf.String(), err)
		}
		return nil
	})
	now := metav1.Now()
	p.DeletionTimestamp, p.DeletionGracePeriodSeconds = &now, ptr(int64(1))
	start := time.Now()
	h.rt.SyncPod(p)
	waitFor(t, 20*time.Second, func() error {
		if !h.rt.Terminated("stubborn") {
			return fmt.Errorf("still running")
		}
		return nil
	})
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Fatalf("killed after %s, before the grace period", d)
	}
	cs := h.status("stubborn").ContainerStatuses[0]
	if cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 137 {
		t.Fatalf("state %+v", cs.State)
	}
	h.rt.RemovePod("stubborn")
	if _, ok := h.rt.Status("stubborn"); ok {
		t.Fatal("pod still known")
	}
}

func ptr[T any](v T) *T { return &v }

func TestAdoptionAfterRestart(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, false)
	h.rt.SyncPod(pod("keep", corev1.RestartPolicyAlways, sh("c", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.05; done")))
	var pid string
	waitFor(t, 20*time.Second, func() error {
		cs := h.status("keep").ContainerStatuses
		if len(cs) != 1 || cs[0].State.Running == nil {
			return fmt.Errorf("%+v", cs)
		}
		pid = cs[0].ContainerID
		return nil
	})
	h.stop() // the agent goes away; the process must not
	n := 0
	fmt.Sscanf(strings.TrimPrefix(pid, "process://"), "%d", &n)
	if n <= 1 || syscall.Kill(n, 0) != nil {
		t.Fatalf("process %q did not survive the runtime", pid)
	}
	defer syscall.Kill(-n, syscall.SIGKILL)

	h2 := start(t, dir, true)
	defer h2.stop()
	waitFor(t, 20*time.Second, func() error {
		cs := h2.status("keep").ContainerStatuses
		if len(cs) != 1 || cs[0].State.Running == nil || cs[0].ContainerID != pid || cs[0].RestartCount != 0 {
			return fmt.Errorf("%+v", cs)
		}
		// Output written while no agent was reading arrives afterwards.
		var buf bytes.Buffer
		if err := h2.rt.Logs(context.Background(), "ns", "p-keep", "c", LogOptions{}, &buf); err != nil {
			return err
		}
		if strings.Count(buf.String(), "tick") < 5 {
			return fmt.Errorf("logs %q", buf.String())
		}
		return nil
	})
	// Exactly one process for the container.
	entries, _ := os.ReadDir("/proc")
	count := 0
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(data), "echo tick $i") {
			count++
		}
	}
	if count != 1 {
		t.Fatalf("%d container processes, want 1", count)
	}
}

func FuzzParseLogLine(f *testing.F) {
	f.Add([]byte("2024-01-01T00:00:00.000000000Z stdout F hello\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseLogLine(b)
	})
}

package runtime

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "1", "B": "x", "EMPTY": "", "DOLLAR": "$(A)", "": "empty-name"}
	service := map[string]string{"SVC": "s", "A": "shadowed"}
	mapping := mappingFuncFor(vars, service)
	cases := []struct{ in, want string }{
		{"", ""},
		{"plain", "plain"},
		{"$(A)", "1"},
		{"___$(B)___", "___x___"},
		{"$(A)-$(B)", "1-x"},
		{"$(A)$(A)", "11"},
		{"$(SVC)", "s"},                  // service variables are visible
		{"$(EMPTY)x", "x"},               // defined but empty
		{"$(DOLLAR)", "$(A)"},            // values are not expanded twice
		{"$(UNDEFINED)", "$(UNDEFINED)"}, // undefined: left as written
		{"$(A)$(UNDEFINED)$(B)", "1$(UNDEFINED)x"},
		{"$$(A)", "$(A)"}, // escaped
		{"$$$(A)", "$1"},
		{"$$$$(A)", "$$(A)"},
		{"$$", "$"},
		{"$$$", "$$"},
		{"$", "$"},
		{"a$", "a$"},
		{"$(A)$", "1$"},
		{"$A", "$A"}, // not a reference
		{"a$b$c", "a$b$c"},
		{"$(A", "$(A"},    // unclosed
		{"$(A$$", "$(A$"}, // unclosed, then an escape
		{"$(", "$("},
		{"$()", "empty-name"},
		{"$(A$(B)", "$(A$(B)"}, // name "A$(B" is undefined
		{"$(A))", "1)"},
		{"($(A))", "(1)"},
		{"$(A)\n$(B)", "1\nx"},
		{"ünï$(A)cödé", "ünï1cödé"},
	}
	for _, tc := range cases {
		if got := Expand(tc.in, mapping); got != tc.want {
			t.Errorf("Expand(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// FuzzExpand checks Expand on arbitrary input: it never panics, leaves
// text without $ alone, and escaping every $ as $$ round-trips.
func FuzzExpand(f *testing.F) {
	for _, s := range []string{"", "$(A)", "$$(A)", "$(A", "$", "a$b", "$(A$$", "$()", "ü$(é)"} {
		f.Add(s)
	}
	mapping := mappingFuncFor(map[string]string{"A": "1", "": "e"})
	f.Fuzz(func(t *testing.T, s string) {
		got := Expand(s, mapping)
		if !strings.Contains(s, "$") && got != s {
			t.Fatalf("Expand(%q) = %q: text without $ changed", s, got)
		}
		escaped := strings.ReplaceAll(s, "$", "$$")
		if back := Expand(escaped, mapping); back != s {
			t.Fatalf("Expand(%q) = %q, want %q", escaped, back, s)
		}
		if strings.Contains(s, "$(") {
			return
		}
		// Without references, only $$ pairs change.
		if got != strings.ReplaceAll(s, "$$", "$") && !strings.Contains(s, "$$$") {
			t.Fatalf("Expand(%q) = %q", s, got)
		}
	})
}

// mapSource is an in-memory EnvSource with kubelet's NotFound errors.
type mapSource struct {
	mu         sync.Mutex
	configMaps map[string]*corev1.ConfigMap
	secrets    map[string]*corev1.Secret
	reads      int
}

func (m *mapSource) ConfigMap(_ context.Context, ns, name string) (*corev1.ConfigMap, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reads++
	if cm, ok := m.configMaps[ns+"/"+name]; ok {
		return cm.DeepCopy(), nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "configmap"}, name)
}

func (m *mapSource) Secret(_ context.Context, ns, name string) (*corev1.Secret, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reads++
	if s, ok := m.secrets[ns+"/"+name]; ok {
		return s.DeepCopy(), nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secret"}, name)
}

func (m *mapSource) setConfigMap(ns, name string, data map[string]string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.configMaps[ns+"/"+name] = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: data}
}

func newMapSource() *mapSource {
	m := &mapSource{configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}}
	m.setConfigMap("ns", "cm", map[string]string{"A": "from-cm", "B": "b-cm", "cfg": "c", "dotted.name-ok": "d"})
	m.setConfigMap("ns", "cm-bad", map[string]string{"1BAD": "x", "2ALSO": "y", "GOOD": "g"})
	m.configMaps["ns/cm"].BinaryData = map[string][]byte{"BIN": []byte("not in env")}
	m.secrets["ns/sec"] = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "sec"},
		Data: map[string][]byte{"password": []byte("s3cret"), "A": []byte("from-secret")}}
	return m
}

func cmKey(name, key string, optional bool) *corev1.EnvVarSource {
	return &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key, Optional: ptr(optional)}}
}

func secretKey(name, key string, optional bool) *corev1.EnvVarSource {
	return &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key, Optional: ptr(optional)}}
}

func field(path string) *corev1.EnvVarSource {
	return &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}
}

func cmFrom(name, prefix string, optional bool) corev1.EnvFromSource {
	return corev1.EnvFromSource{Prefix: prefix, ConfigMapRef: &corev1.ConfigMapEnvSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: name}, Optional: ptr(optional)}}
}

func secretFrom(name, prefix string, optional bool) corev1.EnvFromSource {
	return corev1.EnvFromSource{Prefix: prefix, SecretRef: &corev1.SecretEnvSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: name}, Optional: ptr(optional)}}
}

func TestResolveEnv(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns", UID: "uid-1",
			Labels: map[string]string{"app": "web"}, Annotations: map[string]string{"note": "hi"}},
		Spec: corev1.PodSpec{NodeName: "n1", ServiceAccountName: "sa"},
	}
	service := []string{"KUBERNETES_SERVICE_HOST=10.0.0.1", "SVC=svc"}
	cases := []struct {
		name     string
		envFrom  []corev1.EnvFromSource
		env      []corev1.EnvVar
		res      corev1.ResourceRequirements
		want     map[string]string // subset of the result
		absent   []string
		err      string
		warnings []string
	}{
		{name: "plain values and service env",
			env:  []corev1.EnvVar{{Name: "X", Value: "x"}, {Name: "EMPTY"}},
			want: map[string]string{"X": "x", "EMPTY": "", "SVC": "svc", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}},
		{name: "container env overrides service env",
			env:  []corev1.EnvVar{{Name: "SVC", Value: "mine"}},
			want: map[string]string{"SVC": "mine"}},
		{name: "expansion sees earlier vars, envFrom and service env, not later ones",
			envFrom: []corev1.EnvFromSource{cmFrom("cm", "", false)},
			env: []corev1.EnvVar{{Name: "E1", Value: "$(A)-$(SVC)-$(LATER)"}, {Name: "LATER", Value: "l"},
				{Name: "E2", Value: "$(LATER)$$(LATER)"}, {Name: "E3", Value: "$(PATH)"}},
			want: map[string]string{"E1": "from-cm-svc-$(LATER)", "E2": "l$(LATER)", "E3": "$(PATH)"}},
		{name: "valueFrom values are not expanded",
			env:  []corev1.EnvVar{{Name: "V", ValueFrom: cmKey("cm", "cfg", false)}, {Name: "N", ValueFrom: field("metadata.name")}},
			want: map[string]string{"V": "c", "N": "web"}},
		{name: "envFrom configmap and secret, later wins",
			envFrom: []corev1.EnvFromSource{cmFrom("cm", "", false), secretFrom("sec", "", false)},
			want:    map[string]string{"A": "from-secret", "B": "b-cm", "cfg": "c", "dotted.name-ok": "d", "password": "s3cret"},
			absent:  []string{"BIN"}},
		{name: "invalid names from envFrom are skipped with a warning",
			envFrom: []corev1.EnvFromSource{cmFrom("cm-bad", "", false)},
			want:    map[string]string{"GOOD": "g"}, absent: []string{"1BAD", "2ALSO"},
			warnings: []string{"Keys [1BAD, 2ALSO] from the EnvFrom configMap ns/cm-bad were skipped since they are considered invalid environment variable names."}},
		{name: "envFrom prefix (which can make names valid)",
			envFrom: []corev1.EnvFromSource{secretFrom("sec", "S_", false), cmFrom("cm-bad", "P_", false)},
			want:    map[string]string{"S_password": "s3cret", "P_1BAD": "x", "P_GOOD": "g"}, absent: []string{"password", "GOOD"}},
		{name: "a prefix can make names invalid",
			envFrom:  []corev1.EnvFromSource{secretFrom("sec", "0", false)},
			absent:   []string{"0A", "0password"},
			warnings: []string{"Keys [0A, 0password] from the EnvFrom secret ns/sec were skipped since they are considered invalid environment variable names."}},
		{name: "env overrides envFrom",
			envFrom: []corev1.EnvFromSource{cmFrom("cm", "", false)},
			env:     []corev1.EnvVar{{Name: "A", Value: "env"}},
			want:    map[string]string{"A": "env"}},
		{name: "missing configmap",
			env: []corev1.EnvVar{{Name: "V", ValueFrom: cmKey("nope", "k", false)}}, err: `configmap "nope" not found`},
		{name: "missing secret",
			env: []corev1.EnvVar{{Name: "V", ValueFrom: secretKey("nope", "k", false)}}, err: `secret "nope" not found`},
		{name: "missing configmap key",
			env: []corev1.EnvVar{{Name: "V", ValueFrom: cmKey("cm", "k", false)}}, err: "couldn't find key k in ConfigMap ns/cm"},
		{name: "binaryData is not a key for env",
			env: []corev1.EnvVar{{Name: "V", ValueFrom: cmKey("cm", "BIN", false)}}, err: "couldn't find key BIN in ConfigMap ns/cm"},
		{name: "missing secret key",
			env: []corev1.EnvVar{{Name: "V", ValueFrom: secretKey("sec", "k", false)}}, err: "couldn't find key k in Secret ns/sec"},
		{name: "missing envFrom configmap",
			envFrom: []corev1.EnvFromSource{cmFrom("nope", "", false)}, err: `configmap "nope" not found`},
		{name: "missing envFrom secret",
			envFrom: []corev1.EnvFromSource{secretFrom("nope", "", false)}, err: `secret "nope" not found`},
		{name: "optional references are skipped",
			envFrom: []corev1.EnvFromSource{cmFrom("nope", "", true), secretFrom("nope", "", true)},
			env: []corev1.EnvVar{{Name: "V1", ValueFrom: cmKey("nope", "k", true)}, {Name: "V2", ValueFrom: cmKey("cm", "k", true)},
				{Name: "V3", ValueFrom: secretKey("nope", "k", true)}, {Name: "V4", ValueFrom: secretKey("sec", "k", true)},
				{Name: "OK", Value: "ok"}},
			want: map[string]string{"OK": "ok"}, absent: []string{"V1", "V2", "V3", "V4"}},
		{name: "secretKeyRef",
			env:  []corev1.EnvVar{{Name: "PW", ValueFrom: secretKey("sec", "password", false)}, {Name: "URL", Value: "u:$(PW)"}},
			want: map[string]string{"PW": "s3cret", "URL": "u:s3cret"}},
		{name: "fieldRefs",
			env: []corev1.EnvVar{{Name: "NAME", ValueFrom: field("metadata.name")}, {Name: "NS", ValueFrom: field("metadata.namespace")},
				{Name: "UID", ValueFrom: field("metadata.uid")}, {Name: "APP", ValueFrom: field("metadata.labels['app']")},
				{Name: "NOTE", ValueFrom: field("metadata.annotations['note']")}, {Name: "NOLABEL", ValueFrom: field("metadata.labels['x']")},
				{Name: "NODE", ValueFrom: field("spec.nodeName")}, {Name: "SA", ValueFrom: field("spec.serviceAccountName")},
				{Name: "POD_IP", ValueFrom: field("status.podIP")}, {Name: "HOST_IP", ValueFrom: field("status.hostIP")},
				{Name: "POD_IPS", ValueFrom: field("status.podIPs")}},
			want: map[string]string{"NAME": "web", "NS": "ns", "UID": "uid-1", "APP": "web", "NOTE": "hi", "NOLABEL": "",
				"NODE": "n1", "SA": "sa", "POD_IP": "10.244.0.5", "HOST_IP": "192.0.2.10", "POD_IPS": "10.244.0.5"}},
		{name: "unsupported fieldRef",
			env: []corev1.EnvVar{{Name: "X", ValueFrom: field("spec.hostname")}}, err: `unsupported fieldPath "spec.hostname"`},
		{name: "malformed label subscript",
			env: []corev1.EnvVar{{Name: "X", ValueFrom: field("metadata.labels[app]")}}, err: "unsupported fieldPath"},
		{name: "resourceFieldRef",
			res: corev1.ResourceRequirements{
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("32Mi")}},
			env: []corev1.EnvVar{
				{Name: "CPU_REQ", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.cpu"}}},
				{Name: "CPU_REQ_M", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.cpu", Divisor: resource.MustParse("1m")}}},
				{Name: "MEM_LIM", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}}},
				{Name: "MEM_REQ", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.memory"}}},
				{Name: "CPU_LIM", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}}},
			want: map[string]string{"CPU_REQ": "1", "CPU_REQ_M": "250", "MEM_LIM": "64", "MEM_REQ": "33554432", "CPU_LIM": "4"}},
		{name: "unsupported resource",
			env: []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.gpu"}}}},
			err: "unsupported container resource : limits.gpu"},
		{name: "empty valueFrom",
			env: []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{}}}, err: "unsupported valueFrom"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &corev1.Container{Name: "c", EnvFrom: tc.envFrom, Env: tc.env, Resources: tc.res}
			got, err := resolveEnv(context.Background(), envInput{pod: pod, c: c, hostIP: net.ParseIP("192.0.2.10"),
				podIP: net.ParseIP("10.244.0.5"), service: service, source: newMapSource(),
				allocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4")}})
			if tc.err != "" {
				var ce *ConfigError
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.As(err, &ce) {
					t.Fatalf("err = %v, want a ConfigError containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.want {
				if g, ok := got.vars[k]; !ok || g != v {
					t.Errorf("%s = %q (set %v), want %q", k, g, ok, v)
				}
			}
			for _, k := range tc.absent {
				if _, ok := got.vars[k]; ok {
					t.Errorf("%s is set, want absent", k)
				}
			}
			var warnings []string
			for _, w := range got.warnings {
				warnings = append(warnings, w.message)
			}
			if strings.Join(warnings, "|") != strings.Join(tc.warnings, "|") {
				t.Errorf("warnings %q, want %q", warnings, tc.warnings)
			}
		})
	}
	// Without a source, references are configuration errors.
	_, err := resolveEnv(context.Background(), envInput{pod: pod, c: &corev1.Container{Env: []corev1.EnvVar{{Name: "V", ValueFrom: cmKey("cm", "A", false)}}}})
	if err == nil || !strings.Contains(err.Error(), "no kubeClient defined") {
		t.Fatalf("no source: %v", err)
	}
}

func TestExpandArgs(t *testing.T) {
	got := expandArgs([]string{"echo", "$(A)", "$$(A)", "$(NOPE)", "$(A"}, map[string]string{"A": "1"})
	if want := []string{"echo", "1", "$(A)", "$(NOPE)", "$(A"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("%q, want %q", got, want)
	}
}

// events collects Config.Event calls.
type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) record(_ *corev1.Pod, typ, reason, msg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, typ+" "+reason+" "+msg)
}

func (e *events) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return strings.Join(e.list, "\n")
}

func startWith(t *testing.T, cfg Config) *harness {
	t.Helper()
	cfg.Dir, cfg.StopPodsOnExit = t.TempDir(), true
	cfg.BackoffBase, cfg.BackoffMax = 50*time.Millisecond, 200*time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, rt: rt, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(h.done); _ = rt.Run(ctx) }()
	return h
}

// A container whose ConfigMap is missing waits with
// CreateContainerConfigError (and a Failed event, once) and starts once the
// ConfigMap exists; command and args see the resolved env.
func TestConfigMapAppears(t *testing.T) {
	src := newMapSource()
	ev := &events{}
	h := startWith(t, Config{EnvSource: src, Event: ev.record})
	defer h.stop()
	c := corev1.Container{Name: "c", Command: []string{"/bin/sh", "-c", `echo "$WAITED" '$(WAITED)' '$$(WAITED)'; sleep 60`},
		Env:     []corev1.EnvVar{{Name: "WAITED", ValueFrom: cmKey("late", "k", false)}},
		EnvFrom: []corev1.EnvFromSource{cmFrom("cm-bad", "", false)}}
	h.rt.SyncPod(pod("late", corev1.RestartPolicyAlways, c))
	waitFor(t, 20*time.Second, func() error {
		cs := h.status("late").ContainerStatuses
		if len(cs) != 1 || cs[0].State.Waiting == nil || cs[0].State.Waiting.Reason != "CreateContainerConfigError" ||
			cs[0].State.Waiting.Message != `configmap "late" not found` {
			return fmt.Errorf("%+v", cs)
		}
		return nil
	})
	// Retried, but the Failed event is recorded once per message.
	waitFor(t, 20*time.Second, func() error {
		src.mu.Lock()
		defer src.mu.Unlock()
		if src.reads < 4 {
			return fmt.Errorf("%d reads", src.reads)
		}
		return nil
	})
	if n := strings.Count(ev.String(), `Warning Failed Error: configmap "late" not found`); n != 1 {
		t.Fatalf("%d Failed events:\n%s", n, ev)
	}
	src.setConfigMap("ns", "late", map[string]string{"k": "here"})
	waitFor(t, 20*time.Second, func() error {
		cs := h.status("late").ContainerStatuses
		if len(cs) != 1 || cs[0].State.Running == nil {
			return fmt.Errorf("%+v", cs)
		}
		var b strings.Builder
		if err := h.rt.Logs(context.Background(), "ns", "p-late", "c", LogOptions{}, &b); err != nil {
			return err
		}
		if b.String() != "here here $(WAITED)\n" {
			return fmt.Errorf("logs %q", b.String())
		}
		return nil
	})
	if !strings.Contains(ev.String(), "Warning InvalidEnvironmentVariableNames Keys [1BAD, 2ALSO] from the EnvFrom configMap ns/cm-bad") {
		t.Fatalf("no InvalidEnvironmentVariableNames event:\n%s", ev)
	}
	// Exec sees the environment the process was started with.
	var out strings.Builder
	if err := h.rt.ExecInContainer(context.Background(), "ns/p-late", "", "c", []string{"/bin/sh", "-c", "echo $WAITED $GOOD"},
		nil, nopCloser{&out}, nopCloser{io.Discard}, false, nil, 0); err != nil || out.String() != "here g\n" {
		t.Fatalf("exec: %q %v", out.String(), err)
	}
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// attachment is one AttachContainer call with stdin from in; out delivers
// its stdout.
type attachment struct {
	in     *io.PipeWriter
	out    *bufio.Reader
	cancel context.CancelFunc
	done   chan error
}

func attach(t *testing.T, h *harness, podName string) *attachment {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	a := &attachment{in: inW, out: bufio.NewReader(outR), cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := h.rt.AttachContainer(ctx, podName, "", "c", inR, outW, nopCloser{io.Discard}, false, nil)
		_ = inR.Close()
		_ = outW.CloseWithError(io.EOF)
		a.done <- err
	}()
	t.Cleanup(cancel)
	return a
}

// attached waits until n attaches are subscribed to the container's output.
func attached(t *testing.T, h *harness, podName string, n int) {
	t.Helper()
	ns, name, _ := strings.Cut(podName, "/")
	c, err := h.rt.container(ns, name, "", "c")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error {
		c.w.mu.Lock()
		sink := c.sink
		c.w.mu.Unlock()
		sink.mu.Lock()
		defer sink.mu.Unlock()
		if len(sink.subs) != n {
			return fmt.Errorf("%d attaches, want %d", len(sink.subs), n)
		}
		return nil
	})
}

func (a *attachment) echo(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(a.in, line+"\n"); err != nil {
		t.Fatal(err)
	}
	got, err := a.out.ReadString('\n')
	if err != nil || got != line+"\n" {
		t.Fatalf("echo of %q: %q %v", line, got, err)
	}
}

func (a *attachment) wait(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case err := <-a.done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(d):
		t.Fatalf("attach did not end within %s", d)
	}
}

func (a *attachment) running(t *testing.T) {
	t.Helper()
	select {
	case err := <-a.done:
		t.Fatalf("attach ended early: %v", err)
	default:
	}
}

var errClientGone = errors.New("connection reset by peer")

func TestAttachStdin(t *testing.T) {
	h := startWith(t, Config{})
	defer h.stop()
	cat := corev1.Container{Name: "c", Command: []string{"cat"}, Stdin: true}
	once := cat
	once.StdinOnce = true
	h.rt.SyncPod(pod("stdin", corev1.RestartPolicyNever, cat))
	h.rt.SyncPod(pod("once", corev1.RestartPolicyNever, once))
	h.rt.SyncPod(pod("nostdin", corev1.RestartPolicyNever, sh("c", "sleep 60")))
	for _, uid := range []string{"stdin", "once", "nostdin"} {
		waitFor(t, 20*time.Second, func() error {
			if cs := h.status(uid).ContainerStatuses; len(cs) != 1 || cs[0].State.Running == nil {
				return fmt.Errorf("%s: %+v", uid, cs)
			}
			return nil
		})
	}
	running := func(uid string) {
		t.Helper()
		if cs := h.status(uid).ContainerStatuses; len(cs) != 1 || cs[0].State.Running == nil {
			t.Fatalf("%s: %+v", uid, cs)
		}
	}

	t.Run("stdin stays open across attaches", func(t *testing.T) {
		a := attach(t, h, "ns/p-stdin")
		a.echo(t, "first")
		a.in.CloseWithError(errClientGone) // the client went away
		a.wait(t, 10*time.Second)
		running("stdin")
		b := attach(t, h, "ns/p-stdin")
		c := attach(t, h, "ns/p-stdin") // output goes to every attach
		attached(t, h, "ns/p-stdin", 2)
		// (The sink writes to attaches in turn: read c concurrently.)
		cLine := make(chan string, 1)
		go func() { l, _ := c.out.ReadString('\n'); cLine <- l }()
		b.echo(t, "second")
		if got := <-cLine; got != "second\n" {
			t.Fatalf("second attach: %q", got)
		}
		_ = b.in.Close() // EOF from the client: stdin stays open, attach goes on
		c.in.CloseWithError(errClientGone)
		c.wait(t, 10*time.Second)
		running("stdin")
		b.running(t)
		b.cancel()
		b.wait(t, 10*time.Second)
	})

	t.Run("stdinOnce closes stdin after the first attach", func(t *testing.T) {
		a := attach(t, h, "ns/p-once")
		a.echo(t, "hello")
		_ = a.in.Close() // cat reads EOF and exits; the attach ends with it
		a.wait(t, 10*time.Second)
		waitFor(t, 10*time.Second, func() error {
			cs := h.status("once").ContainerStatuses
			if len(cs) != 1 || cs[0].State.Terminated == nil || cs[0].State.Terminated.ExitCode != 0 {
				return fmt.Errorf("%+v", cs)
			}
			return nil
		})
		var logs strings.Builder
		if err := h.rt.Logs(context.Background(), "ns", "p-once", "c", LogOptions{}, &logs); err != nil || logs.String() != "hello\n" {
			t.Fatalf("logs %q %v", logs.String(), err)
		}
		if err := h.rt.AttachContainer(context.Background(), "ns/p-once", "", "c", nil, nopCloser{io.Discard}, nil, false, nil); err == nil {
			t.Fatal("attach to an exited container succeeded")
		}
	})

	t.Run("no stdin: input is dropped", func(t *testing.T) {
		a := attach(t, h, "ns/p-nostdin")
		if _, err := io.WriteString(a.in, "ignored\n"); err != nil {
			t.Fatal(err)
		}
		a.running(t)
		a.cancel()
		a.wait(t, 10*time.Second)
		running("nostdin")
	})
}

// A tty: true container runs on a terminal: attach input reaches it (and
// is echoed by the terminal), output without a newline arrives at once,
// resize events set its size, and with stdinOnce the end of the first
// attach is end-of-file.
func TestAttachTTY(t *testing.T) {
	h := startWith(t, Config{})
	defer h.stop()
	c := corev1.Container{Name: "c", Stdin: true, StdinOnce: true, TTY: true, Command: []string{"/bin/sh", "-c",
		`[ -t 0 ] && [ -t 1 ] && echo TERMINAL; printf 'prompt> '; while read x; do echo "got:$x size:$(stty size)"; printf 'prompt> '; done; echo BYE`}}
	h.rt.SyncPod(pod("tty", corev1.RestartPolicyNever, c))
	waitFor(t, 20*time.Second, func() error {
		var logs strings.Builder
		if err := h.rt.Logs(context.Background(), "ns", "p-tty", "c", LogOptions{}, &logs); err != nil {
			return err
		}
		if !strings.Contains(logs.String(), "TERMINAL") || !strings.Contains(logs.String(), "prompt> ") {
			return fmt.Errorf("logs %q", logs.String())
		}
		return nil
	})
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	resize := make(chan remotecommand.TerminalSize, 1)
	done := make(chan error, 1)
	go func() {
		err := h.rt.AttachContainer(context.Background(), "ns/p-tty", "", "c", inR, outW, nil, true, resize)
		_ = outW.Close()
		done <- err
	}()
	out := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := outR.Read(buf)
			if n > 0 {
				out <- string(buf[:n])
			}
			if err != nil {
				close(out)
				return
			}
		}
	}()
	attached(t, h, "ns/p-tty", 1)
	resize <- remotecommand.TerminalSize{Width: 100, Height: 40}
	var seen strings.Builder
	// The size applies asynchronously: ask until the answer shows it.
	deadline := time.After(20 * time.Second)
	for i := 0; !strings.Contains(seen.String(), "size:40 100\r\nprompt> "); i++ {
		if _, err := fmt.Fprintf(inW, "line%d\n", i); err != nil {
			t.Fatal(err)
		}
		// The echo, the answer and the next prompt (no newline after it).
		want := fmt.Sprintf("line%d\r\ngot:line%d size:", i, i)
		for !strings.Contains(seen.String(), want) || !strings.HasSuffix(seen.String(), "prompt> ") {
			select {
			case s := <-out:
				seen.WriteString(s)
			case <-deadline:
				t.Fatalf("no answer to line%d: %q", i, seen.String())
			}
		}
	}
	_ = inW.Close() // stdinOnce: end of file; the loop ends
	for s := range out {
		seen.WriteString(s)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(seen.String(), "BYE") {
		t.Fatalf("no end-of-file after the attach: %q", seen.String())
	}
	waitFor(t, 10*time.Second, func() error {
		cs := h.status("tty").ContainerStatuses
		if len(cs) != 1 || cs[0].State.Terminated == nil || cs[0].State.Terminated.ExitCode != 0 {
			return fmt.Errorf("%+v", cs)
		}
		return nil
	})
}

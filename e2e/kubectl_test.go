package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// kubectlGlob is where the Debian `kubectl` package puts one binary per
// minor version.
const kubectlGlob = "/usr/lib/google-cloud-sdk/bin/kubectl.1.*"

// kubectlCommandTimeout bounds every kubectl invocation.
const kubectlCommandTimeout = 60 * time.Second

// kubectl runs one real kubectl binary against a hub.
type kubectl struct {
	path, version string
	env           []string
}

func newKubectl(t testing.TB, path string, h *hub) *kubectl {
	home := t.TempDir() // discovery cache per version
	return &kubectl{path: path, version: strings.TrimPrefix(filepath.Base(path), "kubectl."),
		env: append(os.Environ(), "KUBECONFIG="+h.Kubeconfig, "HOME="+home, "KUBECTL_INTERACTIVE_DELETE=false")}
}

// installedKubectls lists every versioned kubectl, oldest first; the test
// fails (never skips) when there is none.
func installedKubectls(t testing.TB) []string {
	t.Helper()
	paths, _ := filepath.Glob(kubectlGlob)
	if len(paths) == 0 {
		t.Fatalf("no kubectl binaries match %s: the e2e tests need the real kubectl 1.27–1.33; install them with `apt-get install kubectl` (Debian package from the Google Cloud SDK repository)", kubectlGlob)
	}
	minor := func(p string) int {
		n, _ := strconv.Atoi(strings.TrimPrefix(filepath.Base(p), "kubectl.1."))
		return n
	}
	sort.Slice(paths, func(i, j int) bool { return minor(paths[i]) < minor(paths[j]) })
	return paths
}

// run executes kubectl with stdin and returns stdout, stderr and the error.
func (k *kubectl) run(t testing.TB, stdin string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), kubectlCommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, k.path, args...)
	cmd.Env = k.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// ok runs kubectl, fails the test on a non-zero exit, returns stdout.
func (k *kubectl) ok(t testing.TB, args ...string) string {
	t.Helper()
	return k.okIn(t, "", args...)
}

func (k *kubectl) okIn(t testing.TB, stdin string, args ...string) string {
	t.Helper()
	out, errOut, err := k.run(t, stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s %s: %v\nstdout: %s\nstderr: %s", k.version, strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// fails runs kubectl expecting a non-zero exit; returns stdout+stderr.
func (k *kubectl) fails(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, err := k.run(t, "", args...)
	if err == nil {
		t.Fatalf("kubectl %s %s: succeeded, want failure\nstdout: %s", k.version, strings.Join(args, " "), out)
	}
	return out + errOut
}

func wantContains(t testing.TB, what, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Errorf("%s: output lacks %q:\n%s", what, w, got)
		}
	}
}

func wantEqual(t testing.TB, what, got, want string) {
	t.Helper()
	if strings.TrimSpace(got) != want {
		t.Errorf("%s = %q, want %q", what, strings.TrimSpace(got), want)
	}
}

const manifests = `apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
data:
  key1: value1
  key2: value2
---
apiVersion: v1
kind: Secret
metadata:
  name: app-secret
stringData:
  password: s3cr3t
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  labels:
    app: web
spec:
  containers:
  - name: web
    image: nginx:1.25
    ports:
    - containerPort: 8080
`

// TestKubectl drives every installed kubectl against one shared hub, each
// version in its own namespace.
func TestKubectl(t *testing.T) {
	paths := installedKubectls(t)
	h := sharedHub(t)
	for _, p := range paths {
		k := newKubectl(t, p, h)
		t.Run(k.version, func(t *testing.T) {
			t.Parallel()
			kubectlMatrix(t, k)
		})
	}
}

func kubectlMatrix(t *testing.T, k *kubectl) {
	ns := "kubectl-" + strings.ReplaceAll(k.version, ".", "-")

	t.Run("version", func(t *testing.T) {
		out := k.ok(t, "version", "-o", "json")
		var v struct {
			ClientVersion struct{ Minor string } `json:"clientVersion"`
			ServerVersion struct {
				Major, Minor, GitVersion string
			} `json:"serverVersion"`
		}
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("version -o json: %v\n%s", err, out)
		}
		if v.ServerVersion.Major != "1" || v.ServerVersion.Minor == "" || !strings.HasPrefix(v.ServerVersion.GitVersion, "v1.") {
			t.Errorf("server version %+v", v.ServerVersion)
		}
		if want := strings.TrimPrefix(k.version, "1."); strings.TrimSuffix(v.ClientVersion.Minor, "+") != want {
			t.Errorf("client minor %q, want %q (is %s the binary it claims?)", v.ClientVersion.Minor, want, k.path)
		}
		if out := k.ok(t, "version"); !regexp.MustCompile(`Server Version: (v1\.|version\.Info\{Major:"1")`).MatchString(out) {
			t.Errorf("version:\n%s", out)
		}
	})

	t.Run("api-resources", func(t *testing.T) {
		out := k.ok(t, "api-resources")
		for _, re := range []string{
			`(?m)^pods\s+po\s+v1\s+true\s+Pod$`,
			`(?m)^namespaces\s+ns\s+v1\s+false\s+Namespace$`,
			`(?m)^configmaps\s+cm\s+v1\s+true\s+ConfigMap$`,
			`(?m)^services\s+svc\s+v1\s+true\s+Service$`,
			`(?m)^leases\s+coordination\.k8s\.io/v1\s+true\s+Lease$`,
			`(?m)^certificatesigningrequests\s+csr\s+certificates\.k8s\.io/v1\s+false\s+CertificateSigningRequest$`,
			`(?m)^clusterroles\s+rbac\.authorization\.k8s\.io/v1\s+false\s+ClusterRole$`,
		} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("api-resources lacks %s:\n%s", re, out)
			}
		}
	})

	t.Run("get-ns", func(t *testing.T) {
		out := k.ok(t, "get", "ns")
		if !regexp.MustCompile(`(?m)^NAME\s+STATUS\s+AGE$`).MatchString(out) {
			t.Errorf("get ns header:\n%s", out)
		}
		for _, n := range []string{"default", "kube-system", "kube-public", "kube-node-lease"} {
			if !regexp.MustCompile(`(?m)^` + n + `\s+Active\s+\S+$`).MatchString(out) {
				t.Errorf("get ns lacks an Active %s:\n%s", n, out)
			}
		}
	})

	// Everything below works in ns.
	created := t.Run("create-ns", func(t *testing.T) {
		wantContains(t, "create ns", k.ok(t, "create", "ns", ns), "namespace/"+ns+" created")
		wantEqual(t, "label kubernetes.io/metadata.name", k.ok(t, "get", "ns", ns, "-o", `jsonpath={.metadata.labels.kubernetes\.io/metadata\.name}`), ns)
		wantContains(t, "create ns again", k.fails(t, "create", "ns", ns), "AlreadyExists", "already exists")
	})
	if !created {
		t.FailNow()
	}

	t.Run("apply", func(t *testing.T) {
		out := k.okIn(t, manifests, "apply", "-n", ns, "-f", "-")
		wantContains(t, "apply", out, "configmap/app-config created", "secret/app-secret created", "service/web created", "pod/web-0 created")
		out = k.okIn(t, manifests, "apply", "-n", ns, "-f", "-")
		// stringData is write-only, so a Secret that uses it is "configured"
		// on every apply, as against Kubernetes.
		wantContains(t, "re-apply", out, "configmap/app-config unchanged", "service/web unchanged", "pod/web-0 unchanged")
		changed := strings.Replace(manifests, "key2: value2", "key2: changed", 1)
		out = k.okIn(t, changed, "apply", "-n", ns, "-f", "-")
		wantContains(t, "apply change", out, "configmap/app-config configured", "pod/web-0 unchanged")
		wantEqual(t, "secret data", k.ok(t, "get", "secret", "app-secret", "-n", ns, "-o", "jsonpath={.data.password}"), "czNjcjN0")
		ip := strings.TrimSpace(k.ok(t, "get", "svc", "web", "-n", ns, "-o", "jsonpath={.spec.clusterIP}"))
		_, cidr, _ := net.ParseCIDR("10.96.0.0/12")
		if parsed := net.ParseIP(ip); parsed == nil || !cidr.Contains(parsed) || ip == "10.96.0.1" {
			t.Errorf("service clusterIP %q not a fresh address of 10.96.0.0/12", ip)
		}
	})

	t.Run("apply-server-side", func(t *testing.T) {
		cm := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  owned: by-a\n"
		wantContains(t, "ssa", k.okIn(t, cm, "apply", "--server-side", "--field-manager=mgr-a", "-n", ns, "-f", "-"), "configmap/ssa serverside-applied")
		conflicting := strings.Replace(cm, "by-a", "by-b", 1)
		out, errOut, err := k.run(t, conflicting, "apply", "--server-side", "--field-manager=mgr-b", "-n", ns, "-f", "-")
		if err == nil {
			t.Fatalf("conflicting server-side apply succeeded: %s", out)
		}
		wantContains(t, "ssa conflict", errOut, "conflict", `"mgr-a"`, ".data.owned")
		wantContains(t, "ssa force", k.okIn(t, conflicting, "apply", "--server-side", "--force-conflicts", "--field-manager=mgr-b", "-n", ns, "-f", "-"), "configmap/ssa serverside-applied")
		wantEqual(t, "data after force", k.ok(t, "get", "cm", "ssa", "-n", ns, "-o", "jsonpath={.data.owned}"), "by-b")
		managers := k.ok(t, "get", "cm", "ssa", "-n", ns, "--show-managed-fields", "-o", `jsonpath={range .metadata.managedFields[*]}{.manager}:{.operation}{"\n"}{end}`)
		wantContains(t, "managedFields", managers, "mgr-b:Apply")
	})

	t.Run("get-wide", func(t *testing.T) {
		out := k.ok(t, "get", "pods", "-n", ns, "-o", "wide")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		header := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(lines[0]), -1)
		want := []string{"NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE", "READINESS GATES"}
		if strings.Join(header, "|") != strings.Join(want, "|") {
			t.Errorf("get pods -o wide header %q, want %q", header, want)
		}
		if len(lines) != 2 || !regexp.MustCompile(`^web-0\s+0/1\s+Pending\s+0\s+\S+\s+<none>\s+<none>\s+<none>\s+<none>$`).MatchString(lines[1]) {
			t.Errorf("get pods -o wide rows:\n%s", out)
		}
		out = k.ok(t, "get", "svc", "web", "-n", ns)
		if !regexp.MustCompile(`(?m)^NAME\s+TYPE\s+CLUSTER-IP\s+EXTERNAL-IP\s+PORT\(S\)\s+AGE\n web\s+ClusterIP\s+10\.\S+\s+<none>\s+80/TCP\s+\S+$`).MatchString(strings.Replace(out, "\nweb", "\n web", 1)) {
			t.Errorf("get svc:\n%s", out)
		}
	})

	t.Run("output-formats", func(t *testing.T) {
		y := k.ok(t, "get", "cm", "app-config", "-n", ns, "-o", "yaml")
		wantContains(t, "-o yaml", y, "apiVersion: v1", "kind: ConfigMap", "  key1: value1", "  name: app-config", "  namespace: "+ns, "resourceVersion:", "uid:")
		var cm struct {
			Kind     string
			Metadata struct{ Name, UID, CreationTimestamp string }
			Data     map[string]string
		}
		j := k.ok(t, "get", "cm", "app-config", "-n", ns, "-o", "json")
		if err := json.Unmarshal([]byte(j), &cm); err != nil {
			t.Fatalf("-o json: %v\n%s", err, j)
		}
		if cm.Kind != "ConfigMap" || cm.Data["key2"] != "changed" || cm.Metadata.UID == "" || cm.Metadata.CreationTimestamp == "" {
			t.Errorf("-o json: %+v", cm)
		}
		wantEqual(t, "-o jsonpath", k.ok(t, "get", "cm", "app-config", "-n", ns, "-o", "jsonpath={.data.key1}"), "value1")
		wantEqual(t, "-o name", k.ok(t, "get", "pods", "-n", ns, "-o", "name"), "pod/web-0")
		out := k.ok(t, "get", "pods", "-n", ns, "-o", "custom-columns=NAME:.metadata.name,IMAGE:.spec.containers[0].image,POLICY:.spec.restartPolicy")
		if !regexp.MustCompile(`web-0\s+nginx:1\.25\s+Always`).MatchString(out) {
			t.Errorf("custom-columns (defaulted restartPolicy):\n%s", out)
		}
		wantEqual(t, "field selector", k.ok(t, "get", "pods", "-A", "--field-selector", "metadata.namespace="+ns+",spec.nodeName=", "-o", "name"), "pod/web-0")
	})

	t.Run("patch", func(t *testing.T) {
		wantContains(t, "merge patch", k.ok(t, "patch", "cm", "app-config", "-n", ns, "--type=merge", "-p", `{"data":{"merged":"m"}}`), "configmap/app-config patched")
		wantContains(t, "json patch", k.ok(t, "patch", "cm", "app-config", "-n", ns, "--type=json", "-p", `[{"op":"add","path":"/data/jsonpatched","value":"j"},{"op":"remove","path":"/data/key2"}]`), "configmap/app-config patched")
		wantContains(t, "strategic patch", k.ok(t, "patch", "pod", "web-0", "-n", ns, "--type=strategic", "-p", `{"spec":{"containers":[{"name":"web","image":"nginx:1.26"}]}}`), "pod/web-0 patched")
		wantEqual(t, "data after patches", k.ok(t, "get", "cm", "app-config", "-n", ns, "-o", `jsonpath={.data.merged},{.data.jsonpatched},{.data.key2}`), "m,j,")
		wantEqual(t, "containers after strategic patch", k.ok(t, "get", "pod", "web-0", "-n", ns, "-o", `jsonpath={range .spec.containers[*]}{.name}={.image};{end}`), "web=nginx:1.26;")
		// A strategic patch may not change immutable pod fields.
		out := k.fails(t, "patch", "pod", "web-0", "-n", ns, "--type=strategic", "-p", `{"spec":{"restartPolicy":"Never"}}`)
		wantContains(t, "forbidden pod patch", out, "Forbidden", "pod updates may not change fields")
		wantContains(t, "bad json patch", k.fails(t, "patch", "cm", "app-config", "-n", ns, "--type=json", "-p", `[{"op":"remove","path":"/data/nope"}]`), "invalid")
	})

	t.Run("label-annotate", func(t *testing.T) {
		wantContains(t, "label", k.ok(t, "label", "cm", "app-config", "-n", ns, "tier=backend"), "configmap/app-config labeled")
		wantEqual(t, "label selector", k.ok(t, "get", "cm", "-n", ns, "-l", "tier=backend", "-o", "name"), "configmap/app-config")
		wantContains(t, "unlabel", k.ok(t, "label", "cm", "app-config", "-n", ns, "tier-"), "configmap/app-config unlabeled")
		wantEqual(t, "label selector after unlabel", k.ok(t, "get", "cm", "-n", ns, "-l", "tier=backend", "-o", "name"), "")
		// kubectl 1.27 prints "annotate" for "annotated".
		wantContains(t, "annotate", k.ok(t, "annotate", "cm", "app-config", "-n", ns, "example.com/note=hello"), "configmap/app-config annotate")
		wantEqual(t, "annotation", k.ok(t, "get", "cm", "app-config", "-n", ns, "-o", `jsonpath={.metadata.annotations.example\.com/note}`), "hello")
	})

	t.Run("watch", func(t *testing.T) { kubectlWatch(t, k, ns) })

	t.Run("explain", func(t *testing.T) {
		out := k.ok(t, "explain", "pod.spec")
		wantContains(t, "explain pod.spec", out, "KIND:", "Pod", "VERSION:", "v1", "spec", "containers", "restartPolicy", "nodeName")
		out = k.ok(t, "explain", "configmaps.data")
		wantContains(t, "explain configmaps.data", out, "ConfigMap", "data")
	})

	t.Run("auth", func(t *testing.T) {
		out := k.ok(t, "auth", "whoami")
		if !regexp.MustCompile(`Username\s+tether-admin`).MatchString(out) {
			t.Errorf("auth whoami:\n%s", out)
		}
		wantContains(t, "auth whoami groups", out, "system:masters", "system:authenticated")
		wantEqual(t, "auth can-i create pods", k.ok(t, "auth", "can-i", "create", "pods", "-n", ns), "yes")
		wantContains(t, "auth can-i as another user", k.fails(t, "auth", "can-i", "get", "secrets", "-n", ns, "--as", "nobody"), "no")
	})

	t.Run("dry-run-server", func(t *testing.T) {
		out := k.ok(t, "create", "cm", "dry", "-n", ns, "--from-literal=a=b", "--dry-run=server", "-o", "jsonpath={.metadata.name}/{.data.a}/{.metadata.uid}")
		if !regexp.MustCompile(`^dry/b/[0-9a-f-]{36}$`).MatchString(strings.TrimSpace(out)) {
			t.Errorf("server dry run create printed %q", out)
		}
		wantContains(t, "dry-run object absent", k.fails(t, "get", "cm", "dry", "-n", ns), "NotFound", `"dry" not found`)
		wantContains(t, "dry-run delete", k.ok(t, "delete", "cm", "app-config", "-n", ns, "--dry-run=server"), "(server dry run)")
		k.ok(t, "get", "cm", "app-config", "-n", ns)
		wantContains(t, "invalid object in dry run", k.fails(t, "create", "cm", "Bad_Name", "-n", ns, "--dry-run=server"), "Invalid", "metadata.name")
	})

	t.Run("diff", func(t *testing.T) {
		cm := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-config\n  namespace: " + ns + "\ndata:\n  key1: value1\n"
		out, errOut, err := k.run(t, strings.Replace(cm, "key1: value1", "key1: diffed", 1), "diff", "-f", "-")
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
			t.Fatalf("kubectl diff with a change: %v (want exit 1)\n%s\n%s", err, out, errOut)
		}
		wantContains(t, "diff", out, "-  key1: value1", "+  key1: diffed")
		wantEqual(t, "diff left the object alone", k.ok(t, "get", "cm", "app-config", "-n", ns, "-o", "jsonpath={.data.key1}"), "value1")
		cur := k.ok(t, "get", "secret", "app-secret", "-n", ns, "-o", "yaml")
		if out, errOut, err := k.run(t, cur, "diff", "-f", "-"); err != nil || out != "" {
			t.Errorf("diff of the live object: %v\n%s\n%s", err, out, errOut)
		}
	})

	t.Run("delete", func(t *testing.T) {
		wantContains(t, "delete cm", k.ok(t, "delete", "cm", "app-config", "-n", ns), `configmap "app-config" deleted`)
		wantContains(t, "get deleted", k.fails(t, "get", "cm", "app-config", "-n", ns), "NotFound")
		wantContains(t, "delete pod", k.ok(t, "delete", "pod", "web-0", "-n", ns, "--timeout=60s"), `pod "web-0" deleted`)
		wantContains(t, "delete -f", k.okIn(t, manifests, "delete", "-n", ns, "--ignore-not-found", "-f", "-"), `secret "app-secret" deleted`, `service "web" deleted`)
		k.ok(t, "create", "cm", "leftover", "-n", ns, "--from-literal=x=y")
		wantContains(t, "delete ns", k.ok(t, "delete", "ns", ns, "--timeout=60s"), `namespace "`+ns+`" deleted`)
		wantContains(t, "ns gone", k.fails(t, "get", "ns", ns), "NotFound")
	})
}

// kubectlWatch checks `kubectl get -w --output-watch-events` and a raw
// watch resumed from an older resourceVersion.
func kubectlWatch(t *testing.T, k *kubectl, ns string) {
	k.ok(t, "create", "cm", "watched", "-n", ns, "--from-literal=step=0")
	rv0 := strings.TrimSpace(k.ok(t, "get", "cm", "watched", "-n", ns, "-o", "jsonpath={.metadata.resourceVersion}"))
	k.ok(t, "patch", "cm", "watched", "-n", ns, "-p", `{"data":{"step":"1"}}`)

	// 1. kubectl get -w: initial ADDED, then the change made while it runs.
	w := startStream(t, k, "get", "cm", "watched", "-n", ns, "-w", "--output-watch-events", "-o", "json")
	ev := w.next(t)
	if ev.Type != "ADDED" || ev.Object.Data["step"] != "1" {
		t.Fatalf("first watch event %+v, want ADDED step=1", ev)
	}
	k.ok(t, "patch", "cm", "watched", "-n", ns, "-p", `{"data":{"step":"2"}}`)
	ev = w.next(t)
	if ev.Type != "MODIFIED" || ev.Object.Data["step"] != "2" {
		t.Fatalf("watch event after patch %+v, want MODIFIED step=2", ev)
	}
	k.ok(t, "delete", "cm", "watched", "-n", ns)
	if ev = w.next(t); ev.Type != "DELETED" {
		t.Fatalf("watch event after delete %+v, want DELETED", ev)
	}
	w.stop()

	// 2. A watch resumed from rv0 replays what happened since, in order,
	// then keeps streaming.
	path := fmt.Sprintf("/api/v1/namespaces/%s/configmaps?watch=1&resourceVersion=%s&timeoutSeconds=60", ns, rv0)
	r := startStream(t, k, "get", "--raw", path)
	var got []string
	for i := 0; i < 3; i++ {
		ev := r.next(t)
		got = append(got, ev.Type+":"+ev.Object.Data["step"])
	}
	if strings.Join(got, ",") != "MODIFIED:1,MODIFIED:2,DELETED:2" {
		t.Errorf("watch resumed from resourceVersion %s replayed %v", rv0, got)
	}
	k.ok(t, "create", "cm", "after", "-n", ns, "--from-literal=step=3")
	if ev := r.next(t); ev.Type != "ADDED" || ev.Object.Name != "after" {
		t.Errorf("resumed watch: event after create %+v", ev)
	}
	r.stop()
}

type watchEvent struct {
	Type   string `json:"type"`
	Object struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name            string `json:"name"`
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Data map[string]string `json:"data"`
		// Name is filled from Metadata.Name for convenience.
		Name string `json:"-"`
	} `json:"object"`
}

// stream is a running kubectl whose stdout is a sequence of JSON watch
// events.
type stream struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	events chan watchEvent
	done   chan struct{}
	stderr *bytes.Buffer
}

func startStream(t *testing.T, k *kubectl, args ...string) *stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), kubectlCommandTimeout)
	cmd := exec.CommandContext(ctx, k.path, args...)
	cmd.Env = k.env
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	s := &stream{cmd: cmd, cancel: cancel, events: make(chan watchEvent, 16), done: make(chan struct{}), stderr: &bytes.Buffer{}}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		defer close(s.done)
		defer close(s.events)
		dec := json.NewDecoder(bufio.NewReader(stdout))
		for {
			var ev watchEvent
			if err := dec.Decode(&ev); err != nil {
				_, _ = io.Copy(io.Discard, stdout)
				return
			}
			ev.Object.Name = ev.Object.Metadata.Name
			select {
			case s.events <- ev:
			case <-ctx.Done():
				_, _ = io.Copy(io.Discard, stdout)
				return
			}
		}
	}()
	t.Cleanup(s.stop)
	return s
}

// next returns the next event, failing the test after a bounded wait.
func (s *stream) next(t *testing.T) watchEvent {
	t.Helper()
	select {
	case ev, ok := <-s.events:
		if !ok {
			t.Fatalf("kubectl %v ended early; stderr: %s", s.cmd.Args[1:], s.stderr)
		}
		return ev
	case <-time.After(30 * time.Second):
		t.Fatalf("kubectl %v: no watch event within 30s", s.cmd.Args[1:])
	}
	return watchEvent{}
}

func (s *stream) stop() {
	s.cancel()
	<-s.done
	_ = s.cmd.Wait()
}

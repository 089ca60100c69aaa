package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestPodEnv is the pod environment and stdin as kubelet provides them,
// with real kubectl against a hub and two `tether agent`s:
//   - a pod with envFrom (ConfigMap, Secret with a prefix), secretKeyRef,
//     fieldRefs and $(VAR) expansion prints the expected environment, and
//     the ConfigMap key that is no valid variable name is skipped with an
//     InvalidEnvironmentVariableNames event;
//   - a pod whose ConfigMap is missing shows CreateContainerConfigError
//     with kubelet's message, then runs once the ConfigMap is created;
//   - the Node authorizer: a node's own credentials (its kubelet.kubeconfig)
//     read a Secret its pod references through env, and are refused a
//     Secret no pod on the node references and the Secret of another node's
//     pod;
//   - `kubectl attach -i` echoes stdin through `cat` in a pod with stdin
//     (stdinOnce: stdin closes when the attach ends, and the pod completes;
//     plain stdin: it stays open for the next attach), and `kubectl run -i
//     --rm` does the same for a pod kubectl creates — with the oldest and
//     the newest installed kubectl (SPDY and WebSocket streaming).
func TestPodEnv(t *testing.T) {
	c := sharedCluster(t)
	cs := c.Hub.Client(t)
	ns := testNamespace(t, cs)
	kubectls := installedKubectls(t)
	k := newKubectl(t, lastOf(kubectls), c.Hub)
	node, other := c.Agents[0], c.Agents[1]
	ctx := testContext(t, 5*time.Minute)
	defer func() {
		if t.Failed() {
			t.Log(c.agentLogs())
		}
	}()

	k.ok(t, "create", "configmap", "app-config", "-n", ns, "--from-literal=GREETING=hello", "--from-literal=LOG_LEVEL=debug",
		"--from-literal=1bad=skipped")
	k.ok(t, "create", "secret", "generic", "app-secret", "-n", ns, "--from-literal=password=s3cret", "--from-literal=user=admin")
	k.ok(t, "create", "secret", "generic", "unreferenced", "-n", ns, "--from-literal=k=v")
	k.ok(t, "create", "secret", "generic", "other-node-secret", "-n", ns, "--from-literal=k=v")

	t.Run("env from configmap, secret and fields", func(t *testing.T) {
		k.okIn(t, `apiVersion: v1
kind: Pod
metadata:
  name: env
  labels: {app: envtest}
  annotations: {note: "an annotation"}
spec:
  nodeName: `+node.Name+`
  restartPolicy: Never
  containers:
  - name: c
    image: process
    command: ["sh", "-c", "env | sort | grep -E '^(GREETING|LOG_LEVEL|S_|PASSWORD|POD_|NODE_|APP|NOTE|MSG|ESCAPED|UNDEFINED|CPU)'; echo ARGS \"$1\" \"$2\"", "sh"]
    args: ["$(GREETING)", "$$(GREETING)"]
    envFrom:
    - configMapRef: {name: app-config}
    - secretRef: {name: app-secret}
      prefix: S_
    - configMapRef: {name: not-there, optional: true}
    env:
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: app-secret, key: password}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: POD_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: NODE_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
    - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    - {name: NOTE, valueFrom: {fieldRef: {fieldPath: "metadata.annotations['note']"}}}
    - {name: CPU, valueFrom: {resourceFieldRef: {resource: requests.cpu, divisor: 1m}}}
    - {name: MSG, value: "$(GREETING) from $(POD_NAME) at $(LOG_LEVEL)"}
    - {name: ESCAPED, value: "$$(GREETING)"}
    - {name: UNDEFINED, value: "$(NOPE)"}
    - {name: OPTIONAL, valueFrom: {secretKeyRef: {name: app-secret, key: nope, optional: true}}}
    resources:
      requests: {cpu: 250m}
`, "apply", "-n", ns, "-f", "-")
		pod := waitPhase(t, ctx, cs, ns, "env", corev1.PodSucceeded)
		logs := k.ok(t, "logs", "-n", ns, "env")
		wantContains(t, "env pod output", logs,
			"GREETING=hello\n", "LOG_LEVEL=debug\n", "S_password=s3cret\n", "S_user=admin\n", "PASSWORD=s3cret\n",
			"POD_NAME=env\n", "POD_NAMESPACE="+ns+"\n", "POD_UID="+string(pod.UID)+"\n", "POD_IP="+node.IP+"\n",
			"NODE_NAME="+node.Name+"\n", "NODE_IP="+node.IP+"\n", "APP=envtest\n", "NOTE=an annotation\n", "CPU=250\n",
			"MSG=hello from env at debug\n", "ESCAPED=$(GREETING)\n", "UNDEFINED=$(NOPE)\n", "ARGS hello $(GREETING)\n")
		if strings.Contains(logs, "1bad") || strings.Contains(logs, "OPTIONAL") {
			t.Errorf("skipped variables are set:\n%s", logs)
		}
		events := podEvents(t, k, ns, "env")
		wantContains(t, "InvalidEnvironmentVariableNames event", events,
			"Warning InvalidEnvironmentVariableNames Keys [1bad] from the EnvFrom configMap "+ns+"/app-config were skipped since they are considered invalid environment variable names.")
	})

	t.Run("missing configmap, then created", func(t *testing.T) {
		k.okIn(t, `apiVersion: v1
kind: Pod
metadata: {name: late}
spec:
  nodeName: `+node.Name+`
  restartPolicy: Never
  containers:
  - name: c
    image: process
    command: ["sh", "-c", "echo LATE=$LATE"]
    env:
    - {name: LATE, valueFrom: {configMapKeyRef: {name: late-config, key: k}}}
`, "apply", "-n", ns, "-f", "-")
		waitFor(t, readyTimeout, "CreateContainerConfigError", func() error {
			out := k.ok(t, "get", "pod", "late", "-n", ns, "--no-headers")
			msg := k.ok(t, "get", "pod", "late", "-n", ns, "-o", "jsonpath={.status.containerStatuses[0].state.waiting.message}")
			if !strings.Contains(out, "CreateContainerConfigError") || msg != `configmap "late-config" not found` {
				return fmt.Errorf("kubectl get pod: %q, message %q", out, msg)
			}
			return nil
		})
		// Kubelet's Failed event carries the same message.
		wantContains(t, "Failed event", podEvents(t, k, ns, "late"), `Warning Failed Error: configmap "late-config" not found`)
		// A ConfigMap without the key: kubelet's other message.
		k.ok(t, "create", "configmap", "late-config", "-n", ns, "--from-literal=other=x")
		waitFor(t, readyTimeout, "missing key", func() error {
			msg := k.ok(t, "get", "pod", "late", "-n", ns, "-o", "jsonpath={.status.containerStatuses[0].state.waiting.message}")
			if msg != "couldn't find key k in ConfigMap "+ns+"/late-config" {
				return fmt.Errorf("message %q", msg)
			}
			return nil
		})
		k.okIn(t, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late-config}\ndata: {k: arrived}\n", "apply", "-n", ns, "-f", "-")
		waitPhase(t, ctx, cs, ns, "late", corev1.PodSucceeded)
		wantEqual(t, "late pod output", k.ok(t, "logs", "-n", ns, "late"), "LATE=arrived")
	})

	t.Run("node authorizer", func(t *testing.T) {
		// Pods referencing secrets through env only: one on each node.
		k.okIn(t, `apiVersion: v1
kind: Pod
metadata: {name: other-node}
spec:
  nodeName: `+other.Name+`
  restartPolicy: Never
  containers:
  - name: c
    image: process
    command: ["true"]
    env:
    - {name: S, valueFrom: {secretKeyRef: {name: other-node-secret, key: k}}}
`, "apply", "-n", ns, "-f", "-")
		waitPhase(t, ctx, cs, ns, "other-node", corev1.PodSucceeded)
		asNode := func(a *agent, args ...string) (string, error) {
			out, errOut, err := k.run(t, "", append([]string{"--kubeconfig", filepath.Join(a.Dir, "kubelet.kubeconfig"), "-n", ns}, args...)...)
			return out + errOut, err
		}
		// The env pod on node references app-secret through envFrom and
		// secretKeyRef.
		if out, err := asNode(node, "get", "secret", "app-secret", "-o", "jsonpath={.data.password}"); err != nil || out != "czNjcmV0" {
			t.Fatalf("node %s reading the secret its pod references: %q %v", node.Name, out, err)
		}
		for _, tc := range []struct {
			a      *agent
			secret string
		}{{node, "unreferenced"}, {node, "other-node-secret"}, {other, "app-secret"}, {other, "unreferenced"}} {
			out, err := asNode(tc.a, "get", "secret", tc.secret)
			if err == nil || !strings.Contains(out, "Forbidden") ||
				!strings.Contains(out, fmt.Sprintf("no relationship found between node %q and secret %s/%s", tc.a.Name, ns, tc.secret)) {
				t.Errorf("node %s reading secret %s: %v\n%s", tc.a.Name, tc.secret, err, out)
			}
		}
		if out, err := asNode(other, "get", "secret", "other-node-secret", "-o", "name"); err != nil {
			t.Errorf("node %s reading its pod's secret: %v\n%s", other.Name, err, out)
		}
		if out, err := asNode(node, "get", "secrets"); err == nil || !strings.Contains(out, "Forbidden") {
			t.Errorf("node %s listing secrets: %v\n%s", node.Name, err, out)
		}
	})

	for _, path := range []string{kubectls[0], lastOf(kubectls)} {
		k := newKubectl(t, path, c.Hub)
		tag := strings.ReplaceAll(k.version, ".", "-")
		t.Run("attach stdin kubectl "+k.version, func(t *testing.T) {
			// stdinOnce: the attach's input reaches cat, its EOF closes
			// cat's stdin, cat exits and the attach ends.
			once := "once-" + tag
			k.okIn(t, catPod(once, node.Name, true), "apply", "-n", ns, "-f", "-")
			waitRunning(t, ctx, cs, ns, once)
			out := k.okIn(t, "hello from the test\nsecond line\n", "attach", "-i", once, "-n", ns, "-c", "c")
			wantContains(t, "kubectl attach -i output", out, "hello from the test\nsecond line\n")
			pod := waitPhase(t, ctx, cs, ns, once, corev1.PodSucceeded)
			if st := pod.Status.ContainerStatuses[0].State.Terminated; st == nil || st.ExitCode != 0 {
				t.Fatalf("cat did not exit 0 after stdin closed: %+v", pod.Status.ContainerStatuses[0].State)
			}

			// stdin: true without stdinOnce: stdin stays open across attaches.
			keep := "keep-" + tag
			k.okIn(t, catPod(keep, node.Name, false), "apply", "-n", ns, "-f", "-")
			waitRunning(t, ctx, cs, ns, keep)
			for i := range 2 {
				interactiveEcho(t, k, ns, keep, fmt.Sprintf("round %d", i))
			}
			if p, err := cs.CoreV1().Pods(ns).Get(ctx, keep, metav1.GetOptions{}); err != nil || p.Status.ContainerStatuses[0].State.Running == nil ||
				p.Status.ContainerStatuses[0].RestartCount != 0 {
				t.Fatalf("cat with stdin did not keep running across attaches: %v %+v", err, p.Status)
			}

			// tty: true: kubectl attach -it on a terminal reaches the
			// container's own terminal (echo, size, stdinOnce end).
			term := "tty-" + tag
			k.okIn(t, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
  nodeName: %s
  restartPolicy: Never
  containers:
  - name: c
    image: process
    stdin: true
    stdinOnce: true
    tty: true
    command: ["sh", "-c", "read x; echo \"got:$x size:$(stty size)\""]
`, term, node.Name), "apply", "-n", ns, "-f", "-")
			waitRunning(t, ctx, cs, ns, term)
			attachTTY(t, k, ns, term)
			waitPhase(t, ctx, cs, ns, term, corev1.PodSucceeded)

			// kubectl run -i --rm: kubectl creates the pod (stdin,
			// stdinOnce), the scheduler places it, kubectl attaches, sends
			// its input and deletes the pod.
			run := "run-" + tag
			out = k.okIn(t, "ping through kubectl run\n", "run", run, "-n", ns, "-i", "--rm", "--restart=Never", "--image=process",
				"--pod-running-timeout=90s", "--command", "--", "cat")
			wantContains(t, "kubectl run -i --rm output", out, "ping through kubectl run\n")
			waitFor(t, readyTimeout, "pod "+run+" deleted", func() error {
				if _, err := cs.CoreV1().Pods(ns).Get(ctx, run, metav1.GetOptions{}); err == nil {
					return fmt.Errorf("pod %s still exists", run)
				}
				return nil
			})
		})
	}
}

// podEvents lists the events about pod ns/name as "type reason message"
// lines (kubectl get events).
func podEvents(t *testing.T, k *kubectl, ns, name string) string {
	t.Helper()
	return k.ok(t, "get", "events", "-n", ns, "--field-selector", "involvedObject.name="+name,
		"-o", `jsonpath={range .items[*]}{.type} {.reason} {.message}{"\n"}{end}`)
}

// attachTTY runs `kubectl attach -it` on a terminal of its own (a pty the
// test holds, 33x101) to pod, whose shell prints "got:<line> size:<rows
// cols>" for the line it reads; the line is typed as on a keyboard.
func attachTTY(t *testing.T, k *kubectl, ns, pod string) {
	t.Helper()
	ptmx, tty, err := openTestPTY(33, 101)
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	ctx, cancel := context.WithTimeout(context.Background(), kubectlCommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, k.path, "attach", "-it", pod, "-n", ns, "-c", "c")
	cmd.Env = append(k.env, "TERM=dumb")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		tty.Close()
		t.Fatal(err)
	}
	tty.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var mu sync.Mutex
	var seen strings.Builder
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			mu.Lock()
			seen.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	output := func() string {
		mu.Lock()
		defer mu.Unlock()
		return seen.String()
	}
	// kubectl is attached once it printed its hint; then type a line
	// (Enter is a carriage return in raw mode) until the answer shows.
	waitFor(t, 30*time.Second, "kubectl attach -it attached", func() error {
		if !strings.Contains(output(), "If you don't see a command prompt") {
			return fmt.Errorf("output so far %q", output())
		}
		return nil
	})
	if _, err := ptmx.Write([]byte("typed\r")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("kubectl attach -it: %v\n%q", err, output())
		}
	case <-ctx.Done():
		t.Fatalf("kubectl attach -it did not end: %q", output())
	}
	waitFor(t, 5*time.Second, "terminal answer", func() error {
		if out := output(); !strings.Contains(out, "typed\r\n") || !strings.Contains(out, "got:typed size:33 101") {
			return fmt.Errorf("terminal output (echo, answer with the size) %q", out)
		}
		return nil
	})
}

// openTestPTY opens a pseudo-terminal of rows x cols for a child process.
func openTestPTY(rows, cols uint16) (*os.File, *os.File, error) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (*os.File, *os.File, error) { ptmx.Close(); return nil, nil, err }
	rc, err := ptmx.SyscallConn()
	if err != nil {
		return fail(err)
	}
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		if ierr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ierr != nil {
			return
		}
		if n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN); ierr != nil {
			return
		}
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	}); err != nil {
		return fail(err)
	}
	if ierr != nil {
		return fail(ierr)
	}
	tty, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return fail(err)
	}
	return ptmx, tty, nil
}

func catPod(name, node string, once bool) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
  nodeName: %s
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: process, command: [cat], stdin: true, stdinOnce: %v}
`, name, node, once)
}

// interactiveEcho runs `kubectl attach -i`, writes line to its stdin, waits
// for cat's echo, and ends kubectl (the container keeps running).
func interactiveEcho(t *testing.T, k *kubectl, ns, pod, line string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), kubectlCommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, k.path, "attach", "-i", pod, "-n", ns, "-c", "c")
	cmd.Env = k.env
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = cmd.Wait()
	}()
	got := make(chan string, 1)
	go func() {
		br := bufio.NewReader(stdout)
		for {
			l, err := br.ReadString('\n')
			if strings.TrimSpace(l) == line || err != nil {
				got <- l
				_, _ = io.Copy(io.Discard, br)
				return
			}
		}
	}()
	// Until kubectl is attached, input waits in its stdin pipe; cat
	// echoes it once the attach delivers it.
	if _, err := io.WriteString(stdin, line+"\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-got:
		if strings.TrimSpace(l) != line {
			t.Fatalf("kubectl attach -i: no echo of %q (got %q); stderr:\n%s", line, l, stderr.String())
		}
	case <-ctx.Done():
		t.Fatalf("kubectl attach -i: no echo of %q within %s; stderr:\n%s", line, kubectlCommandTimeout, stderr.String())
	}
}

// waitPhase waits until pod ns/name reaches phase (failing on the other
// terminal phase).
func waitPhase(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns, name string, phase corev1.PodPhase) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitFor(t, readyTimeout, "pod "+name+" "+string(phase), func() error {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase == corev1.PodFailed && phase != corev1.PodFailed {
			t.Fatalf("pod %s failed: %+v", name, p.Status)
		}
		if p.Status.Phase != phase {
			return fmt.Errorf("phase %s: %+v", p.Status.Phase, p.Status.ContainerStatuses)
		}
		pod = p
		return nil
	})
	return pod
}

func waitRunning(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns, name string) {
	t.Helper()
	waitFor(t, readyTimeout, "pod "+name+" running", func() error {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].State.Running == nil {
			return fmt.Errorf("%+v", p.Status)
		}
		return nil
	})
}

package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"

	"github.com/tether-dev/tether/internal/pki"
)

// nodePaths is the cluster and workload shared by the control plane → node
// tests (issue 6) and benchmarks: pod "feed" on n1 prints what the test
// appends to a host file; pod "web" on n2 is the pod server (HTTP and a
// self-signed HTTPS); Service "web" has hand-made Endpoints to it.
type nodePaths struct {
	c         *cluster
	cs        *kubernetes.Clientset
	ns        string
	feedFile  string
	webIP     string
	httpPort  int
	httpsPort int

	internal     *httptest.Server // the "internal" page the redirect points at
	internalHits atomic.Int64
}

var (
	npOnce sync.Once
	np     *nodePaths
	npErr  error
)

func sharedNodePaths(tb testing.TB) *nodePaths {
	tb.Helper()
	c := sharedCluster(tb)
	npOnce.Do(func() { np, npErr = setupNodePaths(c) })
	if npErr != nil {
		tb.Fatalf("node-path workload: %v\n%s", npErr, c.agentLogs())
	}
	return np
}

func setupNodePaths(c *cluster) (*nodePaths, error) {
	cs, err := kubernetes.NewForConfig(c.Hub.configNoT())
	if err != nil {
		return nil, err
	}
	e := &nodePaths{c: c, cs: cs, ns: "nodepaths", feedFile: filepath.Join(c.dir, "feed.txt"), webIP: c.Agents[1].IP}
	e.internal = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		e.internalHits.Add(1)
		fmt.Fprintln(w, "INTERNAL-SECRET-PAGE")
	}))
	stopInternal := e.internal.Close
	if err := os.WriteFile(e.feedFile, nil, 0o644); err != nil {
		return nil, err
	}
	// Both ports must be free on the node IP (pod proxy) and on 127.0.0.1
	// (port-forward dials the node's localhost, as for host-network pods).
	for _, p := range []*int{&e.httpPort, &e.httpsPort} {
		if *p, err = freePortOn("127.0.0.1"); err != nil {
			return nil, err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	listen := func(port int) string {
		return net.JoinHostPort(e.webIP, strconv.Itoa(port)) + "," + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
	pods := []*corev1.Pod{
		{
			ObjectMeta: metav1.ObjectMeta{Name: "feed"},
			Spec: corev1.PodSpec{NodeName: c.Agents[0].Name, Containers: []corev1.Container{{
				Name: "feed", Image: "none",
				Command: []string{"sh", "-c", `echo feed-ready; exec tail -n0 -F "$FEED"`},
				Env:     []corev1.EnvVar{{Name: "FEED", Value: e.feedFile}},
			}}},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{NodeName: c.Agents[1].Name, Containers: []corev1.Container{{
				Name: "web", Image: "none", Command: []string{self},
				Env: []corev1.EnvVar{
					{Name: "TETHER_E2E_PODSERVER", Value: "1"}, {Name: "POD_NAME", Value: "web"},
					{Name: "PODSERVER_HTTP", Value: listen(e.httpPort)}, {Name: "PODSERVER_HTTPS", Value: listen(e.httpsPort)},
					{Name: "PODSERVER_REDIRECT", Value: e.internal.URL + "/secret"},
				},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: int32(e.httpPort)}, {Name: "https", ContainerPort: int32(e.httpsPort)}},
			}}},
		},
	}
	for _, p := range pods {
		if _, err := cs.CoreV1().Pods(e.ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			stopInternal()
			return nil, err
		}
	}
	_, err = cs.CoreV1().Services(e.ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(int32(e.httpPort))},
			{Name: "https", Port: 443, TargetPort: intstr.FromInt32(int32(e.httpsPort))},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		stopInternal()
		return nil, err
	}
	// No endpoints controller yet: the Endpoints are written by hand.
	node := c.Agents[1].Name
	_, err = cs.CoreV1().Endpoints(e.ns).Create(ctx, &corev1.Endpoints{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Subsets: []corev1.EndpointSubset{{
			Addresses: []corev1.EndpointAddress{{IP: e.webIP, NodeName: &node}},
			Ports:     []corev1.EndpointPort{{Name: "http", Port: int32(e.httpPort)}, {Name: "https", Port: int32(e.httpsPort)}},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		stopInternal()
		return nil, err
	}
	// Running pods, and the web server answering on both addresses.
	deadline := time.Now().Add(readyTimeout)
	var last error
	for ; time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		last = nil
		for _, name := range []string{"feed", "web"} {
			p, err := cs.CoreV1().Pods(e.ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				last = err
			} else if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
				last = fmt.Errorf("pod %s: phase %q, podIP %q", name, p.Status.Phase, p.Status.PodIP)
			}
		}
		if last == nil {
			for _, host := range []string{e.webIP, "127.0.0.1"} {
				if _, err := httpGet(plainClient, "http://"+net.JoinHostPort(host, strconv.Itoa(e.httpPort))+"/"); err != nil {
					last = err
				}
			}
		}
		if last == nil {
			return e, nil
		}
	}
	stopInternal()
	return nil, fmt.Errorf("workload not ready within %s: %v", readyTimeout, last)
}

// runSeq makes object names unique when the shared cluster outlives a test
// (go test -count=N).
var runSeq atomic.Int64

var plainClient = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
	TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // test server with a self-signed certificate
	DisableKeepAlives: true,
}}

func httpGet(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b), nil
}

// appendFeed appends a line to the file pod "feed" prints.
func (e *nodePaths) appendFeed(line string) error {
	f, err := os.OpenFile(e.feedFile, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(line + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// lineStream is a long-running kubectl (logs -f, attach, port-forward,
// proxy) whose stdout+stderr lines are scanned.
type lineStream struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	lines  chan string
	done   chan struct{}
	mu     sync.Mutex
	all    strings.Builder
}

func startLines(t testing.TB, k *kubectl, args ...string) *lineStream {
	t.Helper()
	return startLinesFor(t, kubectlCommandTimeout, k, args...)
}

// startLinesFor is startLines with the process bounded by d.
func startLinesFor(t testing.TB, d time.Duration, k *kubectl, args ...string) *lineStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	cmd := exec.CommandContext(ctx, k.path, args...)
	cmd.Env = k.env
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.WaitDelay = 5 * time.Second
	s := &lineStream{cmd: cmd, cancel: cancel, lines: make(chan string, 1024), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		_ = cmd.Wait()
		pw.Close()
	}()
	go func() {
		defer close(s.done)
		defer close(s.lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			s.mu.Lock()
			s.all.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
			select {
			case s.lines <- sc.Text():
			default: // nobody waits for more; the text is kept in all
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	t.Cleanup(s.stop)
	return s
}

func (s *lineStream) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.all.String()
}

// waitLine returns the first line matching re within d; poke (if not nil)
// is called before the first wait and then every 200ms while waiting.
func (s *lineStream) waitLine(t testing.TB, re *regexp.Regexp, d time.Duration, poke func(i int)) []string {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	i := 0
	if poke != nil {
		poke(i)
	}
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				t.Fatalf("kubectl %v ended before printing a line matching %s:\n%s", s.cmd.Args[1:], re, s.output())
			}
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		case <-tick.C:
			if poke != nil {
				i++
				poke(i)
			}
		case <-deadline.C:
			t.Fatalf("kubectl %v: no line matching %s within %s:\n%s", s.cmd.Args[1:], re, d, s.output())
		}
	}
}

func (s *lineStream) stop() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cancel()
		<-s.done
	}
	s.cancel()
}

// TestNodePaths is issue 6's acceptance: every installed kubectl against a
// hub with two agents, for logs, exec, attach, port-forward, cp and the
// node, pod and service proxies.
func TestNodePaths(t *testing.T) {
	paths := installedKubectls(t)
	e := sharedNodePaths(t)
	for _, p := range paths {
		k := newKubectl(t, p, e.c.Hub)
		t.Run(k.version, func(t *testing.T) {
			t.Parallel()
			nodePathsMatrix(t, k, e)
		})
	}
}

func nodePathsMatrix(t *testing.T, k *kubectl, e *nodePaths) {
	ns := e.ns
	web := "web:" + strconv.Itoa(e.httpPort)
	tag := strings.ReplaceAll(k.version, ".", "-")

	t.Run("logs", func(t *testing.T) {
		marker := "logs-" + tag + "-" + strconv.FormatInt(runSeq.Add(1), 10)
		if err := e.appendFeed(marker); err != nil {
			t.Fatal(err)
		}
		// The line is in the log once the agent has read it: poll.
		deadline := time.Now().Add(30 * time.Second)
		for {
			out := k.ok(t, "logs", "-n", ns, "feed")
			if strings.Contains(out, "feed-ready") && strings.Contains(out, marker) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("kubectl logs never showed %q:\n%s", marker, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if out := k.ok(t, "logs", "-n", ns, "feed", "--tail=1", "--timestamps"); !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\S+ \S`).MatchString(out) {
			t.Errorf("logs --tail=1 --timestamps: %q", out)
		}
	})

	t.Run("logs-f", func(t *testing.T) {
		s := startLines(t, k, "logs", "-f", "-n", ns, "feed", "--tail=1")
		s.waitLine(t, regexp.MustCompile(`.`), 30*time.Second, nil) // the stream is open
		marker := "follow-" + tag + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		if err := e.appendFeed(marker); err != nil {
			t.Fatal(err)
		}
		s.waitLine(t, regexp.MustCompile(regexp.QuoteMeta(marker)), 30*time.Second, nil)
	})

	t.Run("exec-exit-code", func(t *testing.T) {
		_, errOut, err := k.run(t, "", "exec", "-n", ns, "feed", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("exec exit 3: err %v, stderr %s", err, errOut)
		}
		if out := k.ok(t, "exec", "-n", ns, "feed", "--", "sh", "-c", "echo out; echo err >&2"); strings.TrimSpace(out) != "out" {
			t.Errorf("exec stdout %q", out)
		}
	})

	t.Run("exec-stdin", func(t *testing.T) {
		in := "piped stdin for " + k.version + "\nsecond line\n"
		if out := k.okIn(t, in, "exec", "-i", "-n", ns, "feed", "--", "cat"); out != in {
			t.Errorf("exec -i cat = %q, want %q", out, in)
		}
	})

	t.Run("exec-tty", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), kubectlCommandTimeout)
		defer cancel()
		line := fmt.Sprintf("%s exec -it -n %s feed -- sh -c 'tty; echo tty-ok; exit 4'", k.path, ns)
		cmd := exec.CommandContext(ctx, "script", "-qec", line, "/dev/null")
		cmd.Env = k.env
		// script ends the session when its stdin ends: keep it open
		// until the command is done.
		stdinR, stdinW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer stdinW.Close()
		cmd.Stdin = stdinR
		out, err := cmd.CombinedOutput()
		stdinR.Close()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 4 {
			t.Errorf("exec -it exit code: %v, want 4\n%s", err, out)
		}
		if !regexp.MustCompile(`/dev/pts/\d+`).Match(out) || !strings.Contains(string(out), "tty-ok") {
			t.Errorf("exec -it did not run on a terminal:\n%s", out)
		}
	})

	t.Run("attach", func(t *testing.T) {
		s := startLines(t, k, "attach", "-n", ns, "feed")
		marker := "attach-" + tag + "-"
		s.waitLine(t, regexp.MustCompile(regexp.QuoteMeta(marker)), 30*time.Second, func(i int) {
			_ = e.appendFeed(marker + strconv.Itoa(i))
		})
	})

	t.Run("cp", func(t *testing.T) {
		dir := t.TempDir()
		local := filepath.Join(dir, "in.txt")
		content := "copied by kubectl " + k.version + "\n" + strings.Repeat("x", 100000) + "\n"
		if err := os.WriteFile(local, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		inPod := filepath.Join(dir, "pod", "in-pod.txt")
		if err := os.MkdirAll(filepath.Dir(inPod), 0o755); err != nil {
			t.Fatal(err)
		}
		k.ok(t, "cp", local, ns+"/feed:"+inPod)
		got, err := os.ReadFile(inPod) // pods are processes: the pod's file system is the host's
		if err != nil || string(got) != content {
			t.Fatalf("cp to pod: %v, %d bytes, want %d", err, len(got), len(content))
		}
		back := filepath.Join(dir, "back.txt")
		k.ok(t, "cp", ns+"/feed:"+inPod, back)
		if got, err := os.ReadFile(back); err != nil || string(got) != content {
			t.Fatalf("cp from pod: %v, %d bytes, want %d", err, len(got), len(content))
		}
	})

	t.Run("port-forward", func(t *testing.T) {
		s := startLines(t, k, "port-forward", "-n", ns, "pod/web", "--address", "127.0.0.1",
			":"+strconv.Itoa(e.httpPort), ":"+strconv.Itoa(e.httpsPort))
		fwd := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)`)
		local := map[string]string{}
		for len(local) < 2 {
			m := s.waitLine(t, fwd, 30*time.Second, nil)
			local[m[2]] = m[1]
		}
		httpURL := "http://127.0.0.1:" + local[strconv.Itoa(e.httpPort)] + "/"
		if out, err := httpGet(plainClient, httpURL); err != nil || !strings.Contains(out, "hello from web over http") {
			t.Fatalf("GET through port-forward: %q, %v\n%s", out, err, s.output())
		}
		if out, err := httpGet(plainClient, "https://127.0.0.1:"+local[strconv.Itoa(e.httpsPort)]+"/"); err != nil || !strings.Contains(out, "over https") {
			t.Fatalf("GET https through the second forwarded port: %q, %v", out, err)
		}
		const n = 20
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, err := httpGet(plainClient, httpURL+"c"+strconv.Itoa(i))
				if err == nil && !strings.Contains(out, "path /c"+strconv.Itoa(i)) {
					err = fmt.Errorf("connection %d got %q", i, out)
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("proxy", func(t *testing.T) {
		s := startLines(t, k, "proxy", "--port=0", "--address=127.0.0.1")
		m := s.waitLine(t, regexp.MustCompile(`Starting to serve on 127\.0\.0\.1:(\d+)`), 30*time.Second, nil)
		base := "http://127.0.0.1:" + m[1]
		if out, err := httpGet(plainClient, base+"/api/v1/namespaces/"+ns+"/pods/"+web+"/proxy/via-kubectl-proxy"); err != nil || !strings.Contains(out, "hello from web over http path /via-kubectl-proxy") {
			t.Errorf("pod proxy through kubectl proxy: %q, %v", out, err)
		}
		if out, err := httpGet(plainClient, base+"/api/v1/nodes/"+e.c.Agents[0].Name+"/proxy/healthz"); err != nil || out != "ok" {
			t.Errorf("node proxy through kubectl proxy: %q, %v", out, err)
		}
	})

	t.Run("raw-node-proxy", func(t *testing.T) {
		for _, a := range e.c.Agents {
			wantEqual(t, "nodes/"+a.Name+"/proxy/healthz", k.ok(t, "get", "--raw", "/api/v1/nodes/"+a.Name+"/proxy/healthz"), "ok")
		}
	})

	t.Run("raw-pod-proxy", func(t *testing.T) {
		wantContains(t, "pods/web/proxy", k.ok(t, "get", "--raw", "/api/v1/namespaces/"+ns+"/pods/web/proxy/a/b?x=1"), "hello from web over http path /a/b")
		wantContains(t, "pods/web:port/proxy", k.ok(t, "get", "--raw", "/api/v1/namespaces/"+ns+"/pods/"+web+"/proxy/"), "hello from web over http")
		wantContains(t, "pods/https:web:port/proxy", k.ok(t, "get", "--raw", "/api/v1/namespaces/"+ns+"/pods/https:web:"+strconv.Itoa(e.httpsPort)+"/proxy/tls"), "hello from web over https path /tls")
	})

	t.Run("raw-service-proxy", func(t *testing.T) {
		wantContains(t, "services/web/proxy", k.ok(t, "get", "--raw", "/api/v1/namespaces/"+ns+"/services/web:http/proxy/svc"), "hello from web over http path /svc")
		wantContains(t, "services/https:web:https/proxy", k.ok(t, "get", "--raw", "/api/v1/namespaces/"+ns+"/services/https:web:https/proxy/svc"), "hello from web over https path /svc")
	})
}

// TestNodePathsNegative: a forged kubelet, a redirecting backend and a pod
// IP pointing at the hub's loopback are all refused.
func TestNodePathsNegative(t *testing.T) {
	paths := installedKubectls(t)
	e := sharedNodePaths(t)
	k := newKubectl(t, paths[len(paths)-1], e.c.Hub)
	ctx := testContext(t, 2*time.Minute)
	cs := e.cs

	// A fake kubelet with a self-signed certificate on a loopback address
	// of its own, and a Node + Pod pointing at it.
	forgedIP := "127.0.0.9"
	cert, err := selfSignedCert("system:node:forged", net.ParseIP(forgedIP))
	if err != nil {
		t.Fatal(err)
	}
	var forgedHits atomic.Int64
	fake := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		forgedHits.Add(1)
		fmt.Fprintln(w, "forged kubelet log line")
	}))
	if fake.Listener, err = net.Listen("tcp", forgedIP+":0"); err != nil {
		t.Fatal(err)
	}
	fake.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	fake.StartTLS()
	t.Cleanup(fake.Close)
	fakePort := fake.Listener.Addr().(*net.TCPAddr).Port

	// Names are unique per run (go test -count=N reuses the cluster).
	seq := strconv.FormatInt(runSeq.Add(1), 10)
	forged, onForged := "forged-"+seq, "on-forged-"+seq
	node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: forged}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		zero := int64(0)
		_ = cs.CoreV1().Pods(e.ns).Delete(context.Background(), onForged, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		_ = cs.CoreV1().Nodes().Delete(context.Background(), forged, metav1.DeleteOptions{})
	})
	// The hub's node-IPAM controller writes spec.podCIDR concurrently: retry on conflict.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: forgedIP}}
		node.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(fakePort)
		_, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			if n, gerr := cs.CoreV1().Nodes().Get(ctx, forged, metav1.GetOptions{}); gerr == nil {
				node = n
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	pod, err := cs.CoreV1().Pods(e.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: onForged},
		Spec: corev1.PodSpec{NodeName: forged, Containers: []corev1.Container{{
			Name: "c", Image: "none", Command: []string{"true"}, Ports: []corev1.ContainerPort{{ContainerPort: 80}},
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("forged-kubelet", func(t *testing.T) {
		out := k.fails(t, "logs", "-n", e.ns, onForged)
		t.Logf("kubectl logs: %s", out)
		wantContains(t, "kubectl logs from a forged kubelet", out, "certificate", "forged")
		out = k.fails(t, "get", "--raw", "/api/v1/nodes/"+forged+"/proxy/healthz")
		wantContains(t, "nodes/forged/proxy", out, "certificate")
		if n := forgedHits.Load(); n != 0 {
			t.Errorf("the forged kubelet received %d requests; nothing may be sent to it", n)
		}
	})

	t.Run("another-nodes-kubelet-cert", func(t *testing.T) {
		// A genuine serving certificate of n2 (signed by the cluster CA)
		// presented at the forged node's address: wrong node, wrong SANs.
		pair := filepath.Join(e.c.Agents[1].Dir, "pki", "kubelet-server-current.pem")
		stolen, err := tls.LoadX509KeyPair(pair, pair)
		if err != nil {
			t.Fatal(err)
		}
		var hits atomic.Int64
		thief := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			hits.Add(1)
			fmt.Fprintln(w, "stolen-cert kubelet")
		}))
		if thief.Listener, err = net.Listen("tcp", forgedIP+":0"); err != nil {
			t.Fatal(err)
		}
		thief.TLS = &tls.Config{Certificates: []tls.Certificate{stolen}}
		thief.StartTLS()
		defer thief.Close()
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			n, err := cs.CoreV1().Nodes().Get(ctx, forged, metav1.GetOptions{})
			if err != nil {
				return err
			}
			n.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(thief.Listener.Addr().(*net.TCPAddr).Port)
			_, err = cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		out := k.fails(t, "logs", "-n", e.ns, onForged)
		t.Logf("kubectl logs: %s", out)
		wantContains(t, "kubectl logs from a kubelet with n2's certificate", out, "certificate")
		if hits.Load() != 0 {
			t.Errorf("the kubelet with another node's certificate received %d requests", hits.Load())
		}
	})

	t.Run("redirect-not-followed", func(t *testing.T) {
		before := e.internalHits.Load()
		for _, target := range []string{"pods/web:" + strconv.Itoa(e.httpPort), "services/web:http"} {
			out := k.fails(t, "get", "--raw", "/api/v1/namespaces/"+e.ns+"/"+target+"/proxy/redirect")
			wantContains(t, target+" redirect", out, "redirect")
			if strings.Contains(out, "INTERNAL-SECRET-PAGE") {
				t.Errorf("%s: the internal page leaked:\n%s", target, out)
			}
		}
		// A client that does not follow redirects itself sees the hub's
		// refusal, never the internal page.
		hc := mustHTTPClient(t, e.c.Hub.Config(t))
		hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		resp, err := hc.Get(e.c.Hub.URL() + "/api/v1/namespaces/" + e.ns + "/pods/web:" + strconv.Itoa(e.httpPort) + "/proxy/redirect")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode < 300 || resp.StatusCode == http.StatusOK || strings.Contains(string(body), "INTERNAL-SECRET-PAGE") {
			t.Errorf("redirecting backend: %s %q", resp.Status, body)
		}
		if n := e.internalHits.Load() - before; n != 0 {
			t.Errorf("the internal URL was fetched %d times", n)
		}
	})

	t.Run("pod-ip-loopback", func(t *testing.T) {
		pod.Status.Phase = corev1.PodRunning
		pod.Status.PodIP = "127.0.0.1" // the hub's own address, not the node's
		pod.Status.PodIPs = []corev1.PodIP{{IP: "127.0.0.1"}}
		if _, err := cs.CoreV1().Pods(e.ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		out := k.fails(t, "get", "--raw", "/api/v1/namespaces/"+e.ns+"/pods/"+onForged+":"+strconv.Itoa(e.c.Hub.Port)+"/proxy/version")
		wantContains(t, "pod proxy to 127.0.0.1", out, "BadRequest", "127.0.0.1")
		hc := mustHTTPClient(t, e.c.Hub.Config(t))
		resp, err := hc.Get(e.c.Hub.URL() + "/api/v1/namespaces/" + e.ns + "/pods/" + onForged + ":" + strconv.Itoa(e.c.Hub.Port) + "/proxy/version")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("pod proxy to 127.0.0.1: %s, want 400", resp.Status)
		}
	})
}

// TestKubeletAuthz: a user allowed only pods/log reads logs but cannot
// exec; the kubelet port itself serves only the hub.
func TestKubeletAuthz(t *testing.T) {
	paths := installedKubectls(t)
	e := sharedNodePaths(t)
	ctx := testContext(t, 2*time.Minute)
	pkiDir := filepath.Join(e.c.Hub.Dir, "pki")
	caPEM, err := os.ReadFile(filepath.Join(pkiDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := os.ReadFile(filepath.Join(pkiDir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(caPEM, caKey)
	if err != nil {
		t.Fatal(err)
	}
	user := "log-reader-" + strconv.FormatInt(runSeq.Add(1), 10) // unique per run
	certPEM, keyPEM, err := ca.Issue(pki.CertSpec{CommonName: user, Organization: []string{"e2e"}, Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(t.TempDir(), "log-reader.kubeconfig")
	if err := pki.WriteKubeconfig(kc, pki.Kubeconfig{Server: e.c.Hub.URL(), CAPEM: caPEM, UserName: user, CertPEM: certPEM, KeyPEM: keyPEM}); err != nil {
		t.Fatal(err)
	}
	rbac := e.cs.RbacV1()
	if _, err := rbac.Roles(e.ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}, // kubectl reads the pod first
			{APIGroups: []string{""}, Resources: []string{"pods/log"}, Verbs: []string{"get"}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.RoleBindings(e.ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: user},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	for _, p := range []string{paths[0], paths[len(paths)-1]} {
		k := newKubectl(t, p, e.c.Hub)
		k.env = append(k.env, "KUBECONFIG="+kc) // the last one wins
		t.Run("user-"+k.version, func(t *testing.T) {
			// RBAC caches may lag the binding a little: poll.
			deadline := time.Now().Add(30 * time.Second)
			for {
				out, errOut, err := k.run(t, "", "logs", "-n", e.ns, "feed", "--tail=5")
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("log-reader cannot read logs: %v\n%s%s", err, out, errOut)
				}
				time.Sleep(200 * time.Millisecond)
			}
			out := k.fails(t, "exec", "-n", e.ns, "feed", "--", "true")
			wantContains(t, "exec as log-reader", out, "forbidden", "pods/exec")
			out = k.fails(t, "get", "--raw", "/api/v1/nodes/"+e.c.Agents[0].Name+"/proxy/healthz")
			wantContains(t, "nodes/proxy as log-reader", out, "forbidden")
		})
	}

	t.Run("kubelet-port", func(t *testing.T) {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		a, other := e.c.Agents[0], e.c.Agents[1]
		hubCert, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, "kubelet-client.crt"), filepath.Join(pkiDir, "kubelet-client.key"))
		if err != nil {
			t.Fatal(err)
		}
		otherPair := filepath.Join(other.Dir, "pki", "kubelet-client-current.pem")
		otherCert, err := tls.LoadX509KeyPair(otherPair, otherPair)
		if err != nil {
			t.Fatal(err)
		}
		userCert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		base := "https://" + net.JoinHostPort(a.IP, strconv.Itoa(a.KubeletPort))
		for _, tc := range []struct {
			name  string
			certs []tls.Certificate
			path  string
			want  int
		}{
			{"no client certificate", nil, "/pods", http.StatusUnauthorized},
			{"no client certificate, logs", nil, "/containerLogs/" + e.ns + "/feed/feed", http.StatusUnauthorized},
			{"another node's certificate", []tls.Certificate{otherCert}, "/pods", http.StatusForbidden},
			{"another node's certificate, exec", []tls.Certificate{otherCert}, "/run/" + e.ns + "/feed/feed?cmd=true", http.StatusForbidden},
			{"log-reader user", []tls.Certificate{userCert}, "/containerLogs/" + e.ns + "/feed/feed", http.StatusForbidden},
			{"the hub's kubelet client", []tls.Certificate{hubCert}, "/pods", http.StatusOK},
			{"the hub's kubelet client, logs", []tls.Certificate{hubCert}, "/containerLogs/" + e.ns + "/feed/feed?tailLines=1", http.StatusOK},
		} {
			c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: tc.certs, MinVersion: tls.VersionTLS12},
			}}
			resp, err := c.Get(base + tc.path)
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%s: GET %s = %s %q, want %d", tc.name, tc.path, resp.Status, body, tc.want)
			}
			c.CloseIdleConnections()
		}
	})
}

// TestNodePathsNoLingeringConns: proxied requests must not leave idle
// backend connections (and their goroutines) behind in the hub: each
// request's transport is used once, so a kept-alive connection could never
// be reused and would only linger until its idle timeout.
func TestNodePathsNoLingeringConns(t *testing.T) {
	e := sharedNodePaths(t)
	hc, err := rest.HTTPClientFor(e.c.Hub.Config(t))
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	paths := []string{
		"/api/v1/namespaces/" + e.ns + "/pods/web:" + strconv.Itoa(e.httpPort) + "/proxy/",
		"/api/v1/nodes/" + e.c.Agents[0].Name + "/proxy/healthz",
		"/api/v1/namespaces/" + e.ns + "/pods/feed/log?tailLines=1",
	}
	get := func(p string) {
		t.Helper()
		if _, err := httpGet(hc, e.c.Hub.URL()+p); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range paths {
		get(p) // warm up lazily started machinery
	}
	before := hubMetrics(t, hc, e.c.Hub.URL())["go_goroutines"]
	for i := range n {
		get(paths[i%len(paths)])
	}
	// Connections closed by the hub end their goroutines promptly; poll.
	var after float64
	deadline := time.Now().Add(10 * time.Second)
	for {
		after = hubMetrics(t, hc, e.c.Hub.URL())["go_goroutines"]
		if after-before < n/2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if after-before >= n/2 {
		t.Errorf("hub goroutines %v → %v after %d proxied requests: backend connections linger", before, after, n)
	}
}

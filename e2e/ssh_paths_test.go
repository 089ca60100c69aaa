package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// sshWorkload is what the SSH egress tests drive through the tunnels: on
// one node, pod "feed" prints what the test appends to a host file and pod
// "web" is the pod server (HTTP and HTTPS); Service "web" points at it.
type sshWorkload struct {
	ns, node, podIP     string
	feedFile            string
	httpPort, httpsPort int
}

// startSSHWorkload creates the workload on node (address nodeIP; both pod
// server ports must be free there and on 127.0.0.1) and waits until it runs.
func startSSHWorkload(t testing.TB, cs kubernetes.Interface, node, nodeIP string, httpPort, httpsPort int) *sshWorkload {
	t.Helper()
	w := &sshWorkload{ns: "ssh-" + strconv.FormatInt(runSeq.Add(1), 10), node: node,
		feedFile: filepath.Join(t.TempDir(), "feed.txt"), httpPort: httpPort, httpsPort: httpsPort}
	if err := os.WriteFile(w.feedFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	listen := func(port int) string {
		hosts := []string{nodeIP}
		if nodeIP != "127.0.0.1" {
			hosts = append(hosts, "127.0.0.1") // port-forward dials the node's localhost
		}
		var out []string
		for _, h := range hosts {
			out = append(out, net.JoinHostPort(h, strconv.Itoa(port)))
		}
		return strings.Join(out, ",")
	}
	ctx := testContext(t, 2*time.Minute)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: w.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := []*corev1.Pod{
		{
			ObjectMeta: metav1.ObjectMeta{Name: "feed"},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{
				Name: "feed", Image: "none",
				Command: []string{"sh", "-c", `echo feed-ready; exec tail -n0 -F "$FEED"`},
				Env:     []corev1.EnvVar{{Name: "FEED", Value: w.feedFile}},
			}}},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{
				Name: "web", Image: "none", Command: []string{self},
				Env: []corev1.EnvVar{
					{Name: "TETHER_E2E_PODSERVER", Value: "1"}, {Name: "POD_NAME", Value: "web"},
					{Name: "PODSERVER_HTTP", Value: listen(httpPort)}, {Name: "PODSERVER_HTTPS", Value: listen(httpsPort)},
				},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: int32(httpPort)}, {Name: "https", ContainerPort: int32(httpsPort)}},
			}}},
		},
	}
	for _, p := range pods {
		if _, err := cs.CoreV1().Pods(w.ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cs.CoreV1().Services(w.ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(int32(httpPort))},
			{Name: "https", Port: 443, TargetPort: intstr.FromInt32(int32(httpsPort))},
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(readyTimeout)
	for {
		p, err := cs.CoreV1().Pods(w.ns).Get(ctx, "web", metav1.GetOptions{})
		f, ferr := cs.CoreV1().Pods(w.ns).Get(ctx, "feed", metav1.GetOptions{})
		if err == nil && ferr == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && f.Status.Phase == corev1.PodRunning {
			if _, err := httpGet(plainClient, "http://"+net.JoinHostPort(p.Status.PodIP, strconv.Itoa(httpPort))+"/"); err == nil {
				w.podIP = p.Status.PodIP
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("workload on %s not running within %s: %v %v", node, readyTimeout, err, ferr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// No endpoints controller: the Endpoints are written by hand.
	if _, err := cs.CoreV1().Endpoints(w.ns).Create(ctx, &corev1.Endpoints{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Subsets: []corev1.EndpointSubset{{
			Addresses: []corev1.EndpointAddress{{IP: w.podIP, NodeName: &node}},
			Ports:     []corev1.EndpointPort{{Name: "http", Port: int32(httpPort)}, {Name: "https", Port: int32(httpsPort)}},
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *sshWorkload) appendFeed(t testing.TB, line string) {
	f, err := os.OpenFile(w.feedFile, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	if _, err := fmt.Fprintln(f, line); err != nil {
		t.Error(err)
	}
}

// kubeletPaths checks the paths that reach the node's kubelet port: logs,
// exec, attach, port-forward and the node proxy.
func (w *sshWorkload) kubeletPaths(t *testing.T, k *kubectl) {
	ns := w.ns
	t.Run("logs", func(t *testing.T) {
		marker := "logs-" + strconv.FormatInt(runSeq.Add(1), 10)
		w.appendFeed(t, marker)
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
	})
	t.Run("exec", func(t *testing.T) {
		stdout, _, err := k.run(t, "", "exec", "-n", ns, "feed", "--", "sh", "-c", "echo hi; exit 3")
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 || strings.TrimSpace(stdout) != "hi" {
			t.Fatalf("exec: %q %v", stdout, err)
		}
		in := "through the ssh tunnel\n"
		if out := k.okIn(t, in, "exec", "-i", "-n", ns, "feed", "--", "cat"); out != in {
			t.Fatalf("exec -i cat = %q", out)
		}
	})
	t.Run("attach", func(t *testing.T) {
		s := startLines(t, k, "attach", "-n", ns, "feed")
		marker := "attach-" + strconv.FormatInt(runSeq.Add(1), 10) + "-"
		s.waitLine(t, regexp.MustCompile(regexp.QuoteMeta(marker)), 30*time.Second, func(i int) {
			w.appendFeed(t, marker+strconv.Itoa(i))
		})
	})
	t.Run("port-forward", func(t *testing.T) {
		s := startLines(t, k, "port-forward", "-n", ns, "pod/web", "--address", "127.0.0.1", ":"+strconv.Itoa(w.httpPort))
		m := s.waitLine(t, regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> \d+`), 30*time.Second, nil)
		for i := range 3 {
			path := "/pf" + strconv.Itoa(i)
			if out, err := httpGet(plainClient, "http://127.0.0.1:"+m[1]+path); err != nil || !strings.Contains(out, "hello from web over http path "+path) {
				t.Fatalf("GET through port-forward: %q, %v\n%s", out, err, s.output())
			}
		}
	})
	t.Run("node-proxy", func(t *testing.T) {
		wantEqual(t, "nodes/"+w.node+"/proxy/healthz", k.ok(t, "get", "--raw", "/api/v1/nodes/"+w.node+"/proxy/healthz"), "ok")
	})
}

// podProxy checks the pod and service proxies to the HTTP port: through
// the tunnel when allowed, else refused by the node's SSH server with a
// message that says so (refusal, e.g. "administratively prohibited").
func (w *sshWorkload) podProxy(t *testing.T, k *kubectl, allowed bool, refusal string) {
	pod := "/api/v1/namespaces/" + w.ns + "/pods/web:" + strconv.Itoa(w.httpPort) + "/proxy/p"
	svc := "/api/v1/namespaces/" + w.ns + "/services/web:http/proxy/s"
	if allowed {
		wantContains(t, "pod proxy", k.ok(t, "get", "--raw", pod), "hello from web over http path /p")
		wantContains(t, "service proxy", k.ok(t, "get", "--raw", svc), "hello from web over http path /s")
		return
	}
	msg := k.fails(t, "get", "--raw", pod)
	wantContains(t, "pod proxy refused", msg, "via ssh", refusal)
	t.Logf("pod proxy refused: %s", strings.TrimSpace(msg))
	wantContains(t, "service proxy refused", k.fails(t, "get", "--raw", svc), "via ssh", refusal)
}

// inPodCIDR reports whether ip is inside one of node's pod CIDRs.
func inPodCIDR(node *corev1.Node, ip string) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	cidrs := append([]string{node.Spec.PodCIDR}, node.Spec.PodCIDRs...)
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil && p.Contains(a) {
			return true
		}
	}
	return false
}

// waitFor polls f until it returns nil or d passes.
func waitFor(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s within %s: %v", what, d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

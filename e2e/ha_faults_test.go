package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ackedWriter creates ConfigMaps <prefix><n> in "default" at a steady
// rate (a new create every 50ms, whether or not earlier ones have
// answered, at most 64 in flight) and records which creates were
// acknowledged and when: the writes that must survive an etcd crash. A
// create stuck on a dead etcd leader does not hold back the next ones, so
// the first acknowledgement after a fault measures when writes work again.
type ackedWriter struct {
	prefix string
	stopc  chan struct{}
	done   chan struct{}

	mu     sync.Mutex
	acked  []ackedWrite
	failed []string
	last   error
}

type ackedWrite struct {
	name       string
	start, end time.Time
}

// maxWrites bounds a writer (about 40 minutes at one create per 50ms).
const maxWrites = 50000

func startWriter(t testing.TB, c *haCluster, prefix string) *ackedWriter {
	t.Helper()
	cfg := c.config(c.lbURL)
	cfg.Timeout = 20 * time.Second
	cfg.QPS, cfg.Burst = -1, 0
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w := &ackedWriter{prefix: prefix, stopc: make(chan struct{}), done: make(chan struct{})}
	label := strings.TrimSuffix(prefix, "-")
	write := func(n int) {
		name := prefix + strconv.Itoa(n)
		cm := configMap(name, map[string]string{"n": strconv.Itoa(n)})
		cm.Labels = map[string]string{"writer": label}
		start := time.Now()
		_, err := cs.CoreV1().ConfigMaps("default").Create(context.Background(), cm, metav1.CreateOptions{})
		end := time.Now()
		w.mu.Lock()
		defer w.mu.Unlock()
		if err == nil {
			w.acked = append(w.acked, ackedWrite{name, start, end})
		} else {
			w.failed = append(w.failed, name)
			w.last = err
		}
	}
	go func() {
		defer close(w.done)
		var wg sync.WaitGroup
		defer wg.Wait()
		inflight := make(chan struct{}, 64)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for n := range maxWrites {
			select {
			case <-w.stopc:
				return
			case <-tick.C:
			}
			select {
			case inflight <- struct{}{}:
			default:
				continue // 64 stuck creates: skip this tick
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-inflight }()
				write(n)
			}()
		}
	}()
	t.Cleanup(w.stop)
	return w
}

func (w *ackedWriter) stop() {
	select {
	case <-w.stopc:
	default:
		close(w.stopc)
	}
	<-w.done
}

// waitAcks waits until n writes begun at or after since are acknowledged
// and returns the earliest of their acknowledgement times.
func (w *ackedWriter) waitAcks(t testing.TB, since time.Time, n int, d time.Duration) time.Time {
	t.Helper()
	var first time.Time
	eventually(t, d, fmt.Sprintf("%d acknowledged writes begun after %s", n, since.Format(time.StampMilli)), func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		got := 0
		for _, a := range w.acked {
			if !a.start.Before(since) {
				if got == 0 || a.end.Before(first) {
					first = a.end
				}
				got++
			}
		}
		if got < n {
			return fmt.Errorf("%d so far; %d failed writes, last error: %v", got, len(w.failed), w.last)
		}
		return nil
	})
	return first
}

func (w *ackedWriter) ackedNames() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var names []string
	for _, a := range w.acked {
		names = append(names, a.name)
	}
	return names
}

// crashEtcdLeader SIGKILLs the etcd leader while w writes and returns its
// index and the time from the kill to the acknowledgement of the first
// write begun after the kill.
func (c *haCluster) crashEtcdLeader(t testing.TB, w *ackedWriter) (int, time.Duration) {
	t.Helper()
	leader := c.etcdLeader(t)
	w.waitAcks(t, time.Now(), 3, 30*time.Second) // writes are flowing
	killed := time.Now()
	c.killMember(leader)
	first := w.waitAcks(t, killed, 1, 30*time.Second)
	return leader, first.Sub(killed)
}

// waitCaughtUp waits until member i holds every key in names
// (serializable reads, answered by that member alone).
func (c *haCluster) waitCaughtUp(t testing.TB, i int, names []string) {
	t.Helper()
	u := c.etcd.ClientURLs()[i]
	cli := c.etcdClient(t, []string{u})
	defer cli.Close()
	eventually(t, 60*time.Second, fmt.Sprintf("etcd member %d holds all %d acknowledged writes", i+1, len(names)), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, "/registry/configmaps/default/", clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithSerializable())
		if err != nil {
			return err
		}
		have := map[string]bool{}
		for _, kv := range resp.Kvs {
			have[strings.TrimPrefix(string(kv.Key), "/registry/configmaps/default/")] = true
		}
		var missing []string
		for _, n := range names {
			if !have[n] {
				missing = append(missing, n)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d missing, e.g. %s", len(missing), missing[0])
		}
		return nil
	})
}

// etcdLeaderCrashTest: SIGKILL the etcd leader while writes go on; writes
// continue, the member restarts from its data dir, catches up, and every
// acknowledged write is there (on the restarted member and through the API).
func (c *haCluster) etcdLeaderCrashTest(t *testing.T, cs kubernetes.Interface) {
	w := startWriter(t, c, "ha-crash-")
	leader, failover := c.crashEtcdLeader(t, w)
	t.Logf("etcd leader (member %d) SIGKILLed: first write begun after the kill acknowledged %s after it", leader+1, failover.Round(time.Millisecond))
	w.waitAcks(t, time.Now(), 10, 30*time.Second) // writes keep going on two members
	restarted := time.Now()
	c.startMember(t, leader)
	c.waitMemberReady(t, leader)
	rejoined := time.Since(restarted)
	w.waitAcks(t, time.Now(), 10, 30*time.Second) // and while it rejoins
	w.stop()
	names := w.ackedNames()
	c.waitCaughtUp(t, leader, names)
	t.Logf("member %d restarted from its data dir: serving after %s; holds all %d acknowledged writes (%d creates failed during the fault, the last with: %v)",
		leader+1, rejoined.Round(time.Millisecond), len(names), len(w.failed), w.last)
	list, err := cs.CoreV1().ConfigMaps("default").List(context.Background(), metav1.ListOptions{LabelSelector: "writer=" + strings.TrimSuffix(w.prefix, "-")})
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, cm := range list.Items {
		have[cm.Name] = true
	}
	for _, n := range names {
		if !have[n] {
			t.Errorf("acknowledged write %s lost", n)
		}
	}
	applied := 0
	for _, n := range w.failed {
		if have[n] {
			applied++
		}
	}
	t.Logf("%d of the %d failed creates were applied all the same (an error is not a no)", applied, len(w.failed))
}

// seqLine is a `kubectl logs --timestamps` line of the ha-seq pod.
var seqLine = regexp.MustCompile(`^(\d{4}-\d\d-\d\dT\S+) seq (\d+)$`)

// seqLines returns the sequence numbers in out and the timestamp of the
// last one.
func seqLines(out string) (nums []int, lastTS string) {
	for _, l := range strings.Split(out, "\n") {
		if m := seqLine.FindStringSubmatch(l); m != nil {
			n, _ := strconv.Atoi(m[2])
			nums = append(nums, n)
			lastTS = m[1]
		}
	}
	return nums, lastTS
}

// waitSeq reads s until a sequence number ≥ want and returns when it came.
func waitSeq(t testing.TB, s *lineStream, want int, d time.Duration) time.Time {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				t.Fatalf("kubectl %v ended before seq %d:\n%s", s.cmd.Args[1:], want, s.output())
			}
			if m := seqLine.FindStringSubmatch(l); m != nil {
				if n, _ := strconv.Atoi(m[2]); n >= want {
					return time.Now()
				}
			}
		case <-deadline.C:
			t.Fatalf("kubectl %v: no seq %d within %s:\n%s", s.cmd.Args[1:], want, d, s.output())
		}
	}
}

// logsFollowFailoverTest: `kubectl logs -f` through the load balancer; the
// replica carrying the stream is SIGKILLed; kubectl's stream ends, and
// `kubectl logs -f --since-time=<last timestamp>` through the load balancer
// continues the sequence without a gap on a surviving replica.
func (c *haCluster) logsFollowFailoverTest(t *testing.T, cs kubernetes.Interface, kubectlBin string) {
	ctx := context.Background()
	const pod = "ha-seq"
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: pod}, Spec: corev1.PodSpec{NodeName: c.agents[0].Name, Containers: []corev1.Container{{
		Name: "seq", Image: "none",
		// About ten lines a second, for at most an hour.
		Command: []string{"sh", "-c", `i=0; while [ $i -lt 36000 ]; do echo "seq $i"; i=$((i+1)); sleep 0.1; done`},
	}}}}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.CoreV1().Pods("default").Delete(context.Background(), pod, metav1.DeleteOptions{}) })
	eventually(t, readyTimeout, "pod "+pod+" running", func() error {
		p, err := cs.CoreV1().Pods("default").Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("phase %q", p.Status.Phase)
		}
		return nil
	})
	k := &kubectl{path: kubectlBin, version: "ha", env: append(os.Environ(), "KUBECONFIG="+c.kubeconfig, "HOME="+t.TempDir())}

	// The stream's replica: the backend that gained a connection when
	// kubectl started (nothing else dials the load balancer meanwhile).
	before := c.lb.Active()
	s1 := startLinesFor(t, 5*time.Minute, k, "logs", "-f", "--timestamps", pod)
	waitSeq(t, s1, 10, 60*time.Second)
	after := c.lb.Active()
	var gained []string
	for b, n := range after {
		if n > before[b] {
			gained = append(gained, b)
		}
	}
	if len(gained) != 1 {
		t.Fatalf("cannot tell the stream's replica: connections per backend %v before kubectl, %v while it streams", before, after)
	}
	victim := slices.IndexFunc(c.hubs, func(h *haHub) bool { return net.JoinHostPort(h.ip, strconv.Itoa(c.port)) == gained[0] })
	if victim < 0 {
		t.Fatalf("backend %s is none of the hubs", gained[0])
	}

	killed := time.Now()
	c.killHub(victim)
	select {
	case <-s1.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("kubectl logs -f still running 60s after its replica (hub %d) died:\n%s", victim+1, s1.output())
	}
	ended := time.Since(killed)
	nums1, lastTS := seqLines(s1.output())
	if len(nums1) == 0 {
		t.Fatalf("no sequence lines:\n%s", s1.output())
	}
	var tail string
	if ls := strings.Split(strings.TrimSpace(s1.output()), "\n"); len(ls) > 0 {
		tail = ls[len(ls)-1]
	}
	t.Logf("hub %d (carrying logs -f) SIGKILLed: kubectl ended %s later, %s; last output line %q", victim+1, ended.Round(time.Millisecond), s1.cmd.ProcessState, tail)

	rerun := time.Now()
	last := nums1[len(nums1)-1]
	s2 := startLinesFor(t, 5*time.Minute, k, "logs", "-f", "--timestamps", "--since-time="+lastTS, pod)
	resumed := waitSeq(t, s2, last+1, 30*time.Second)
	t.Logf("re-run with --since-time=%s: next line (seq %d) %s after the re-run, %s after the kill; connections per backend %v",
		lastTS, last+1, resumed.Sub(rerun).Round(time.Millisecond), resumed.Sub(killed).Round(time.Millisecond), c.lb.Active())
	waitSeq(t, s2, last+20, 30*time.Second) // the stream follows new lines
	s2.stop()
	nums2, _ := seqLines(s2.output())
	seen := map[int]bool{}
	for _, n := range append(nums1, nums2...) {
		seen[n] = true
	}
	top := slices.Max(nums2)
	for n := range top + 1 {
		if !seen[n] {
			t.Errorf("seq %d missing: first stream ended at %d, second began at %d", n, last, nums2[0])
		}
	}
	if nums2[0] > last {
		t.Errorf("second stream began at seq %d, after the last seen %d", nums2[0], last)
	}

	c.startHub(t, victim)
	c.waitHub(t, victim)
	c.wantEndpoints(t, cs, 40*time.Second, 0, 1, 2)
}

// upEtcdPids reads the pids of the `tether up` etcd members from their
// ready files (present while a member serves).
func upEtcdPids(dir string) []int {
	var pids []int
	for i := 1; i <= 9; i++ {
		b, err := os.ReadFile(filepath.Join(dir, "etcd", fmt.Sprintf("etcd-%d.ready", i)))
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// upEtcdKill is what a user can try on `tether up --etcd-members 3`:
// `kill -9` one member's process; writes go on and tether up restarts it.
func upEtcdKill(t *testing.T, dir string, cs kubernetes.Interface) {
	t.Helper()
	ready := filepath.Join(dir, "etcd", "etcd-1.ready")
	b, err := os.ReadFile(ready)
	if err != nil {
		t.Fatalf("etcd member 1 ready file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", ready, err)
	}
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "a write after kill -9 of etcd member 1", func() error {
		_, err := cs.CoreV1().ConfigMaps("default").Create(context.Background(), configMap("up-after-etcd-kill", nil), metav1.CreateOptions{})
		if err != nil && strings.Contains(err.Error(), "already exists") {
			return nil
		}
		return err
	})
	wrote := time.Since(killed)
	eventually(t, 60*time.Second, "etcd member 1 restarted by tether up", func() error {
		b, err := os.ReadFile(ready)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(b)) == strconv.Itoa(pid) {
			return errors.New("still the killed pid's ready file")
		}
		return nil
	})
	t.Logf("kill -9 of etcd member 1 (pid %d): a write acknowledged %s later; member restarted and serving %s after the kill",
		pid, wrote.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
}

package hub

// Performance of the hub's API against its own store, in one run, reported
// as ratios to the baseline (raw etcd) measured alongside:
//
//	go test -run XXX -bench . -benchtime 2000x ./internal/hub
//
// BenchmarkConfigMaps: create / get / list latency vs raw etcd put / get / range.
// BenchmarkWatchers:   write-to-event delay with 100 and 1000 watchers.
// BenchmarkPodsRSS:    process RSS with 10k pods stored (hub + etcd + test client).

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	restclient "k8s.io/client-go/rest"
)

func benchHub(b *testing.B) (*testHub, kubernetes.Interface, *clientv3.Client) {
	b.Helper()
	h := startHubTB(b, nil)
	cfg := restclient.CopyConfig(h.Admin)
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.QPS, cfg.Burst = -1, -1
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	etcd, err := clientv3.New(clientv3.Config{Endpoints: h.etcdEndpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { etcd.Close() })
	return h, c, etcd
}

func p(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[int(float64(len(d)-1)*q)]
}

func BenchmarkConfigMaps(b *testing.B) {
	_, c, etcd := benchHub(b)
	ctx := context.Background()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	value := strings.Repeat("x", 200)
	var rawPut, hubCreate, rawGet, hubGet []time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := "cm-" + strconv.Itoa(i)
		t0 := time.Now()
		if _, err := etcd.Put(ctx, "/bench/raw/"+name, value); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := c.CoreV1().ConfigMaps("bench").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"k": value}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if _, err := etcd.Get(ctx, "/bench/raw/"+name); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		if _, err := c.CoreV1().ConfigMaps("bench").Get(ctx, name, metav1.GetOptions{}); err != nil {
			b.Fatal(err)
		}
		t4 := time.Now()
		rawPut, hubCreate = append(rawPut, t1.Sub(t0)), append(hubCreate, t2.Sub(t1))
		rawGet, hubGet = append(rawGet, t3.Sub(t2)), append(hubGet, t4.Sub(t3))
	}
	b.StopTimer()
	t0 := time.Now()
	if _, err := etcd.Get(ctx, "/bench/raw/", clientv3.WithPrefix()); err != nil {
		b.Fatal(err)
	}
	rawRange := time.Since(t0)
	t1 := time.Now()
	list, err := c.CoreV1().ConfigMaps("bench").List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		b.Fatal(err)
	}
	hubList := time.Since(t1)
	t2 := time.Now()
	if _, err := c.CoreV1().ConfigMaps("bench").List(ctx, metav1.ListOptions{}); err != nil {
		b.Fatal(err)
	}
	hubListQuorum := time.Since(t2)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(p(rawPut, .5)), "etcd-put-p50-ms")
	b.ReportMetric(ms(p(hubCreate, .5)), "hub-create-p50-ms")
	b.ReportMetric(float64(p(hubCreate, .5))/float64(p(rawPut, .5)), "create/put")
	b.ReportMetric(ms(p(rawGet, .5)), "etcd-get-p50-ms")
	b.ReportMetric(ms(p(hubGet, .5)), "hub-get-p50-ms")
	b.ReportMetric(float64(p(hubGet, .5))/float64(p(rawGet, .5)), "get/get")
	b.ReportMetric(float64(len(list.Items)), "objects")
	b.ReportMetric(ms(rawRange), "etcd-range-ms")
	b.ReportMetric(ms(hubList), "hub-list-cache-ms")
	b.ReportMetric(ms(hubListQuorum), "hub-list-quorum-ms")
	b.ReportMetric(float64(hubListQuorum)/float64(rawRange), "list/range")
}

func BenchmarkWatchers(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("watchers=%d", n), func(b *testing.B) {
			_, c, _ := benchHub(b)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "w"}}, metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			var mu sync.Mutex
			var delays []time.Duration
			sent := map[string]time.Time{}
			var wg sync.WaitGroup
			got := make(chan struct{}, n*4)
			for i := 0; i < n; i++ {
				w, err := c.CoreV1().ConfigMaps("w").Watch(ctx, metav1.ListOptions{})
				if err != nil {
					b.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer w.Stop()
					for ev := range w.ResultChan() {
						if ev.Type != watch.Added {
							continue
						}
						name := ev.Object.(*corev1.ConfigMap).Name
						if !strings.HasPrefix(name, "cm-") {
							continue // e.g. kube-root-ca.crt from the controller
						}
						now := time.Now()
						mu.Lock()
						delays = append(delays, now.Sub(sent[name]))
						mu.Unlock()
						got <- struct{}{}
					}
				}()
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				name := "cm-" + strconv.Itoa(i)
				mu.Lock()
				sent[name] = time.Now()
				mu.Unlock()
				if _, err := c.CoreV1().ConfigMaps("w").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
					b.Fatal(err)
				}
				deadline := time.After(30 * time.Second)
				for j := 0; j < n; j++ {
					select {
					case <-got:
					case <-deadline:
						b.Fatalf("event %d reached only %d of %d watchers", i, j, n)
					}
				}
			}
			b.StopTimer()
			cancel()
			wg.Wait()
			mu.Lock()
			defer mu.Unlock()
			b.ReportMetric(float64(p(delays, .5).Microseconds())/1000, "event-p50-ms")
			b.ReportMetric(float64(p(delays, .99).Microseconds())/1000, "event-p99-ms")
		})
	}
}

func rssMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func BenchmarkPodsRSS(b *testing.B) {
	_, c, _ := benchHub(b)
	ctx := context.Background()
	before := rssMB()
	const pods = 10000
	var wg sync.WaitGroup
	work := make(chan int)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p-" + strconv.Itoa(i), Labels: map[string]string{"app": "bench"}},
					Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox:1", Command: []string{"sleep", "1"}}}}}
				if _, err := c.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	start := time.Now()
	for i := 0; i < pods; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	elapsed := time.Since(start)
	b.ReportMetric(float64(pods)/elapsed.Seconds(), "creates/s")
	b.ReportMetric(rssMB(), "rss-MB-10k-pods")
	b.ReportMetric(before, "rss-MB-empty")
}

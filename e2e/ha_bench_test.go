package e2e

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// BenchmarkHAThroughput measures ConfigMap creates/s through one hub
// replica and through the load balancer in front of three, on the same
// 3-member etcd cluster, in the same run; the ratio is the metric.
//
//	go test ./e2e -run '^$' -bench HAThroughput -benchtime 3x
func BenchmarkHAThroughput(b *testing.B) {
	c := startHACluster(b, 0)
	const creates, workers = 600, 24
	run := func(server, prefix string) float64 {
		cfg := c.config(server)
		cfg.QPS, cfg.Burst = -1, 0 // no client-side rate limit
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			b.Fatal(err)
		}
		var next atomic.Int64
		var failed atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1)
					if i > creates {
						return
					}
					if _, err := cs.CoreV1().ConfigMaps("default").Create(context.Background(),
						configMap(prefix+strconv.FormatInt(i, 10), map[string]string{"k": "v"}), metav1.CreateOptions{}); err != nil {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		if n := failed.Load(); n > 0 {
			b.Fatalf("%d of %d creates failed", n, creates)
		}
		return creates / time.Since(start).Seconds()
	}
	var one, three []float64
	b.ResetTimer()
	for i := range b.N {
		one = append(one, run(c.hubs[0].url(c.port), fmt.Sprintf("tp1-%d-", i)))
		three = append(three, run(c.lbURL, fmt.Sprintf("tp3-%d-", i)))
	}
	b.StopTimer()
	m1, m3 := median(one), median(three)
	b.ReportMetric(m1, "creates/s-1hub")
	b.ReportMetric(m3, "creates/s-3hubs")
	b.ReportMetric(m3/m1, "ratio-3/1")
}

// BenchmarkHAFailover kills, per iteration, the controller leader (time
// until an approved CSR is signed), the etcd leader (time until a write is
// acknowledged) and a hub replica (time until it leaves the `kubernetes`
// Endpoints), healing each; it reports p50 and max of each.
//
//	go test ./e2e -run '^$' -bench HAFailover -benchtime 5x
func BenchmarkHAFailover(b *testing.B) {
	c := startHACluster(b, 0)
	cs := c.client(b)
	ctx := context.Background()
	var ctrl, etcd, endpoints []float64
	b.ResetTimer()
	for i := range b.N {
		// Controller leader.
		l := c.leader(b, cs)
		killed := time.Now()
		c.killHub(l)
		signedCSR(b, cs, fmt.Sprintf("bench-%d", i), 30*time.Second)
		ctrl = append(ctrl, time.Since(killed).Seconds())
		// The same dead hub leaves the Endpoints.
		var live []int
		for j := range c.hubs {
			if j != l {
				live = append(live, j)
			}
		}
		c.wantEndpoints(b, cs, 60*time.Second, live...)
		endpoints = append(endpoints, time.Since(killed).Seconds())
		c.startHub(b, l)
		c.waitHub(b, l)
		c.wantEndpoints(b, cs, 60*time.Second, 0, 1, 2)

		// etcd leader.
		m := c.etcdLeader(b)
		killed = time.Now()
		stopped := make(chan struct{})
		go func() { c.stopMember(m); close(stopped) }()
		eventually(b, 30*time.Second, "write after the etcd leader stopped", func() error {
			_, err := cs.CoreV1().ConfigMaps("default").Create(ctx, configMap(fmt.Sprintf("bench-etcd-%d", i), nil), metav1.CreateOptions{})
			if err != nil && strings.Contains(err.Error(), "already exists") {
				return nil
			}
			return err
		})
		etcd = append(etcd, time.Since(killed).Seconds())
		<-stopped
		c.startMember(b, m)
		c.waitMember(b, m)
	}
	b.StopTimer()
	b.ReportMetric(median(ctrl), "s-controller-p50")
	b.ReportMetric(slices.Max(ctrl), "s-controller-max")
	b.ReportMetric(median(etcd), "s-etcd-write-p50")
	b.ReportMetric(slices.Max(etcd), "s-etcd-write-max")
	b.ReportMetric(median(endpoints), "s-endpoints-p50")
	b.ReportMetric(slices.Max(endpoints), "s-endpoints-max")
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

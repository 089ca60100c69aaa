package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkHAEtcdLeaderCrash measures, per iteration, how long API writes
// stop when the etcd leader is SIGKILLed (a crash: the followers must wait
// out the election timeout) and, as the same-run baseline, when it is
// stopped with SIGTERM (etcd hands its leadership over first): the time
// from the signal to the acknowledgement of the first create begun after
// it, while creates go on every 50ms through the load balancer. The member
// is restarted from its data dir and must hold every acknowledged create
// before the next round. Reports p50/max of each and the ratio of the p50s.
//
//	go test ./e2e -run '^$' -bench HAEtcdLeaderCrash -benchtime 5x -timeout 30m
func BenchmarkHAEtcdLeaderCrash(b *testing.B) {
	c := startHACluster(b, 0)
	var crash, graceful []float64
	round := func(prefix string, kill bool) float64 {
		w := startWriter(b, c, prefix)
		leader := c.etcdLeader(b)
		w.waitAcks(b, time.Now(), 3, 30*time.Second)
		signalled := time.Now()
		if kill {
			c.killMember(leader)
		} else {
			c.stopMember(leader)
		}
		first := w.waitAcks(b, signalled, 1, 30*time.Second)
		c.startMember(b, leader)
		c.waitMemberReady(b, leader)
		w.stop()
		c.waitCaughtUp(b, leader, w.ackedNames())
		return first.Sub(signalled).Seconds()
	}
	b.ResetTimer()
	for i := range b.N {
		graceful = append(graceful, round(fmt.Sprintf("bench-term-%d-", i), false))
		crash = append(crash, round(fmt.Sprintf("bench-kill-%d-", i), true))
	}
	b.StopTimer()
	b.ReportMetric(median(crash), "s-sigkill-p50")
	b.ReportMetric(slices.Max(crash), "s-sigkill-max")
	b.ReportMetric(median(graceful), "s-sigterm-p50")
	b.ReportMetric(slices.Max(graceful), "s-sigterm-max")
	b.ReportMetric(median(crash)/median(graceful), "ratio-sigkill/sigterm")
}

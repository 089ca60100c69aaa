package agent

import (
	"slices"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	const base, capD = time.Second, 10 * time.Second
	ms := time.Millisecond
	seq := func(b *backoff, ok bool, lasted time.Duration, now time.Time, n int, step time.Duration) []time.Duration {
		var out []time.Duration
		for i := range n {
			out = append(out, b.next(ok && i == 0, lasted, now.Add(time.Duration(i)*step)))
		}
		return out
	}
	t0 := time.Unix(1000, 0)

	// Never connected: base, doubling, capped.
	b := &backoff{base: base, cap: capD}
	if got, want := seq(b, false, 0, t0, 6, 0), []time.Duration{1000 * ms, 2000 * ms, 4000 * ms, 8000 * ms, 10000 * ms, 10000 * ms}; !slices.Equal(got, want) {
		t.Fatalf("never connected: %v, want %v", got, want)
	}

	// A working connection dropped: base/10, doubling, but at most base for 30 s.
	b = &backoff{base: base, cap: capD}
	if got, want := seq(b, true, time.Minute, t0, 8, 2*time.Second), []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 1000 * ms, 1000 * ms, 1000 * ms, 1000 * ms}; !slices.Equal(got, want) {
		t.Fatalf("after a drop: %v, want %v", got, want)
	}
	// Still down after recentLoss: the backoff grows to the cap again.
	later := t0.Add(recentLoss + time.Second)
	if got, want := seq(b, false, 0, later, 4, 0), []time.Duration{1000 * ms, 2000 * ms, 4000 * ms, 8000 * ms}; !slices.Equal(got, want) {
		t.Fatalf("long outage: %v, want %v", got, want)
	}

	// A connection that broke within a second (flapping, or a server killed
	// right after the agent connected): retries every base, not base/10.
	b = &backoff{base: base, cap: capD}
	if got, want := seq(b, true, 100*ms, t0, 4, 0), []time.Duration{1000 * ms, 1000 * ms, 1000 * ms, 1000 * ms}; !slices.Equal(got, want) {
		t.Fatalf("flapping: %v, want %v", got, want)
	}

	// A cap below base (odd flags) is still honoured.
	b = &backoff{base: base, cap: 500 * ms}
	if got := b.next(true, time.Minute, t0); got != 100*ms {
		t.Fatalf("small cap, first retry %v", got)
	}
	if got := seq(b, false, 0, t0, 4, 0); slices.Max(got) > 500*ms {
		t.Fatalf("small cap exceeded: %v", got)
	}
}

package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestKill9DuringWrites kills the hub with SIGKILL while writers create
// ConfigMaps, restarts it on the same data dir, and checks that every
// acknowledged create is there, complete, and that nothing else is
// half-written.
func TestKill9DuringWrites(t *testing.T) {
	h := startHub(t)
	cs := h.Client(t)
	ns := testNamespace(t, cs)
	const (
		writers  = 4
		total    = 500 // creates across all writers, at most
		killAt   = 120 // acknowledged creates before the kill
		payload  = 2048
		deadline = 2 * time.Minute
	)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	body := func(i int) map[string]string {
		return map[string]string{"i": strconv.Itoa(i), "payload": strings.Repeat(string(rune('a'+i%26)), payload)}
	}

	var (
		mu      sync.Mutex
		acked   = map[string]int{}
		next    int
		failed  int
		reached = make(chan struct{})
		once    sync.Once
		wg      sync.WaitGroup
	)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if next >= total || failed > 0 {
					mu.Unlock()
					return
				}
				i := next
				next++
				mu.Unlock()
				name := fmt.Sprintf("d-%03d", i)
				_, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: body(i)}, metav1.CreateOptions{})
				mu.Lock()
				if err != nil {
					failed++ // the hub is gone: stop writing
				} else {
					acked[name] = i
					if len(acked) >= killAt {
						once.Do(func() { close(reached) })
					}
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	select {
	case <-reached:
	case <-ctx.Done():
		t.Fatal("writers too slow to reach the kill point")
	}
	h.Kill()
	wg.Wait()
	mu.Lock()
	attempted := next
	mu.Unlock()
	t.Logf("killed after %d acknowledged creates (%d attempted)", len(acked), attempted)
	if len(acked) >= total {
		t.Fatal("every write finished before the kill; nothing was tested")
	}

	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	cs = h.Client(t)
	for name, i := range acked {
		cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Errorf("acknowledged %s lost: %v", name, err)
			continue
		}
		if want := body(i); cm.Data["i"] != want["i"] || cm.Data["payload"] != want["payload"] {
			t.Errorf("acknowledged %s corrupted: i=%q payload length %d", name, cm.Data["i"], len(cm.Data["payload"]))
		}
	}
	// Writes in flight at the kill may or may not have landed, but whatever
	// is stored is whole.
	list, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	extra := 0
	for _, cm := range list.Items {
		if !strings.HasPrefix(cm.Name, "d-") {
			continue
		}
		i, err := strconv.Atoi(cm.Data["i"])
		if err != nil || cm.Name != fmt.Sprintf("d-%03d", i) || cm.Data["payload"] != body(i)["payload"] || cm.UID == "" || cm.CreationTimestamp.IsZero() {
			t.Errorf("half-written object %s: i=%q payload length %d uid %q", cm.Name, cm.Data["i"], len(cm.Data["payload"]), cm.UID)
		}
		if _, ok := acked[cm.Name]; !ok {
			extra++
		}
	}
	if extra > writers {
		t.Errorf("%d unacknowledged objects stored, at most %d writes were in flight", extra, writers)
	}
	// The hub still takes writes after the crash.
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "after-crash"}}, metav1.CreateOptions{}); err != nil {
		t.Errorf("create after restart: %v", err)
	}
}

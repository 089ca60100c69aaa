package controllers

import (
	"context"
	"log/slog"
	"time"

	"k8s.io/client-go/util/workqueue"
)

// newQueue is a rate-limited work queue of object keys with exponential
// per-key backoff between base and max.
func newQueue(name string, base, max time.Duration) workqueue.TypedRateLimitingInterface[string] {
	return workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](base, max),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: name})
}

// process hands each key of q to sync until q shuts down (shutting it down
// when ctx ends). A failed key is retried with backoff; a positive delay
// re-queues the key after it (work still in progress elsewhere).
func process(ctx context.Context, q workqueue.TypedRateLimitingInterface[string], log *slog.Logger, name string,
	sync func(ctx context.Context, key string) (time.Duration, error)) {
	stop := context.AfterFunc(ctx, q.ShutDown)
	defer stop()
	for {
		key, quit := q.Get()
		if quit {
			return
		}
		if ctx.Err() != nil {
			// Stopping: leave what is queued instead of failing it all.
			q.Done(key)
			return
		}
		after, err := sync(ctx, key)
		switch {
		case err != nil:
			log.Warn(name, "key", key, "err", err)
			q.AddRateLimited(key)
		case after > 0:
			q.AddAfter(key, after)
		default:
			q.Forget(key)
		}
		q.Done(key)
	}
}

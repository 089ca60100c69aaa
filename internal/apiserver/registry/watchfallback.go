package registry

import (
	"context"
	"fmt"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/apiserver/pkg/registry/generic"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/apiserver/pkg/storage/storagebackend/factory"
	"k8s.io/client-go/tools/cache"
)

// watchFallbackOptions makes every store serve a watch that its watch cache
// answers with 410 Expired ("too old resource version": the requested
// resourceVersion predates the cache, as after every hub restart) from
// etcd instead, which still holds the history back to its last compaction.
// A client that resumes a watch across a hub restart thus gets the events
// it missed instead of having to relist; a resourceVersion older than
// etcd's compaction is still 410 Gone.
type watchFallbackOptions struct {
	generic.RESTOptionsGetter
}

func (g watchFallbackOptions) GetRESTOptions(resource schema.GroupResource, example runtime.Object) (generic.RESTOptions, error) {
	opts, err := g.RESTOptionsGetter.GetRESTOptions(resource, example)
	if err != nil || opts.Decorator == nil {
		return opts, err
	}
	decorate := opts.Decorator
	opts.Decorator = func(config *storagebackend.ConfigForResource, resourcePrefix string, keyFunc func(runtime.Object) (string, error),
		newFunc, newListFunc func() runtime.Object, attrs storage.AttrFunc, trigger storage.IndexerFuncs, indexers *cache.Indexers) (storage.Interface, factory.DestroyFunc, error) {
		s, destroy, err := decorate(config, resourcePrefix, keyFunc, newFunc, newListFunc, attrs, trigger, indexers)
		if err != nil {
			return s, destroy, err
		}
		w := &watchFallback{Interface: s, newRaw: func() (storage.Interface, factory.DestroyFunc, error) {
			return generic.NewRawStorage(config, newFunc, newListFunc, resourcePrefix)
		}}
		return w, func() { destroy(); w.destroy() }, nil
	}
	return opts, nil
}

// watchFallback is a (cached) storage whose expired watches go to etcd.
type watchFallback struct {
	storage.Interface
	newRaw func() (storage.Interface, factory.DestroyFunc, error)

	mu         sync.Mutex
	raw        storage.Interface
	rawDestroy factory.DestroyFunc
}

func (s *watchFallback) Watch(ctx context.Context, key string, opts storage.ListOptions) (watch.Interface, error) {
	w, err := s.Interface.Watch(ctx, key, opts)
	if err != nil || opts.ResourceVersion == "" || opts.ResourceVersion == "0" || opts.SendInitialEvents != nil {
		return w, err
	}
	// The watch cache reports errors as a watcher holding one ERROR event
	// and a closed channel; look only at those.
	if fmt.Sprintf("%T", w) != "*cacher.errWatcher" {
		return w, nil
	}
	ev, ok := <-w.ResultChan()
	if !ok {
		return w, nil
	}
	status, isStatus := ev.Object.(*metav1.Status)
	if ev.Type != watch.Error || !isStatus || !apierrors.IsResourceExpired(&apierrors.StatusError{ErrStatus: *status}) {
		return oneEvent(ev), nil
	}
	raw, err := s.rawStorage()
	if err != nil {
		return oneEvent(ev), nil
	}
	return raw.Watch(ctx, key, opts)
}

func (s *watchFallback) rawStorage() (storage.Interface, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.raw == nil {
		raw, destroy, err := s.newRaw()
		if err != nil {
			return nil, err
		}
		s.raw, s.rawDestroy = raw, destroy
	}
	return s.raw, nil
}

func (s *watchFallback) destroy() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rawDestroy != nil {
		s.rawDestroy()
		s.raw, s.rawDestroy = nil, nil
	}
}

// oneEvent is a finished watch that delivers ev.
func oneEvent(ev watch.Event) watch.Interface {
	ch := make(chan watch.Event, 1)
	ch <- ev
	close(ch)
	return closedWatch(ch)
}

type closedWatch chan watch.Event

func (c closedWatch) Stop()                          {}
func (c closedWatch) ResultChan() <-chan watch.Event { return c }

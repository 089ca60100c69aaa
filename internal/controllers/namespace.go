package controllers

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/tools/cache"
)

// NamespaceConfig configures the namespace life-cycle controller.
type NamespaceConfig struct {
	Client   kubernetes.Interface
	Metadata metadata.Interface
	// Workers; zero value 2.
	Workers int
	Logger  *slog.Logger
}

// Namespace empties namespaces that are being deleted, then removes the
// `kubernetes` finalizer so that the namespace itself goes.
type Namespace struct {
	cfg NamespaceConfig
}

// NewNamespace validates cfg.
func NewNamespace(cfg NamespaceConfig) (*Namespace, error) {
	if cfg.Client == nil || cfg.Metadata == nil {
		return nil, fmt.Errorf("namespace controller: clients are required")
	}
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Namespace{cfg: cfg}, nil
}

// Run processes terminating namespaces until ctx ends.
func (c *Namespace) Run(ctx context.Context) error {
	// A queue per run: a replica that loses and regains the lease runs
	// again, and a shut-down queue would hand it no work.
	queue := newQueue("namespace", 100*time.Millisecond, 10*time.Second)
	defer queue.ShutDown()
	factory := informers.NewSharedInformerFactory(c.cfg.Client, 5*time.Minute)
	inf := factory.Core().V1().Namespaces().Informer()
	enqueue := func(obj any) {
		if ns, ok := obj.(*corev1.Namespace); ok && ns.DeletionTimestamp != nil {
			queue.Add(ns.Name)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil
	}
	done := make(chan struct{})
	for i := 0; i < c.cfg.Workers; i++ {
		go func() {
			defer func() { done <- struct{}{} }()
			process(ctx, queue, c.cfg.Logger, "namespace deletion", func(ctx context.Context, name string) (time.Duration, error) {
				remaining, err := c.sync(ctx, name)
				if remaining {
					return time.Second, err
				}
				return 0, err
			})
		}()
	}
	for i := 0; i < c.cfg.Workers; i++ {
		<-done
	}
	return nil
}

// sync deletes everything in the namespace; it reports whether objects
// remain (graceful deletions in flight).
func (c *Namespace) sync(ctx context.Context, name string) (bool, error) {
	ns, err := c.cfg.Client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if ns.DeletionTimestamp == nil {
		return false, nil
	}
	resources, err := c.namespacedResources()
	if err != nil {
		return false, err
	}
	remaining := false
	for _, gvr := range resources {
		client := c.cfg.Metadata.Resource(gvr).Namespace(name)
		err := client.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsMethodNotSupported(err) {
			return false, fmt.Errorf("delete %s: %w", gvr, err)
		}
		list, err := client.List(ctx, metav1.ListOptions{Limit: 1})
		if err != nil && !apierrors.IsNotFound(err) {
			return false, fmt.Errorf("list %s: %w", gvr, err)
		}
		if err == nil && len(list.Items) > 0 {
			remaining = true
		}
	}
	if remaining {
		return true, nil
	}
	if len(ns.Spec.Finalizers) > 0 {
		var keep []corev1.FinalizerName
		for _, f := range ns.Spec.Finalizers {
			if f != corev1.FinalizerKubernetes {
				keep = append(keep, f)
			}
		}
		ns.Spec.Finalizers = keep
		if ns, err = c.cfg.Client.CoreV1().Namespaces().Finalize(ctx, ns, metav1.UpdateOptions{}); err != nil {
			if apierrors.IsNotFound(err) {
				return false, nil
			}
			return false, fmt.Errorf("finalize: %w", err)
		}
	}
	if len(ns.Spec.Finalizers) == 0 {
		err := c.cfg.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &ns.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return false, fmt.Errorf("delete namespace: %w", err)
		}
	}
	return false, nil
}

func (c *Namespace) namespacedResources() ([]schema.GroupVersionResource, error) {
	lists, err := c.cfg.Client.Discovery().ServerPreferredNamespacedResources()
	if err != nil && len(lists) == 0 {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	var out []schema.GroupVersionResource
	for _, l := range discovery.FilteredBy(discovery.SupportsAllVerbs{Verbs: []string{"list", "deletecollection"}}, lists) {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			continue
		}
		for _, r := range l.APIResources {
			out = append(out, gv.WithResource(r.Name))
		}
	}
	return out, nil
}

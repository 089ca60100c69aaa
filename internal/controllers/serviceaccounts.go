package controllers

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// RootCAConfigMap is the ConfigMap every namespace gets with the cluster CA
// bundle, which pods use to verify the API server.
const RootCAConfigMap = "kube-root-ca.crt"

// ServiceAccountsConfig configures the ServiceAccounts controller.
type ServiceAccountsConfig struct {
	Client kubernetes.Interface
	// CABundle is published as ca.crt in every namespace.
	CABundle []byte
	Logger   *slog.Logger
}

// ServiceAccounts keeps a `default` ServiceAccount and the kube-root-ca.crt
// ConfigMap in every active namespace (recreated if deleted, updated when
// the CA bundle changes).
type ServiceAccounts struct {
	cfg ServiceAccountsConfig
}

// NewServiceAccounts validates cfg.
func NewServiceAccounts(cfg ServiceAccountsConfig) (*ServiceAccounts, error) {
	if cfg.Client == nil || len(cfg.CABundle) == 0 {
		return nil, fmt.Errorf("serviceaccounts controller: client and CA bundle are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &ServiceAccounts{cfg: cfg}, nil
}

// Run reconciles until ctx ends.
func (c *ServiceAccounts) Run(ctx context.Context) error {
	// A queue per run: a replica that loses and regains the lease runs
	// again, and a shut-down queue would hand it no work.
	queue := newQueue("serviceaccounts", 50*time.Millisecond, 30*time.Second)
	defer queue.ShutDown()
	factory := informers.NewSharedInformerFactory(c.cfg.Client, 10*time.Minute)
	nsInf := factory.Core().V1().Namespaces().Informer()
	saInf := factory.Core().V1().ServiceAccounts().Informer()
	cmInf := factory.Core().V1().ConfigMaps().Informer()
	nsOf := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if m, ok := obj.(metav1.Object); ok {
			ns := m.GetNamespace()
			if ns == "" {
				ns = m.GetName()
			}
			queue.Add(ns)
		}
	}
	handler := cache.ResourceEventHandlerFuncs{AddFunc: nsOf, UpdateFunc: func(_, o any) { nsOf(o) }, DeleteFunc: nsOf}
	for _, inf := range []cache.SharedIndexInformer{nsInf, saInf, cmInf} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return err
		}
	}
	nsLister := factory.Core().V1().Namespaces().Lister()
	saLister := factory.Core().V1().ServiceAccounts().Lister()
	cmLister := factory.Core().V1().ConfigMaps().Lister()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), nsInf.HasSynced, saInf.HasSynced, cmInf.HasSynced) {
		return nil
	}
	process(ctx, queue, c.cfg.Logger, "serviceaccounts", func(ctx context.Context, name string) (time.Duration, error) {
		return 0, c.sync(ctx, name, nsLister, saLister, cmLister)
	})
	return nil
}

// sync ensures the default ServiceAccount and the root CA ConfigMap of one
// active namespace.
func (c *ServiceAccounts) sync(ctx context.Context, name string, nsLister corelisters.NamespaceLister, saLister corelisters.ServiceAccountLister, cmLister corelisters.ConfigMapLister) error {
	ns, err := nsLister.Get(name)
	if apierrors.IsNotFound(err) || (err == nil && ns.Status.Phase != corev1.NamespaceActive) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := saLister.ServiceAccounts(name).Get("default"); apierrors.IsNotFound(err) {
		_, err := c.cfg.Client.CoreV1().ServiceAccounts(name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) && !apierrors.IsForbidden(err) {
			return fmt.Errorf("default serviceaccount in %s: %w", name, err)
		}
	}
	want := map[string]string{"ca.crt": string(c.cfg.CABundle)}
	cm, err := cmLister.ConfigMaps(name).Get(RootCAConfigMap)
	switch {
	case apierrors.IsNotFound(err):
		_, err = c.cfg.Client.CoreV1().ConfigMaps(name).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: RootCAConfigMap, Annotations: map[string]string{"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
			Data:       want}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) || apierrors.IsForbidden(err) {
			return nil
		}
		return err
	case err != nil:
		return err
	case cm.Data["ca.crt"] != want["ca.crt"] || len(cm.Data) != 1:
		cm = cm.DeepCopy()
		cm.Data = want
		_, err = c.cfg.Client.CoreV1().ConfigMaps(name).Update(ctx, cm, metav1.UpdateOptions{})
		return ignoreConflict(err)
	}
	return nil
}

package authn

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
)

// InformerObjects answers Objects from shared informers and, when the cache
// has not seen an object yet, from a live GET, so a token for an object
// created a moment ago is not rejected.
type InformerObjects struct {
	client  kubernetes.Interface
	sas     corelisters.ServiceAccountLister
	pods    corelisters.PodLister
	secrets corelisters.SecretLister
	nodes   corelisters.NodeLister
}

// NewInformerObjects registers the informers it needs on f.
func NewInformerObjects(f informers.SharedInformerFactory, client kubernetes.Interface) *InformerObjects {
	core := f.Core().V1()
	return &InformerObjects{client: client, sas: core.ServiceAccounts().Lister(), pods: core.Pods().Lister(),
		secrets: core.Secrets().Lister(), nodes: core.Nodes().Lister()}
}

func fallback[T any](cached T, err error, live func() (T, error)) (T, error) {
	if err == nil || !apierrors.IsNotFound(err) {
		return cached, err
	}
	return live()
}

func (o *InformerObjects) ServiceAccount(ctx context.Context, ns, name string) (*corev1.ServiceAccount, error) {
	v, err := o.sas.ServiceAccounts(ns).Get(name)
	return fallback(v, err, func() (*corev1.ServiceAccount, error) {
		return o.client.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{})
	})
}

func (o *InformerObjects) Pod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	v, err := o.pods.Pods(ns).Get(name)
	return fallback(v, err, func() (*corev1.Pod, error) {
		return o.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	})
}

func (o *InformerObjects) Secret(ctx context.Context, ns, name string) (*corev1.Secret, error) {
	v, err := o.secrets.Secrets(ns).Get(name)
	return fallback(v, err, func() (*corev1.Secret, error) {
		return o.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	})
}

func (o *InformerObjects) Node(ctx context.Context, name string) (*corev1.Node, error) {
	v, err := o.nodes.Get(name)
	return fallback(v, err, func() (*corev1.Node, error) {
		return o.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	})
}

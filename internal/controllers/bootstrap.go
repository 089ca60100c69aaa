package controllers

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// SystemNamespaces returns the namespaces every cluster has.
func SystemNamespaces() []string {
	return []string{metav1.NamespaceDefault, metav1.NamespaceSystem, metav1.NamespacePublic, corev1.NamespaceNodeLease}
}

// BootstrapConfig configures the Bootstrap controller.
type BootstrapConfig struct {
	Client kubernetes.Interface
	// ServiceIP is the ClusterIP of the `kubernetes` Service (first address of
	// the service range).
	ServiceIP net.IP
	// Endpoints are the hub addresses (IP + port) the Service forwards to.
	Endpoints func() []EndpointAddr
	// Interval between reconciles; zero value 10s.
	Interval time.Duration
	Logger   *slog.Logger
}

// EndpointAddr is one hub address.
type EndpointAddr struct {
	IP   net.IP
	Port int32
}

// Bootstrap keeps the system namespaces and the `kubernetes` Service with its
// Endpoints and EndpointSlice in place, as kube-apiserver does.
type Bootstrap struct{ cfg BootstrapConfig }

// NewBootstrap validates cfg.
func NewBootstrap(cfg BootstrapConfig) (*Bootstrap, error) {
	if cfg.Client == nil || cfg.ServiceIP == nil || cfg.Endpoints == nil {
		return nil, fmt.Errorf("bootstrap: client, service IP and endpoints are required")
	}
	if cfg.Interval == 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Bootstrap{cfg: cfg}, nil
}

// Run reconciles every Interval until ctx ends.
func (b *Bootstrap) Run(ctx context.Context) error {
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := b.Reconcile(ctx); err != nil && ctx.Err() == nil {
			b.cfg.Logger.Warn("bootstrap reconcile failed", "err", err)
		}
	}, b.cfg.Interval)
	return nil
}

// Reconcile makes one pass.
func (b *Bootstrap) Reconcile(ctx context.Context) error {
	for _, ns := range SystemNamespaces() {
		_, err := b.cfg.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	addrs := b.cfg.Endpoints()
	if len(addrs) == 0 {
		return fmt.Errorf("no hub endpoints")
	}
	port := addrs[0].Port
	// One port for every replica, as kube-apiserver requires.
	addrs = slices.DeleteFunc(slices.Clone(addrs), func(a EndpointAddr) bool { return a.Port != port })
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: metav1.NamespaceDefault,
			Labels: map[string]string{"component": "apiserver", "provider": "kubernetes"}},
		Spec: corev1.ServiceSpec{
			Type:            corev1.ServiceTypeClusterIP,
			ClusterIP:       b.cfg.ServiceIP.String(),
			Ports:           []corev1.ServicePort{{Name: "https", Protocol: corev1.ProtocolTCP, Port: 443, TargetPort: intstr.FromInt32(port)}},
			SessionAffinity: corev1.ServiceAffinityNone,
		},
	}
	if _, err := b.cfg.Client.CoreV1().Services(metav1.NamespaceDefault).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("kubernetes service: %w", err)
	}
	if err := b.reconcileEndpoints(ctx, addrs); err != nil {
		return err
	}
	return b.reconcileSlice(ctx, addrs)
}

func (b *Bootstrap) reconcileEndpoints(ctx context.Context, addrs []EndpointAddr) error {
	want := corev1.EndpointSubset{Ports: []corev1.EndpointPort{{Name: "https", Port: addrs[0].Port, Protocol: corev1.ProtocolTCP}}}
	for _, a := range addrs {
		want.Addresses = append(want.Addresses, corev1.EndpointAddress{IP: a.IP.String()})
	}
	client := b.cfg.Client.CoreV1().Endpoints(metav1.NamespaceDefault)
	cur, err := client.Get(ctx, "kubernetes", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = client.Create(ctx, &corev1.Endpoints{
			ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: metav1.NamespaceDefault, Labels: map[string]string{discoveryv1.LabelSkipMirror: "true"}},
			Subsets:    []corev1.EndpointSubset{want}}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return fmt.Errorf("kubernetes endpoints: %w", err)
	}
	if len(cur.Subsets) == 1 && apiequality.Semantic.DeepEqual(cur.Subsets[0], want) {
		return nil
	}
	cur.Subsets = []corev1.EndpointSubset{want}
	_, err = client.Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

func (b *Bootstrap) reconcileSlice(ctx context.Context, addrs []EndpointAddr) error {
	name, proto, port := "https", corev1.ProtocolTCP, addrs[0].Port
	ready := true
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: metav1.NamespaceDefault,
			Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes", discoveryv1.LabelManagedBy: "tether-apiserver"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
	}
	for _, a := range addrs {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{a.IP.String()}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	client := b.cfg.Client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault)
	cur, err := client.Get(ctx, "kubernetes", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = client.Create(ctx, slice, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return fmt.Errorf("kubernetes endpointslice: %w", err)
	}
	if apiequality.Semantic.DeepEqual(cur.Endpoints, slice.Endpoints) && apiequality.Semantic.DeepEqual(cur.Ports, slice.Ports) {
		return nil
	}
	cur.Endpoints, cur.Ports, cur.AddressType = slice.Endpoints, slice.Ports, slice.AddressType
	_, err = client.Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apiserver/pkg/registry/rest"
)

var proxyMethods = []string{"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}

// ParseTarget splits "[scheme:]name[:port]" as the proxy subresources name
// their target. The scheme is "" (http) or "https".
func ParseTarget(id string) (scheme, name, port string, err error) {
	scheme, name, port, ok := utilnet.SplitSchemeNamePort(id)
	if !ok || name == "" {
		return "", "", "", apierrors.NewBadRequest(fmt.Sprintf("invalid proxy target %q: want [https:]name[:port]", id))
	}
	if scheme != "" && scheme != "http" && scheme != "https" {
		return "", "", "", apierrors.NewBadRequest(fmt.Sprintf("invalid scheme %q in proxy target", scheme))
	}
	if scheme == "http" {
		scheme = ""
	}
	return scheme, name, port, nil
}

// Proxyable refuses addresses the hub must never proxy to: unparsable,
// unspecified, link-local (cloud metadata), multicast, and loopback unless
// allowLoopback (a purely local cluster whose nodes live on loopback).
func Proxyable(ip string, allowLoopback bool) error {
	p := net.ParseIP(ip)
	switch {
	case p == nil:
		return apierrors.NewBadRequest(fmt.Sprintf("address %q is not an IP address", ip))
	case p.IsUnspecified(), p.IsLinkLocalUnicast(), p.IsLinkLocalMulticast(), p.IsInterfaceLocalMulticast(), p.IsMulticast():
		return apierrors.NewBadRequest(fmt.Sprintf("address %s is not allowed as a proxy target", ip))
	case p.IsLoopback() && !allowLoopback:
		return apierrors.NewBadRequest(fmt.Sprintf("address %s is loopback and not allowed as a proxy target", ip))
	}
	return nil
}

// plainTransport reaches pods and services: HTTP, or HTTPS that — exactly as
// the seed says — neither verifies the endpoint nor sends credentials.
func (b *base) plainTransport() *http.Transport {
	return &http.Transport{
		DialContext:         b.k.cfg.Dialer.DialContext,
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, //nolint:gosec // documented behaviour of https: proxying
		TLSHandshakeTimeout: 10 * time.Second,
		// A transport serves one request: a kept-alive connection could
		// never be reused and would linger (with its goroutines) until
		// an idle timeout.
		DisableKeepAlives: true,
	}
}

func proxyOptionsPath(opts runtime.Object) string {
	switch o := opts.(type) {
	case *corev1.PodProxyOptions:
		return o.Path
	case *corev1.NodeProxyOptions:
		return o.Path
	case *corev1.ServiceProxyOptions:
		return o.Path
	}
	return ""
}

func (b *base) proxyHandler(loc *url.URL, t http.RoundTripper, opts runtime.Object, res rest.Responder) http.Handler {
	joinPath(loc, proxyOptionsPath(opts))
	h := upgradeHandler(loc, t, true, false, res)
	return h
}

// PodProxyREST is pods/proxy.
type PodProxyREST struct{ *base }

func (r *PodProxyREST) New() runtime.Object      { return &corev1.Pod{} }
func (r *PodProxyREST) Destroy()                 {}
func (r *PodProxyREST) ConnectMethods() []string { return proxyMethods }
func (r *PodProxyREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &corev1.PodProxyOptions{}, true, "path"
}

// Connect proxies to the pod's IP (status.podIP of this very pod).
func (r *PodProxyREST) Connect(ctx context.Context, id string, opts runtime.Object, res rest.Responder) (http.Handler, error) {
	scheme, name, port, err := ParseTarget(id)
	if err != nil {
		return nil, err
	}
	pod, err := r.pod(ctx, name)
	if err != nil {
		return nil, err
	}
	if pod.Status.PodIP == "" {
		return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("pod %s has no IP yet", name))
	}
	if err := r.proxyableOnNode(ctx, pod.Status.PodIP, pod.Spec.NodeName); err != nil {
		return nil, err
	}
	if port == "" {
		for _, c := range pod.Spec.Containers {
			if len(c.Ports) > 0 {
				port = strconv.Itoa(int(c.Ports[0].ContainerPort))
				break
			}
		}
	}
	if port == "" {
		port = "80"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("invalid port %q", port))
	}
	loc := &url.URL{Scheme: orHTTP(scheme), Host: net.JoinHostPort(pod.Status.PodIP, port)}
	return r.proxyHandler(loc, r.plainTransport(), opts, res), nil
}

// proxyableOnNode is Proxyable for pod and endpoint addresses. Loopback is
// refused, except in a purely local cluster (AllowLoopbackNodes) for an
// address that belongs to the object's own node: pods share the host
// network, so a pod's IP is its node's address. Any other loopback address
// (the hub's own, say) stays refused.
func (b *base) proxyableOnNode(ctx context.Context, ip, nodeName string) error {
	err := Proxyable(ip, false)
	if err == nil || !b.k.cfg.AllowLoopbackNodes || nodeName == "" {
		return err
	}
	p := net.ParseIP(ip)
	if p == nil || !p.IsLoopback() {
		return err
	}
	obj, gerr := b.nodes.Get(namespaced(ctx, ""), nodeName, &metav1.GetOptions{})
	if gerr != nil {
		return err
	}
	for _, a := range obj.(*corev1.Node).Status.Addresses {
		if net.ParseIP(a.Address).Equal(p) {
			return nil
		}
	}
	return err
}

func ptrValue(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func orHTTP(s string) string {
	if s == "" {
		return "http"
	}
	return s
}

// NodeProxyREST is nodes/proxy: the kubelet port goes to the kubelet with the
// hub's client certificate and verification; other ports are plain proxies.
type NodeProxyREST struct{ *base }

func (r *NodeProxyREST) New() runtime.Object      { return &corev1.Node{} }
func (r *NodeProxyREST) Destroy()                 {}
func (r *NodeProxyREST) ConnectMethods() []string { return proxyMethods }
func (r *NodeProxyREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &corev1.NodeProxyOptions{}, true, "path"
}

// Connect proxies to the node.
func (r *NodeProxyREST) Connect(ctx context.Context, id string, opts runtime.Object, res rest.Responder) (http.Handler, error) {
	scheme, name, port, err := ParseTarget(id)
	if err != nil {
		return nil, err
	}
	t, err := r.nodeTarget(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := Proxyable(t.Host, r.k.cfg.AllowLoopbackNodes); err != nil {
		return nil, err
	}
	if port == "" || port == strconv.Itoa(t.Port) {
		loc := &url.URL{Scheme: "https", Host: t.hostPort()}
		return r.proxyHandler(loc, r.k.transport(t), opts, res), nil
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("invalid port %q", port))
	}
	loc := &url.URL{Scheme: orHTTP(scheme), Host: net.JoinHostPort(t.Host, port)}
	return r.proxyHandler(loc, r.plainTransport(), opts, res), nil
}

// ServiceProxyREST is services/proxy: it picks a ready endpoint.
type ServiceProxyREST struct {
	*base
	services, endpoints Getter
}

func (r *ServiceProxyREST) New() runtime.Object      { return &corev1.Service{} }
func (r *ServiceProxyREST) Destroy()                 {}
func (r *ServiceProxyREST) ConnectMethods() []string { return proxyMethods }
func (r *ServiceProxyREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &corev1.ServiceProxyOptions{}, true, "path"
}

// Connect proxies to one ready endpoint of the service port.
func (r *ServiceProxyREST) Connect(ctx context.Context, id string, opts runtime.Object, res rest.Responder) (http.Handler, error) {
	scheme, name, portName, err := ParseTarget(id)
	if err != nil {
		return nil, err
	}
	obj, err := r.services.Get(ctx, name, &metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	svc := obj.(*corev1.Service)
	var svcPort *corev1.ServicePort
	for i := range svc.Spec.Ports {
		p := &svc.Spec.Ports[i]
		if portName == "" || p.Name == portName || strconv.Itoa(int(p.Port)) == portName {
			svcPort = p
			break
		}
	}
	if svcPort == nil {
		return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("no service port %q found for service %q", portName, name))
	}
	obj, err = r.endpoints.Get(ctx, name, &metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("no endpoints available for service %q", name))
		}
		return nil, err
	}
	ep := obj.(*corev1.Endpoints)
	var candidates []string
	for _, ss := range ep.Subsets {
		for _, p := range ss.Ports {
			if p.Name != svcPort.Name {
				continue
			}
			for _, a := range ss.Addresses {
				if r.proxyableOnNode(ctx, a.IP, ptrValue(a.NodeName)) == nil {
					candidates = append(candidates, net.JoinHostPort(a.IP, strconv.Itoa(int(p.Port))))
				}
			}
		}
	}
	if len(candidates) == 0 {
		return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("no endpoints available for service %q", name))
	}
	loc := &url.URL{Scheme: orHTTP(scheme), Host: candidates[rand.IntN(len(candidates))]}
	return r.proxyHandler(loc, r.plainTransport(), opts, res), nil
}

package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/httpstream/wsstream"
	upgradeproxy "k8s.io/apimachinery/pkg/util/proxy"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	genericrest "k8s.io/apiserver/pkg/registry/generic/rest"
	"k8s.io/apiserver/pkg/registry/rest"
	translator "k8s.io/apiserver/pkg/util/proxy"
)

// Subresources returns the streaming and proxy subresources, keyed by path
// ("pods/log"). pods, nodes, services and endpoints read the objects.
func Subresources(cfg KubeletConfig, pods, nodes, services, endpoints Getter) (map[string]rest.Storage, error) {
	k, err := newKubelet(cfg)
	if err != nil {
		return nil, err
	}
	b := &base{k: k, pods: pods, nodes: nodes}
	return map[string]rest.Storage{
		"pods/log":         &LogREST{b},
		"pods/exec":        &ExecREST{b},
		"pods/attach":      &AttachREST{b},
		"pods/portforward": &PortForwardREST{b},
		"pods/proxy":       &PodProxyREST{b},
		"nodes/proxy":      &NodeProxyREST{b},
		"services/proxy":   &ServiceProxyREST{base: b, services: services, endpoints: endpoints},
	}, nil
}

type base struct {
	k     *kubelet
	pods  Getter
	nodes Getter
}

func (b *base) pod(ctx context.Context, name string) (*corev1.Pod, error) {
	obj, err := b.pods.Get(ctx, name, &metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return obj.(*corev1.Pod), nil
}

// podKubelet finds the kubelet of a running pod's node.
func (b *base) podKubelet(ctx context.Context, name string) (*corev1.Pod, nodeTarget, error) {
	pod, err := b.pod(ctx, name)
	if err != nil {
		return nil, nodeTarget{}, err
	}
	if pod.Spec.NodeName == "" {
		return nil, nodeTarget{}, apierrors.NewBadRequest(fmt.Sprintf("pod %s does not have a host assigned", name))
	}
	t, err := b.nodeTarget(ctx, pod.Spec.NodeName)
	return pod, t, err
}

func (b *base) nodeTarget(ctx context.Context, name string) (nodeTarget, error) {
	obj, err := b.nodes.Get(genericapirequest.WithNamespace(ctx, ""), name, &metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		// The store names the resource of the request (pods); say nodes.
		return nodeTarget{}, apierrors.NewNotFound(corev1.Resource("nodes"), name)
	}
	if err != nil {
		return nodeTarget{}, err
	}
	return b.k.target(obj.(*corev1.Node))
}

// container resolves the container name, defaulting when the pod has one.
func container(pod *corev1.Pod, name string) (string, error) {
	if name != "" {
		for _, list := range [][]corev1.Container{pod.Spec.Containers, pod.Spec.InitContainers} {
			for _, c := range list {
				if c.Name == name {
					return name, nil
				}
			}
		}
		for _, c := range pod.Spec.EphemeralContainers {
			if c.Name == name {
				return name, nil
			}
		}
		return "", apierrors.NewBadRequest(fmt.Sprintf("container %s is not valid for pod %s", name, pod.Name))
	}
	if len(pod.Spec.Containers) == 1 {
		return pod.Spec.Containers[0].Name, nil
	}
	if c := pod.Annotations["kubectl.kubernetes.io/default-container"]; c != "" {
		return c, nil
	}
	var names []string
	for _, c := range pod.Spec.Containers {
		names = append(names, c.Name)
	}
	return "", apierrors.NewBadRequest(fmt.Sprintf("a container name must be specified for pod %s, choose one of: %v", pod.Name, names))
}

func kubeletURL(t nodeTarget, path string, q url.Values) *url.URL {
	return &url.URL{Scheme: "https", Host: t.hostPort(), Path: path, RawQuery: q.Encode()}
}

// responder turns proxy errors into 502 Statuses.
type responder struct{ rest.Responder }

func (r responder) Error(_ http.ResponseWriter, _ *http.Request, err error) {
	r.Responder.Error(badGateway(err))
}

func upgradeHandler(loc *url.URL, t http.RoundTripper, wrap, upgradeRequired bool, r rest.Responder) *upgradeproxy.UpgradeAwareHandler {
	h := upgradeproxy.NewUpgradeAwareHandler(loc, t, wrap, upgradeRequired, responder{r})
	// CVE-2020-8559: never follow a backend's redirect.
	h.RejectForwardingRedirects = true
	h.MaxBytesPerSec = 0
	return h
}

// LogREST is pods/log.
type LogREST struct{ *base }

func (r *LogREST) New() runtime.Object               { return &corev1.Pod{} }
func (r *LogREST) Destroy()                          {}
func (r *LogREST) ProducesMIMETypes(string) []string { return []string{"text/plain"} }
func (r *LogREST) ProducesObject(string) any         { return "" }
func (r *LogREST) NewGetOptions() (runtime.Object, bool, string) {
	return &corev1.PodLogOptions{}, false, ""
}

// Get streams the container log from the kubelet.
func (r *LogREST) Get(ctx context.Context, name string, opts runtime.Object) (runtime.Object, error) {
	o, ok := opts.(*corev1.PodLogOptions)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("invalid options object: %#v", opts))
	}
	if o.TailLines != nil && *o.TailLines < 0 {
		return nil, apierrors.NewBadRequest("tailLines must be >= 0")
	}
	if o.LimitBytes != nil && *o.LimitBytes < 1 {
		return nil, apierrors.NewBadRequest("limitBytes must be > 0")
	}
	if o.SinceSeconds != nil && *o.SinceSeconds < 1 {
		return nil, apierrors.NewBadRequest("sinceSeconds must be > 0")
	}
	if o.SinceSeconds != nil && o.SinceTime != nil {
		return nil, apierrors.NewBadRequest("at most one of sinceTime or sinceSeconds may be specified")
	}
	pod, t, err := r.podKubelet(ctx, name)
	if err != nil {
		return nil, err
	}
	c, err := container(pod, o.Container)
	if err != nil {
		return nil, err
	}
	q := url.Values{}
	if o.Follow {
		q.Set("follow", "true")
	}
	if o.Previous {
		q.Set("previous", "true")
	}
	if o.Timestamps {
		q.Set("timestamps", "true")
	}
	if o.SinceSeconds != nil {
		q.Set("sinceSeconds", strconv.FormatInt(*o.SinceSeconds, 10))
	}
	if o.SinceTime != nil {
		q.Set("sinceTime", o.SinceTime.Format("2006-01-02T15:04:05Z07:00"))
	}
	if o.TailLines != nil {
		q.Set("tailLines", strconv.FormatInt(*o.TailLines, 10))
	}
	if o.LimitBytes != nil {
		q.Set("limitBytes", strconv.FormatInt(*o.LimitBytes, 10))
	}
	loc := kubeletURL(t, fmt.Sprintf("/containerLogs/%s/%s/%s", pod.Namespace, pod.Name, c), q)
	return &streamer{LocationStreamer: genericrest.LocationStreamer{
		Location: loc, Transport: r.k.transport(t), ContentType: "text/plain", Flush: o.Follow,
		ResponseChecker: genericrest.NewGenericHttpResponseChecker(corev1.Resource("pods/log"), pod.Name),
		RedirectChecker: genericrest.PreventRedirects,
	}}, nil
}

// streamer reports a kubelet that cannot be reached as a 502.
type streamer struct{ genericrest.LocationStreamer }

func (s *streamer) InputStream(ctx context.Context, apiVersion, acceptHeader string) (io.ReadCloser, bool, string, error) {
	rc, flush, ct, err := s.LocationStreamer.InputStream(ctx, apiVersion, acceptHeader)
	if err != nil {
		return nil, false, "", badGateway(err)
	}
	return rc, flush, ct, nil
}

// ExecREST is pods/exec.
type ExecREST struct{ *base }

func (r *ExecREST) New() runtime.Object      { return &corev1.Pod{} }
func (r *ExecREST) Destroy()                 {}
func (r *ExecREST) ConnectMethods() []string { return []string{"GET", "POST"} }
func (r *ExecREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &corev1.PodExecOptions{}, false, ""
}

// streamQuery encodes stream options the way the kubelet API reads them:
// input, output, error and tty set to "1".
func streamQuery(stdin, stdout, stderr, tty bool) url.Values {
	q := url.Values{}
	for k, v := range map[string]bool{corev1.ExecStdinParam: stdin, corev1.ExecStdoutParam: stdout, corev1.ExecStderrParam: stderr, corev1.ExecTTYParam: tty} {
		if v {
			q.Set(k, "1")
		}
	}
	return q
}

// Connect proxies the exec stream to the kubelet; WebSocket v5 clients are
// translated to SPDY toward the kubelet.
func (r *ExecREST) Connect(ctx context.Context, name string, opts runtime.Object, res rest.Responder) (http.Handler, error) {
	o, ok := opts.(*corev1.PodExecOptions)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("invalid options object: %#v", opts))
	}
	if len(o.Command) == 0 {
		return nil, apierrors.NewBadRequest("you must specify at least 1 command")
	}
	if !o.Stdin && !o.Stdout && !o.Stderr {
		return nil, apierrors.NewBadRequest("you must specify at least one of stdin, stdout, stderr")
	}
	return r.stream(ctx, name, o.Container, "exec", o.Command, translator.Options{Stdin: o.Stdin, Stdout: o.Stdout, Stderr: o.Stderr, Tty: o.TTY}, res)
}

func (b *base) stream(ctx context.Context, name, containerName, verb string, command []string, so translator.Options, res rest.Responder) (http.Handler, error) {
	pod, t, err := b.podKubelet(ctx, name)
	if err != nil {
		return nil, err
	}
	c, err := container(pod, containerName)
	if err != nil {
		return nil, err
	}
	q := streamQuery(so.Stdin, so.Stdout, so.Stderr, so.Tty)
	for _, cmd := range command {
		q.Add("command", cmd)
	}
	loc := kubeletURL(t, fmt.Sprintf("/%s/%s/%s/%s", verb, pod.Namespace, pod.Name, c), q)
	tr := b.k.transport(t)
	h := upgradeHandler(loc, tr, false, true, res)
	st := translator.NewStreamTranslatorHandler(loc, tr, 0, so)
	return translator.NewTranslatingHandler(h, st, wsstream.IsWebSocketRequestWithStreamCloseProtocol), nil
}

// AttachREST is pods/attach.
type AttachREST struct{ *base }

func (r *AttachREST) New() runtime.Object      { return &corev1.Pod{} }
func (r *AttachREST) Destroy()                 {}
func (r *AttachREST) ConnectMethods() []string { return []string{"GET", "POST"} }
func (r *AttachREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &corev1.PodAttachOptions{}, false, ""
}

// Connect proxies the attach stream to the kubelet.
func (r *AttachREST) Connect(ctx context.Context, name string, opts runtime.Object, res rest.Responder) (http.Handler, error) {
	o, ok := opts.(*corev1.PodAttachOptions)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("invalid options object: %#v", opts))
	}
	if !o.Stdin && !o.Stdout && !o.Stderr {
		return nil, apierrors.NewBadRequest("you must specify at least one of stdin, stdout, stderr")
	}
	return r.stream(ctx, name, o.Container, "attach", nil, translator.Options{Stdin: o.Stdin, Stdout: o.Stdout, Stderr: o.Stderr, Tty: o.TTY}, res)
}

// PortForwardREST is pods/portforward.
type PortForwardREST struct{ *base }

func (r *PortForwardREST) New() runtime.Object      { return &corev1.Pod{} }
func (r *PortForwardREST) Destroy()                 {}
func (r *PortForwardREST) ConnectMethods() []string { return []string{"GET", "POST"} }
func (r *PortForwardREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &corev1.PodPortForwardOptions{}, false, ""
}

// Connect proxies SPDY port-forward streams to the kubelet; WebSocket
// clients (SPDY tunnelled over WebSocket) are unwrapped first.
func (r *PortForwardREST) Connect(ctx context.Context, name string, opts runtime.Object, res rest.Responder) (http.Handler, error) {
	o, ok := opts.(*corev1.PodPortForwardOptions)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("invalid options object: %#v", opts))
	}
	for _, p := range o.Ports {
		if p < 1 || p > 65535 {
			return nil, apierrors.NewBadRequest(fmt.Sprintf("port %d must be in the range 1-65535", p))
		}
	}
	pod, t, err := r.podKubelet(ctx, name)
	if err != nil {
		return nil, err
	}
	q := url.Values{}
	for _, p := range o.Ports {
		q.Add("port", strconv.Itoa(int(p)))
	}
	loc := kubeletURL(t, fmt.Sprintf("/portForward/%s/%s", pod.Namespace, pod.Name), q)
	h := upgradeHandler(loc, r.k.transport(t), false, true, res)
	return translator.NewTranslatingHandler(h, translator.NewTunnelingHandler(h), wsstream.IsWebSocketRequestWithTunnelingProtocol), nil
}

// joinPath appends the proxied path to a base location.
func joinPath(loc *url.URL, path string) {
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	loc.Path = strings.TrimSuffix(loc.Path, "/") + path
}

package nodeagent

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
)

// envSource reads the ConfigMaps and Secrets that pods' env and envFrom
// refer to, with the node's own credentials: the hub's Node authorizer lets
// a node read only objects referenced by pods bound to it. Each container
// start reads them afresh (kubelet's "Get" change-detection strategy), so a
// pod waiting for a missing object starts once it exists.
type envSource struct {
	client kubernetes.Interface
}

// ConfigMap returns namespace/name; a missing one is a NotFound error with
// kubelet's wording (`configmap "x" not found`).
func (s envSource) ConfigMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error) {
	cm, err := s.client.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "configmap"}, name)
	}
	return cm, err
}

// Secret returns namespace/name; a missing one is a NotFound error with
// kubelet's wording (`secret "x" not found`).
func (s envSource) Secret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	sec, err := s.client.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secret"}, name)
	}
	return sec, err
}

// event records a core/v1 Event about pod from this node, as kubelet does
// (source component "kubelet"). Best effort: failures are logged.
func (p *podSync) event(pod *corev1.Pod, eventType, reason, message string) {
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		// Named as client-go's event recorder names events.
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%v.%x", pod.Name, now.UnixNano()), Namespace: pod.Namespace},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name,
			UID: pod.UID, ResourceVersion: pod.ResourceVersion},
		Reason: reason, Message: message, Type: eventType,
		Source:         corev1.EventSource{Component: "kubelet", Host: p.a.cfg.NodeName},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: "kubelet", ReportingInstance: p.a.cfg.NodeName,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.client.CoreV1().Events(pod.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		p.a.log.Warn("recording event failed", "pod", pod.Namespace+"/"+pod.Name, "reason", reason, "err", err)
	}
	p.a.log.Debug("pod event", "pod", pod.Namespace+"/"+pod.Name, "type", eventType, "reason", reason, "message", message)
}

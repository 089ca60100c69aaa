package controllers

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// NodeLifecycleConfig configures the NodeLifecycle controller.
type NodeLifecycleConfig struct {
	Client kubernetes.Interface
	// GracePeriod without a lease renewal before a node is Unknown; zero
	// value 40s (kube-controller-manager's --node-monitor-grace-period).
	GracePeriod time.Duration
	// Interval between checks; zero value 5s.
	Interval time.Duration
	// Now; zero value time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// NodeLifecycle marks nodes whose agent stopped renewing its Lease as
// Ready=Unknown with the node.kubernetes.io/unreachable taint, marks their
// pods not Ready, and deletes pods bound to nodes that no longer exist.
type NodeLifecycle struct{ cfg NodeLifecycleConfig }

// NewNodeLifecycle validates cfg.
func NewNodeLifecycle(cfg NodeLifecycleConfig) (*NodeLifecycle, error) {
	if cfg.Client == nil {
		return nil, fmt.Errorf("node lifecycle: client is required")
	}
	if cfg.GracePeriod == 0 {
		cfg.GracePeriod = 40 * time.Second
	}
	if cfg.Interval == 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &NodeLifecycle{cfg: cfg}, nil
}

// Run checks every Interval until ctx ends.
func (c *NodeLifecycle) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(c.cfg.Client, 10*time.Minute)
	nodes := factory.Core().V1().Nodes()
	leases := factory.Coordination().V1().Leases()
	pods := factory.Core().V1().Pods()
	nodes.Informer()
	leases.Informer()
	pods.Informer()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), nodes.Informer().HasSynced, leases.Informer().HasSynced, pods.Informer().HasSynced) {
		return nil
	}
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		list, err := nodes.Lister().List(labels.Everything())
		if err != nil {
			return
		}
		names := map[string]bool{}
		for _, n := range list {
			names[n.Name] = true
			lease, err := leases.Lister().Leases(corev1.NamespaceNodeLease).Get(n.Name)
			if err != nil && !apierrors.IsNotFound(err) {
				continue
			}
			if err := c.check(ctx, n, lease); err != nil && ctx.Err() == nil {
				c.cfg.Logger.Warn("node lifecycle", "node", n.Name, "err", err)
			}
		}
		all, _ := pods.Lister().List(labels.Everything())
		for _, p := range all {
			if p.Spec.NodeName != "" && !names[p.Spec.NodeName] && c.cfg.Now().Sub(p.CreationTimestamp.Time) > c.cfg.GracePeriod {
				c.collect(ctx, p)
			}
		}
	}, c.cfg.Interval)
	return nil
}

// lastHeartbeat is the newer of the lease renewal and the Ready condition's
// heartbeat.
func lastHeartbeat(n *corev1.Node, lease *coordinationv1.Lease) time.Time {
	var t time.Time
	if lease != nil && lease.Spec.RenewTime != nil {
		t = lease.Spec.RenewTime.Time
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady && cond.LastHeartbeatTime.After(t) {
			t = cond.LastHeartbeatTime.Time
		}
	}
	if t.IsZero() {
		t = n.CreationTimestamp.Time
	}
	return t
}

func (c *NodeLifecycle) check(ctx context.Context, n *corev1.Node, lease *coordinationv1.Lease) error {
	if c.cfg.Now().Sub(lastHeartbeat(n, lease)) <= c.cfg.GracePeriod {
		return c.untaintIfReady(ctx, n)
	}
	changed := false
	n = n.DeepCopy()
	found := false
	for i := range n.Status.Conditions {
		cond := &n.Status.Conditions[i]
		if cond.Type != corev1.NodeReady {
			continue
		}
		found = true
		if cond.Status != corev1.ConditionUnknown {
			cond.Status, cond.Reason, cond.Message = corev1.ConditionUnknown, "NodeStatusUnknown", "Kubelet stopped posting node status."
			cond.LastTransitionTime = metav1.NewTime(c.cfg.Now())
			changed = true
		}
	}
	if !found {
		n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionUnknown,
			Reason: "NodeStatusNeverUpdated", Message: "Kubelet never posted node status.", LastTransitionTime: metav1.NewTime(c.cfg.Now())})
		changed = true
	}
	if changed {
		updated, err := c.cfg.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		if err != nil {
			return ignoreConflict(err)
		}
		n = updated
		c.cfg.Logger.Info("node is unreachable", "node", n.Name)
	}
	hasTaint := false
	for _, t := range n.Spec.Taints {
		if t.Key == corev1.TaintNodeUnreachable {
			hasTaint = true
		}
	}
	if !hasTaint {
		now := metav1.NewTime(c.cfg.Now())
		n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoExecute, TimeAdded: &now})
		if _, err := c.cfg.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			return ignoreConflict(err)
		}
	}
	return c.markPodsNotReady(ctx, n.Name)
}

// untaintIfReady removes the unreachable taint once the agent reports Ready.
func (c *NodeLifecycle) untaintIfReady(ctx context.Context, n *corev1.Node) error {
	ready := false
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
			ready = true
		}
	}
	var keep []corev1.Taint
	for _, t := range n.Spec.Taints {
		if t.Key != corev1.TaintNodeUnreachable {
			keep = append(keep, t)
		}
	}
	if !ready || len(keep) == len(n.Spec.Taints) {
		return nil
	}
	n = n.DeepCopy()
	n.Spec.Taints = keep
	_, err := c.cfg.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	if err == nil {
		c.cfg.Logger.Info("node is reachable again", "node", n.Name)
	}
	return ignoreConflict(err)
}

func (c *NodeLifecycle) markPodsNotReady(ctx context.Context, node string) error {
	list, err := c.cfg.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String()})
	if err != nil {
		return err
	}
	for i := range list.Items {
		p := &list.Items[i]
		changed := false
		for j := range p.Status.Conditions {
			cond := &p.Status.Conditions[j]
			if cond.Type == corev1.PodReady && cond.Status != corev1.ConditionFalse {
				cond.Status, cond.Reason, cond.LastTransitionTime = corev1.ConditionFalse, "NodeNotReady", metav1.NewTime(c.cfg.Now())
				changed = true
			}
		}
		if changed {
			if _, err := c.cfg.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); ignoreConflict(err) != nil {
				return err
			}
		}
	}
	return nil
}

// collect force-deletes a pod whose node object is gone (pod GC).
func (c *NodeLifecycle) collect(ctx context.Context, p *corev1.Pod) {
	zero := int64(0)
	err := c.cfg.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &p.UID}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		c.cfg.Logger.Warn("pod gc", "pod", p.Namespace+"/"+p.Name, "err", err)
		return
	}
	c.cfg.Logger.Info("deleted orphaned pod", "pod", p.Namespace+"/"+p.Name, "node", p.Spec.NodeName)
}

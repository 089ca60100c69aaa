package controllers

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// SchedulerConfig configures the Scheduler.
type SchedulerConfig struct {
	Client kubernetes.Interface
	// Name is the scheduler name pods ask for; zero value "default-scheduler".
	Name   string
	Logger *slog.Logger
}

// Scheduler is a tiny scheduler: it binds each unscheduled pod to a Ready,
// schedulable node that matches its nodeSelector and whose NoSchedule taints
// it tolerates, preferring the node with the fewest pods.
type Scheduler struct {
	cfg SchedulerConfig
}

// NewScheduler validates cfg.
func NewScheduler(cfg SchedulerConfig) (*Scheduler, error) {
	if cfg.Client == nil {
		return nil, fmt.Errorf("scheduler: client is required")
	}
	if cfg.Name == "" {
		cfg.Name = corev1.DefaultSchedulerName
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Scheduler{cfg: cfg}, nil
}

// Run schedules until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	// A queue per run: a replica that loses and regains the lease runs
	// again, and a shut-down queue would hand it no work.
	queue := newQueue("scheduler", 100*time.Millisecond, 5*time.Second)
	defer queue.ShutDown()
	factory := informers.NewSharedInformerFactory(s.cfg.Client, 10*time.Minute)
	pods := factory.Core().V1().Pods()
	nodes := factory.Core().V1().Nodes()
	enqueue := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName == "" && p.DeletionTimestamp == nil && p.Spec.SchedulerName == s.cfg.Name {
			if key, err := cache.MetaNamespaceKeyFunc(p); err == nil {
				queue.Add(key)
			}
		}
	}
	if _, err := pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }}); err != nil {
		return err
	}
	if err := pods.Informer().AddIndexers(cache.Indexers{byNode: func(obj any) ([]string, error) {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
			return []string{p.Spec.NodeName}, nil
		}
		return nil, nil
	}}); err != nil {
		return err
	}
	podLister, nodeLister, podIndex := pods.Lister(), nodes.Lister(), pods.Informer().GetIndexer()
	// Unschedulable pods are retried when a node appears or becomes
	// schedulable, not on every heartbeat.
	retryAll := func() {
		all, _ := podLister.List(labels.Everything())
		for _, p := range all {
			enqueue(p)
		}
	}
	if _, err := nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { retryAll() },
		UpdateFunc: func(o, n any) {
			old, cur := o.(*corev1.Node), n.(*corev1.Node)
			if schedulable(cur) && (!schedulable(old) || !labels.Equals(old.Labels, cur.Labels) || len(old.Spec.Taints) != len(cur.Spec.Taints)) {
				retryAll()
			}
		},
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), pods.Informer().HasSynced, nodes.Informer().HasSynced) {
		return nil
	}
	process(ctx, queue, s.cfg.Logger, "scheduler", func(ctx context.Context, key string) (time.Duration, error) {
		retry, err := s.schedule(ctx, key, podLister, nodeLister, podIndex)
		if retry {
			return 30 * time.Second, err
		}
		return 0, err
	})
	return nil
}

// Feasible reports whether pod may run on node, and why not.
func Feasible(pod *corev1.Pod, node *corev1.Node) (bool, string) {
	if node.Spec.Unschedulable {
		return false, "node is unschedulable"
	}
	ready := false
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			ready = true
		}
	}
	if !ready {
		return false, "node is not Ready"
	}
	if !labels.SelectorFromSet(pod.Spec.NodeSelector).Matches(labels.Set(node.Labels)) {
		return false, "node does not match the pod's nodeSelector"
	}
	for _, t := range node.Spec.Taints {
		if t.Effect != corev1.TaintEffectNoSchedule && t.Effect != corev1.TaintEffectNoExecute {
			continue
		}
		tolerated := false
		for _, tol := range pod.Spec.Tolerations {
			if tol.ToleratesTaint(klog.Background(), &t, false) {
				tolerated = true
				break
			}
		}
		if !tolerated {
			return false, fmt.Sprintf("node has taint {%s: %s} that the pod does not tolerate", t.Key, t.Value)
		}
	}
	return true, ""
}

// byNode indexes pods by spec.nodeName.
const byNode = "byNode"

func schedulable(n *corev1.Node) bool {
	if n.Spec.Unschedulable {
		return false
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (s *Scheduler) schedule(ctx context.Context, key string, podLister corelisters.PodLister, nodeLister corelisters.NodeLister, podIndex cache.Indexer) (bool, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return false, nil
	}
	pod, err := podLister.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) || (err == nil && (pod.Spec.NodeName != "" || pod.DeletionTimestamp != nil)) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	nodes, err := nodeLister.List(labels.Everything())
	if err != nil {
		return false, err
	}
	load := map[string]int{}
	var candidates []*corev1.Node
	reasons := map[string]int{}
	for _, n := range nodes {
		if ok, why := Feasible(pod, n); ok {
			candidates = append(candidates, n)
			bound, _ := podIndex.ByIndex(byNode, n.Name)
			load[n.Name] = len(bound)
		} else {
			reasons[why]++
		}
	}
	if len(candidates) == 0 {
		msg := fmt.Sprintf("0/%d nodes are available", len(nodes))
		for why, n := range reasons {
			msg += fmt.Sprintf(": %d %s", n, why)
		}
		return true, s.unschedulable(ctx, pod, msg)
	}
	sort.Slice(candidates, func(i, j int) bool {
		if load[candidates[i].Name] != load[candidates[j].Name] {
			return load[candidates[i].Name] < load[candidates[j].Name]
		}
		return candidates[i].Name < candidates[j].Name
	})
	target := candidates[0].Name
	err = s.cfg.Client.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: ns, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: target},
	}, metav1.CreateOptions{})
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("bind to %s: %w", target, err)
	}
	s.cfg.Logger.Debug("scheduled", "pod", key, "node", target)
	return false, nil
}

func (s *Scheduler) unschedulable(ctx context.Context, pod *corev1.Pod, msg string) error {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Message == msg {
			return nil
		}
	}
	pod = pod.DeepCopy()
	var conds []corev1.PodCondition
	for _, c := range pod.Status.Conditions {
		if c.Type != corev1.PodScheduled {
			conds = append(conds, c)
		}
	}
	pod.Status.Conditions = append(conds, corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
		Reason: corev1.PodReasonUnschedulable, Message: msg, LastTransitionTime: metav1.Now()})
	_, err := s.cfg.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	return ignoreConflict(err)
}

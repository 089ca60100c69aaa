package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"

	"github.com/tether-dev/tether/internal/nodeagent/runtime"
	"github.com/tether-dev/tether/internal/nodeagent/servicenet"
)

// podSync watches the pods bound to this node, hands them to the runtime
// and writes their status back.
type podSync struct {
	a      *Agent
	client kubernetes.Interface
	rt     *runtime.Runtime
	queue  workqueue.TypedRateLimitingInterface[types.UID]

	mu     sync.Mutex
	keys   map[types.UID]string // uid → namespace/name
	tokens map[types.UID]time.Time
	lister cache.Indexer
	synced bool

	proxy *servicenet.Proxy

	caMu    sync.Mutex
	caCache map[string]cachedCA // namespace → kube-root-ca.crt
}

type cachedCA struct {
	pem []byte
	at  time.Time
}

// rootCA returns the namespace's kube-root-ca.crt bundle (cached for a
// minute), or the agent's cluster CA when it cannot be read.
func (p *podSync) rootCA(ctx context.Context, ns string) []byte {
	p.caMu.Lock()
	c, ok := p.caCache[ns]
	p.caMu.Unlock()
	if ok && time.Since(c.at) < time.Minute {
		return c.pem
	}
	caPEM := p.a.caPEM
	if cm, err := p.client.CoreV1().ConfigMaps(ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{}); err == nil && cm.Data["ca.crt"] != "" {
		caPEM = []byte(cm.Data["ca.crt"])
	}
	p.caMu.Lock()
	if p.caCache == nil {
		p.caCache = map[string]cachedCA{}
	}
	p.caCache[ns] = cachedCA{pem: caPEM, at: time.Now()}
	p.caMu.Unlock()
	return caPEM
}

func newPodSync(a *Agent, client kubernetes.Interface) *podSync {
	return &podSync{
		a: a, client: client,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[types.UID](),
			workqueue.TypedRateLimitingQueueConfig[types.UID]{Name: "pods"}),
		keys: map[types.UID]string{}, tokens: map[types.UID]time.Time{},
	}
}

func (p *podSync) enqueue(uid types.UID) { p.queue.Add(uid) }

func (p *podSync) run(ctx context.Context) error {
	defer p.queue.ShutDown()
	factory := informers.NewSharedInformerFactoryWithOptions(p.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", p.a.cfg.NodeName).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	p.mu.Lock()
	p.lister = inf.GetIndexer()
	p.mu.Unlock()
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.onPod(obj) },
		UpdateFunc: func(_, obj any) { p.onPod(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if pod, ok := obj.(*corev1.Pod); ok {
				p.mu.Lock()
				delete(p.keys, pod.UID)
				delete(p.tokens, pod.UID)
				p.mu.Unlock()
				p.rt.RemovePod(pod.UID)
				_ = os.RemoveAll(p.saDir(pod.UID))
			}
		},
	})
	if err != nil {
		return fmt.Errorf("pod informer: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil
	}
	// Pods adopted from disk that no longer exist are removed.
	for _, uid := range p.rt.UIDs() {
		p.mu.Lock()
		_, ok := p.keys[uid]
		p.mu.Unlock()
		if !ok {
			p.a.log.Info("removing pod that no longer exists", "uid", uid)
			p.rt.RemovePod(uid)
		}
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p.processNext(ctx) {
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.refreshTokens(ctx)
	}()
	<-ctx.Done()
	p.queue.ShutDown()
	wg.Wait()
	return nil
}

func (p *podSync) onPod(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	p.mu.Lock()
	p.keys[pod.UID] = pod.Namespace + "/" + pod.Name
	p.mu.Unlock()
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		if pod.DeletionTimestamp == nil {
			if _, known := p.rt.Status(pod.UID); !known {
				return // finished before; nothing to run
			}
		}
	}
	p.rt.SyncPod(pod)
	p.queue.Add(pod.UID)
}

func (p *podSync) processNext(ctx context.Context) bool {
	uid, shutdown := p.queue.Get()
	if shutdown {
		return false
	}
	defer p.queue.Done(uid)
	if err := p.syncStatus(ctx, uid); err != nil {
		if ctx.Err() == nil {
			p.a.log.Debug("pod status sync failed", "uid", uid, "err", err)
			p.queue.AddRateLimited(uid)
		}
		return true
	}
	p.queue.Forget(uid)
	return true
}

func (p *podSync) get(uid types.UID) *corev1.Pod {
	p.mu.Lock()
	key, ok := p.keys[uid]
	lister := p.lister
	p.mu.Unlock()
	if !ok || lister == nil {
		return nil
	}
	obj, exists, err := lister.GetByKey(key)
	if err != nil || !exists {
		return nil
	}
	pod, _ := obj.(*corev1.Pod)
	if pod == nil || pod.UID != uid {
		return nil
	}
	return pod
}

// syncStatus posts the runtime's view of a pod, and finishes graceful
// deletion with a grace-0 delete once all its processes have exited.
func (p *podSync) syncStatus(ctx context.Context, uid types.UID) error {
	pod := p.get(uid)
	if pod == nil {
		return nil
	}
	st, ok := p.rt.Status(uid)
	if !ok {
		return nil
	}
	if pod.DeletionTimestamp != nil && p.rt.Terminated(uid) {
		err := p.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: ptr.To[int64](0),
			Preconditions:      &metav1.Preconditions{UID: &uid},
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("final delete: %w", err)
		}
		return nil
	}
	mergeStatus(&st, &pod.Status)
	if apiequality.Semantic.DeepEqual(st, pod.Status) {
		return nil
	}
	updated := pod.DeepCopy()
	updated.Status = st
	_, err := p.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// mergeStatus keeps fields the runtime does not own and the transition
// times of unchanged conditions, so identical states compare equal.
func mergeStatus(st, old *corev1.PodStatus) {
	for i := range st.Conditions {
		for _, oc := range old.Conditions {
			if oc.Type == st.Conditions[i].Type && oc.Status == st.Conditions[i].Status {
				st.Conditions[i].LastTransitionTime = oc.LastTransitionTime
				st.Conditions[i].LastProbeTime = oc.LastProbeTime
			}
		}
	}
	if old.StartTime != nil {
		st.StartTime = old.StartTime
	}
	st.NominatedNodeName = old.NominatedNodeName
	if old.QOSClass != "" {
		st.QOSClass = old.QOSClass
	}
	for i := range st.ContainerStatuses {
		keepTimes(&st.ContainerStatuses[i], old.ContainerStatuses)
	}
	for i := range st.InitContainerStatuses {
		keepTimes(&st.InitContainerStatuses[i], old.InitContainerStatuses)
	}
}

func keepTimes(cs *corev1.ContainerStatus, old []corev1.ContainerStatus) {
	for _, o := range old {
		if o.Name != cs.Name {
			continue
		}
		if cs.State.Terminated != nil && o.State.Terminated != nil && cs.State.Terminated.ExitCode == o.State.Terminated.ExitCode &&
			cs.State.Terminated.StartedAt.Equal(&o.State.Terminated.StartedAt) {
			cs.State.Terminated.FinishedAt = o.State.Terminated.FinishedAt
		}
	}
}

// ---- service environment and service-account credentials ----

// serviceEnv returns KUBERNETES_SERVICE_HOST/PORT: the `kubernetes`
// Service VIP when this node's service proxy serves it, else the hub
// address the agent uses (documented fallback).
func (p *podSync) serviceEnv(*corev1.Pod) []string {
	var host, port string
	if p.proxy != nil {
		if addr, ok := p.proxy.Addr(metav1.NamespaceDefault, "kubernetes"); ok {
			host, port, _ = net.SplitHostPort(addr)
		}
	}
	if host == "" {
		u, err := url.Parse(p.a.server)
		if err != nil {
			return nil
		}
		host, port = u.Hostname(), u.Port()
		if port == "" {
			port = "443"
		}
	}
	hp := net.JoinHostPort(host, port)
	return []string{
		"KUBERNETES_SERVICE_HOST=" + host,
		"KUBERNETES_SERVICE_PORT=" + port,
		"KUBERNETES_SERVICE_PORT_HTTPS=" + port,
		"KUBERNETES_PORT=tcp://" + hp,
		"KUBERNETES_PORT_443_TCP=tcp://" + hp,
		"KUBERNETES_PORT_443_TCP_PROTO=tcp",
		"KUBERNETES_PORT_443_TCP_ADDR=" + host,
		"KUBERNETES_PORT_443_TCP_PORT=" + port,
	}
}

// SATokenLifetime is requested for pod service-account tokens.
const SATokenLifetime = time.Hour

func (p *podSync) saDir(uid types.UID) string {
	return filepath.Join(p.a.cfg.DataDir, "serviceaccounts", string(uid))
}

// prepareVolumes writes the pod's service-account token, ca.crt and
// namespace, and tells the containers where they are.
func (p *podSync) prepareVolumes(ctx context.Context, pod *corev1.Pod) (runtime.Volumes, error) {
	if pod.Spec.AutomountServiceAccountToken != nil && !*pod.Spec.AutomountServiceAccountToken {
		return runtime.Volumes{}, nil
	}
	if err := p.writeSA(ctx, pod); err != nil {
		return runtime.Volumes{}, err
	}
	dir := p.saDir(pod.UID)
	return runtime.Volumes{
		Env:    []string{"TETHER_SERVICEACCOUNT_DIR=" + dir},
		Mounts: []runtime.Mount{{HostPath: dir, ContainerPath: ServiceAccountMountPath}},
	}, nil
}

// ServiceAccountMountPath is where pods find their credentials (as root;
// see runtime.Mount).
const ServiceAccountMountPath = "/var/run/secrets/kubernetes.io/serviceaccount"

func (p *podSync) writeSA(ctx context.Context, pod *corev1.Pod) error {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	tr, err := p.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: ptr.To(int64(SATokenLifetime / time.Second)),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("service account token for %s/%s: %w", pod.Namespace, sa, err)
	}
	if tr.Status.Token == "" {
		return errors.New("service account token: empty TokenRequest response")
	}
	caPEM := p.rootCA(ctx, pod.Namespace)
	dir := p.saDir(pod.UID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("service account dir: %w", err)
	}
	for name, data := range map[string][]byte{"token": []byte(tr.Status.Token), "ca.crt": caPEM, "namespace": []byte(pod.Namespace)} {
		if err := writeFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	issued := time.Now()
	expires := tr.Status.ExpirationTimestamp.Time
	if expires.IsZero() || !expires.After(issued) {
		expires = issued.Add(SATokenLifetime)
	}
	refresh := issued.Add(expires.Sub(issued) * 8 / 10)
	p.mu.Lock()
	p.tokens[pod.UID] = refresh
	p.mu.Unlock()
	return nil
}

// refreshTokens renews pod tokens at 80% of their lifetime.
func (p *podSync) refreshTokens(ctx context.Context) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		var due []types.UID
		p.mu.Lock()
		for uid, at := range p.tokens {
			if now.After(at) {
				due = append(due, uid)
			}
		}
		p.mu.Unlock()
		for _, uid := range due {
			pod := p.get(uid)
			if pod == nil || pod.DeletionTimestamp != nil {
				continue
			}
			if err := p.writeSA(ctx, pod); err != nil {
				p.a.log.Warn("service account token refresh failed", "pod", pod.Namespace+"/"+pod.Name, "err", err)
			}
		}
	}
}

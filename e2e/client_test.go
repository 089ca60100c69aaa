package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/client-go/util/retry"
)

// eventTimeout bounds every wait for a watch or informer event.
const eventTimeout = 30 * time.Second

// testNamespace creates a namespace for one test on the shared hub.
func testNamespace(t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	name := "t-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	if len(name) > 50 {
		name = name[:50]
	}
	name = strings.TrimRight(name, "-") + "-" + rand.String(5)
	ctx := testContext(t, 30*time.Second)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	return name
}

func configMap(name string, data map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data}
}

func TestInformerSeesAddUpdateDelete(t *testing.T) {
	h := sharedHub(t)
	cs := h.Client(t)
	ns := testNamespace(t, cs)
	ctx := testContext(t, 2*time.Minute)

	type event struct {
		kind string
		cm   *corev1.ConfigMap
	}
	events := make(chan event, 100)
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(ns))
	inf := factory.Core().V1().ConfigMaps().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { events <- event{"add", obj.(*corev1.ConfigMap)} },
		UpdateFunc: func(_, obj any) { events <- event{"update", obj.(*corev1.ConfigMap)} },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			events <- event{"delete", obj.(*corev1.ConfigMap)}
		},
	}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	factory.Start(stop)
	t.Cleanup(func() { close(stop); factory.Shutdown() })
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("informer did not sync")
	}
	next := func(want string) *corev1.ConfigMap {
		t.Helper()
		timeout := time.After(eventTimeout)
		for {
			select {
			case ev := <-events:
				if ev.cm.Name != "inf" {
					continue // e.g. kube-root-ca.crt, published into every namespace
				}
				if ev.kind != want {
					t.Fatalf("informer event %s %s/%s, want %s", ev.kind, ev.cm.Name, ev.cm.ResourceVersion, want)
				}
				return ev.cm
			case <-timeout:
				t.Fatalf("no informer %s event within %s", want, eventTimeout)
			}
		}
	}
	cms := cs.CoreV1().ConfigMaps(ns)
	created, err := cms.Create(ctx, configMap("inf", map[string]string{"v": "1"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := next("add"); got.UID != created.UID || got.Data["v"] != "1" {
		t.Errorf("add event %+v", got)
	}
	created.Data["v"] = "2"
	updated, err := cms.Update(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := next("update"); got.Data["v"] != "2" || got.ResourceVersion != updated.ResourceVersion {
		t.Errorf("update event %+v", got)
	}
	if err := cms.Delete(ctx, "inf", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := next("delete"); got.Name != "inf" {
		t.Errorf("delete event %+v", got)
	}
	if _, ok, _ := inf.GetStore().GetByKey(ns + "/inf"); ok {
		t.Error("informer cache still holds the deleted object")
	}
}

func TestPaginatedList(t *testing.T) {
	h := sharedHub(t)
	cs := h.Client(t)
	ns := testNamespace(t, cs)
	ctx := testContext(t, 2*time.Minute)
	const total, limit = 23, 5
	for i := 0; i < total; i++ {
		if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap(fmt.Sprintf("page-%02d", i), nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The namespace may hold objects of its own (kube-root-ca.crt).
	all, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := len(all.Items)
	if want < total {
		t.Fatalf("namespace holds %d configmaps, want at least %d", want, total)
	}
	seen := map[string]bool{}
	var firstRV string
	opts := metav1.ListOptions{Limit: limit}
	for page := 0; ; page++ {
		if page > total {
			t.Fatal("pagination does not end")
		}
		list, err := cs.CoreV1().ConfigMaps(ns).List(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		if page == 0 {
			firstRV = list.ResourceVersion
			// A write between pages must not show up: the list is a snapshot.
			if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap("page-zz-late", nil), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		} else if list.ResourceVersion != firstRV {
			t.Errorf("page %d resourceVersion %s, want the first page's %s", page, list.ResourceVersion, firstRV)
		}
		if len(list.Items) > limit {
			t.Fatalf("page %d has %d items, limit %d", page, len(list.Items), limit)
		}
		for _, cm := range list.Items {
			if seen[cm.Name] {
				t.Errorf("%s listed twice", cm.Name)
			}
			seen[cm.Name] = true
		}
		if list.Continue == "" {
			break
		}
		if list.RemainingItemCount == nil || *list.RemainingItemCount != int64(want-len(seen)) {
			t.Errorf("page %d remainingItemCount %v, want %d", page, ptrString(list.RemainingItemCount), want-len(seen))
		}
		opts.Continue = list.Continue
	}
	if len(seen) != want || seen["page-zz-late"] {
		t.Errorf("pages held %d objects (late write included: %v), want %d", len(seen), seen["page-zz-late"], want)
	}
	// A garbled continue token is a 400, not a crash.
	_, err = cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{Limit: 2, Continue: "not-a-token"})
	if !apierrors.IsBadRequest(err) {
		t.Errorf("list with a garbled continue token: %v, want 400", err)
	}
}

func TestConflictOnStaleUpdate(t *testing.T) {
	h := sharedHub(t)
	cs := h.Client(t)
	ns := testNamespace(t, cs)
	ctx := testContext(t, time.Minute)
	cms := cs.CoreV1().ConfigMaps(ns)
	cm, err := cms.Create(ctx, configMap("c", map[string]string{"v": "0"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a, b := cm.DeepCopy(), cm.DeepCopy()
	a.Data["v"] = "a"
	if _, err := cms.Update(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	b.Data["v"] = "b"
	_, err = cms.Update(ctx, b, metav1.UpdateOptions{})
	var status apierrors.APIStatus
	if !apierrors.IsConflict(err) || !errors.As(err, &status) || status.Status().Code != http.StatusConflict {
		t.Fatalf("stale update: %v, want 409 Conflict", err)
	}
	if got, _ := cms.Get(ctx, "c", metav1.GetOptions{}); got.Data["v"] != "a" {
		t.Errorf("after the conflict the object holds %q", got.Data["v"])
	}
	// Stale resourceVersion precondition on delete is a conflict too.
	rv := cm.ResourceVersion
	err = cms.Delete(ctx, "c", metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
	if !apierrors.IsConflict(err) {
		t.Errorf("delete with stale resourceVersion precondition: %v, want 409", err)
	}
}

// contentTypes records the Content-Type of every response.
type contentTypes struct {
	next http.RoundTripper
	mu   sync.Mutex
	seen map[string]int
}

func (c *contentTypes) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(req)
	if err == nil {
		c.mu.Lock()
		c.seen[strings.Split(resp.Header.Get("Content-Type"), ";")[0]]++
		c.mu.Unlock()
	}
	return resp, err
}

func TestProtobuf(t *testing.T) {
	h := sharedHub(t)
	ns := testNamespace(t, h.Client(t))
	ctx := testContext(t, time.Minute)
	cfg := h.Config(t)
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf
	rec := &contentTypes{seen: map[string]int{}}
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { rec.next = rt; return rec })
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pods := cs.CoreV1().Pods(ns)
	w, err := pods.Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "pb", Labels: map[string]string{"a": "b"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox:1.36", Command: []string{"sleep", "1"}}}}}
	created, err := pods.Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if created.Spec.Containers[0].ImagePullPolicy != corev1.PullIfNotPresent || created.Status.Phase != corev1.PodPending {
		t.Errorf("created pod not defaulted: pullPolicy %q phase %q", created.Spec.Containers[0].ImagePullPolicy, created.Status.Phase)
	}
	got, err := pods.Get(ctx, "pb", metav1.GetOptions{})
	if err != nil || got.UID != created.UID {
		t.Fatalf("get: %v", err)
	}
	// Controllers may write the pod too; retry on conflict as clients do.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(ctx, "pb", metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Status.Conditions = append(cur.Status.Conditions, corev1.PodCondition{Type: "Example", Status: corev1.ConditionTrue})
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	list, err := pods.List(ctx, metav1.ListOptions{LabelSelector: "a=b"})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("list: %v %v", err, list)
	}
	select {
	case ev := <-w.ResultChan():
		if ev.Type != watch.Added || ev.Object.(*corev1.Pod).Name != "pb" {
			t.Errorf("protobuf watch event %v", ev)
		}
	case <-time.After(eventTimeout):
		t.Fatal("no protobuf watch event")
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.seen[runtime.ContentTypeProtobuf] < 4 || rec.seen["application/json"] > 0 {
		t.Errorf("response content types %v, want protobuf only", rec.seen)
	}
}

func TestNamespaceDeletionDeletesContents(t *testing.T) {
	h := sharedHub(t)
	cs := h.Client(t)
	ns := testNamespace(t, cs)
	ctx := testContext(t, 2*time.Minute)
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap("cm", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s"}, StringData: map[string]string{"k": "v"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "svc"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := cs.CoreV1().Namespaces().Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + ns, ResourceVersion: nsObj.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if err := cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	sawTerminating := false
	for done := false; !done; {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("namespace watch closed early")
			}
			n, _ := ev.Object.(*corev1.Namespace)
			switch {
			case n == nil:
				t.Fatalf("namespace watch: %v", ev.Object)
			case ev.Type == watch.Modified && n.Status.Phase == corev1.NamespaceTerminating:
				if n.DeletionTimestamp == nil {
					t.Error("Terminating namespace without deletionTimestamp")
				}
				sawTerminating = true
			case ev.Type == watch.Deleted:
				done = true
			}
		case <-time.After(eventTimeout):
			t.Fatal("namespace not deleted in time")
		}
	}
	if !sawTerminating {
		t.Error("namespace went away without being Terminating first")
	}
	for what, err := range map[string]error{
		"configmap": getErr(cs.CoreV1().ConfigMaps(ns).Get(ctx, "cm", metav1.GetOptions{})),
		"secret":    getErr(cs.CoreV1().Secrets(ns).Get(ctx, "s", metav1.GetOptions{})),
		"service":   getErr(cs.CoreV1().Services(ns).Get(ctx, "svc", metav1.GetOptions{})),
	} {
		if !apierrors.IsNotFound(err) {
			t.Errorf("%s after namespace deletion: %v, want NotFound", what, err)
		}
	}
	// The service's cluster IP was released with it.
	other := testNamespace(t, cs)
	reuse := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "reuse"}, Spec: corev1.ServiceSpec{ClusterIP: svc.Spec.ClusterIP, Ports: []corev1.ServicePort{{Port: 80}}}}
	if _, err := cs.CoreV1().Services(other).Create(ctx, reuse, metav1.CreateOptions{}); err != nil {
		t.Errorf("cluster IP %s of a service deleted with its namespace is still taken: %v", svc.Spec.ClusterIP, err)
	}
	// Creating in the deleted namespace fails.
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap("late", nil), metav1.CreateOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("create in a deleted namespace: %v, want NotFound", err)
	}
}

func ptrString[T any](p *T) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprint(*p)
}

func getErr[T any](_ T, err error) error { return err }

func TestGenerateNameUIDCreationTimestamp(t *testing.T) {
	h := sharedHub(t)
	cs := h.Client(t)
	ns := testNamespace(t, cs)
	ctx := testContext(t, time.Minute)
	before := time.Now().Add(-2 * time.Second).Truncate(time.Second)
	names, uids := map[string]bool{}, map[string]bool{}
	for i := 0; i < 5; i++ {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{GenerateName: "gen-"}}
		got, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(got.Name, "gen-") || len(got.Name) != len("gen-")+5 || got.GenerateName != "gen-" {
			t.Errorf("generated name %q (generateName %q)", got.Name, got.GenerateName)
		}
		if got.UID == "" || len(got.UID) != 36 {
			t.Errorf("uid %q", got.UID)
		}
		ts := got.CreationTimestamp.Time
		if ts.Before(before) || ts.After(time.Now().Add(2*time.Second)) {
			t.Errorf("creationTimestamp %v not within the create call (from %v)", ts, before)
		}
		if names[got.Name] || uids[string(got.UID)] {
			t.Errorf("duplicate name %q or uid %q", got.Name, got.UID)
		}
		names[got.Name], uids[string(got.UID)] = true, true
		// Clients cannot choose uid or creationTimestamp on update.
		changed := got.DeepCopy()
		changed.UID = "00000000-0000-0000-0000-000000000000"
		if _, err := cs.CoreV1().ConfigMaps(ns).Update(ctx, changed, metav1.UpdateOptions{}); err == nil {
			t.Errorf("update changing uid accepted")
		}
	}
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{GenerateName: "svc-"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
	if err != nil || !strings.HasPrefix(svc.Name, "svc-") || svc.Spec.ClusterIP == "" {
		t.Fatalf("service with generateName: %v %+v", err, svc)
	}
	// Missing name and generateName is a 422 naming the field.
	_, err = cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{}, metav1.CreateOptions{})
	wantInvalid(t, err, "metadata.name")
}

func wantInvalid(t *testing.T, err error, field string) {
	t.Helper()
	var status apierrors.APIStatus
	if !apierrors.IsInvalid(err) || !errors.As(err, &status) {
		t.Fatalf("got %v, want 422 Invalid", err)
	}
	s := status.Status()
	if s.Code != http.StatusUnprocessableEntity || s.Details == nil {
		t.Fatalf("status %+v", s)
	}
	for _, c := range s.Details.Causes {
		if c.Field == field {
			return
		}
	}
	t.Errorf("422 causes %+v lack field %s", s.Details.Causes, field)
}

func TestServiceClusterIPAllocation(t *testing.T) {
	h := sharedHub(t)
	cs := h.Client(t)
	ns := testNamespace(t, cs)
	ctx := testContext(t, 2*time.Minute)
	svcs := cs.CoreV1().Services(ns)
	_, cidr, _ := net.ParseCIDR("10.96.0.0/12")
	mk := func(name, ip string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: []corev1.ServicePort{{Port: 80}}}}
	}
	kube, err := cs.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil || kube.Spec.ClusterIP != "10.96.0.1" {
		t.Fatalf("kubernetes service: %v %v", err, kube)
	}
	ips := map[string]string{kube.Spec.ClusterIP: "kubernetes"}
	for i := 0; i < 10; i++ {
		s, err := svcs.Create(ctx, mk(fmt.Sprintf("s%d", i), ""), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ip := net.ParseIP(s.Spec.ClusterIP)
		if ip == nil || !cidr.Contains(ip) || ip.Equal(net.ParseIP("10.96.0.0")) || ip.Equal(net.ParseIP("10.111.255.255")) {
			t.Errorf("%s got clusterIP %q outside the usable range", s.Name, s.Spec.ClusterIP)
		}
		if owner, dup := ips[s.Spec.ClusterIP]; dup {
			t.Errorf("%s got clusterIP %s, already held by %s", s.Name, s.Spec.ClusterIP, owner)
		}
		if len(s.Spec.ClusterIPs) != 1 || s.Spec.ClusterIPs[0] != s.Spec.ClusterIP {
			t.Errorf("%s clusterIPs %v", s.Name, s.Spec.ClusterIPs)
		}
		ips[s.Spec.ClusterIP] = s.Name
	}
	// Explicit IPs: taken → 422, out of range → 422, free → granted.
	s0, _ := svcs.Get(ctx, "s0", metav1.GetOptions{})
	_, err = svcs.Create(ctx, mk("dup", s0.Spec.ClusterIP), metav1.CreateOptions{})
	wantInvalid(t, err, "spec.clusterIPs[0]")
	if err != nil && !strings.Contains(err.Error(), "already allocated") {
		t.Errorf("duplicate IP error %q does not say it is allocated", err)
	}
	_, err = svcs.Create(ctx, mk("outside", "192.168.0.10"), metav1.CreateOptions{})
	wantInvalid(t, err, "spec.clusterIPs[0]")
	_, err = svcs.Create(ctx, mk("kube-dup", "10.96.0.1"), metav1.CreateOptions{})
	wantInvalid(t, err, "spec.clusterIPs[0]")
	// Server dry run allocates nothing.
	if _, err := svcs.Create(ctx, mk("dry", "10.100.7.7"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Fatal(err)
	}
	if _, err := svcs.Create(ctx, mk("explicit", "10.100.7.7"), metav1.CreateOptions{}); err != nil {
		t.Fatalf("explicit free IP after a dry run: %v", err)
	}
	// The IP is immutable.
	e, _ := svcs.Get(ctx, "explicit", metav1.GetOptions{})
	e.Spec.ClusterIP, e.Spec.ClusterIPs = "10.100.7.8", []string{"10.100.7.8"}
	if _, err := svcs.Update(ctx, e, metav1.UpdateOptions{}); !apierrors.IsInvalid(err) {
		t.Errorf("changing clusterIP: %v, want 422", err)
	}
	// Release on delete: the same IP can be taken again.
	if err := svcs.Delete(ctx, "s0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := svcs.Create(ctx, mk("reuse", s0.Spec.ClusterIP), metav1.CreateOptions{}); err != nil {
		t.Errorf("IP %s of a deleted service not released: %v", s0.Spec.ClusterIP, err)
	}
	// A failed create (invalid object) does not leak the IP it asked for.
	bad := mk("bad", "10.100.9.9")
	bad.Spec.Ports[0].Port = 0
	if _, err := svcs.Create(ctx, bad, metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
		t.Fatalf("invalid service: %v", err)
	}
	if _, err := svcs.Create(ctx, mk("after-bad", "10.100.9.9"), metav1.CreateOptions{}); err != nil {
		t.Errorf("IP asked for by an invalid service is leaked: %v", err)
	}
	// Headless and ExternalName services get no IP.
	headless, err := svcs.Create(ctx, mk("headless", corev1.ClusterIPNone), metav1.CreateOptions{})
	if err != nil || headless.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("headless: %v %v", err, headless)
	}
}

// TestWatchResumesAfterRestart keeps a retrying watch open across a hub
// restart on the same data dir, and resumes a plain watch from a
// resourceVersion written before the restart.
func TestWatchResumesAfterRestart(t *testing.T) {
	h := startHub(t)
	cs := h.Client(t)
	ns := testNamespace(t, cs)
	ctx := testContext(t, 3*time.Minute)
	cms := cs.CoreV1().ConfigMaps(ns)
	first, err := cms.Create(ctx, configMap("before", map[string]string{"v": "1"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rw, err := watchtools.NewRetryWatcherWithContext(ctx, first.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return cms.Watch(ctx, o)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Stop()
	mine := func(name string) bool { return name == "before" || name == "after" } // not kube-root-ca.crt
	next := func(what string) *corev1.ConfigMap {
		t.Helper()
		timeout := time.After(readyTimeout)
		for {
			select {
			case ev, ok := <-rw.ResultChan():
				if !ok {
					t.Fatalf("%s: retry watcher closed", what)
				}
				cm, ok := ev.Object.(*corev1.ConfigMap)
				if !ok {
					t.Fatalf("%s: event %s %#v", what, ev.Type, ev.Object)
				}
				if mine(cm.Name) {
					return cm
				}
			case <-timeout:
				t.Fatalf("%s: no event", what)
			}
		}
	}
	first.Data["v"] = "2"
	if _, err := cms.Update(ctx, first, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if cm := next("before restart"); cm.Data["v"] != "2" {
		t.Fatalf("event before restart: %+v", cm.Data)
	}
	lastRV := first.ResourceVersion

	if err := h.Restart(); err != nil {
		t.Fatal(err)
	}
	// The same client (and the retry watcher, which shares cms) reconnects
	// to the restarted process on the same port.
	got, err := cms.Get(ctx, "before", metav1.GetOptions{})
	if err != nil || got.Data["v"] != "2" || got.UID != first.UID {
		t.Fatalf("after restart: %v %+v", err, got)
	}
	if _, err := cms.Create(ctx, configMap("after", map[string]string{"v": "3"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if cm := next("after restart"); cm.Name != "after" {
		t.Fatalf("retry watcher after restart got %s", cm.Name)
	}
	// A fresh watch from the pre-restart resourceVersion replays the update
	// and the create in order.
	w, err := cms.Watch(ctx, metav1.ListOptions{ResourceVersion: lastRV})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	var seen []string
	for len(seen) < 2 {
		select {
		case ev := <-w.ResultChan():
			cm, ok := ev.Object.(*corev1.ConfigMap)
			if !ok {
				t.Fatalf("resumed watch: %s %#v", ev.Type, ev.Object)
			}
			if mine(cm.Name) {
				seen = append(seen, string(ev.Type)+":"+cm.Name)
			}
		case <-time.After(eventTimeout):
			t.Fatalf("resumed watch: only %v", seen)
		}
	}
	if strings.Join(seen, ",") != "MODIFIED:before,ADDED:after" {
		t.Errorf("watch from resourceVersion %s after restart replayed %v", lastRV, seen)
	}
}

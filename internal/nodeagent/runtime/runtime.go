// Package runtime is tether's process pod runtime: a container is a host
// process started from the container's command and args (the image is
// recorded, never pulled), with its env and working directory, supervised
// according to the pod's restart policy with CrashLoopBackOff, init
// containers, probes, graceful termination and timestamped log files.
//
// Container processes outlive the agent: their stdout and stderr are FIFOs
// that the process itself also holds open for reading, so a dead agent never
// causes SIGPIPE; output waits in the pipe until the restarted agent adopts
// the process again (by pid and kernel start time, so a recycled pid is
// never mistaken for the container).
package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Config configures a Runtime. Zero values are documented per field.
type Config struct {
	// Dir keeps pod state, FIFOs and logs; required.
	Dir string
	// HostIP is reported as status.hostIP and, with host networking, podIP.
	HostIP net.IP
	// OnChange is called (from any goroutine, never under a lock) whenever a
	// pod's status may have changed. Optional.
	OnChange func(uid types.UID)
	// Env returns extra environment for a pod's containers (service
	// discovery, KUBERNETES_SERVICE_HOST...). Optional.
	Env func(pod *corev1.Pod) []string
	// EnvSource reads the ConfigMaps and Secrets of env valueFrom and
	// envFrom. Optional: nil makes such references a
	// CreateContainerConfigError.
	EnvSource EnvSource
	// Event records a kubelet-style event about a pod (Failed,
	// InvalidEnvironmentVariableNames). Optional.
	Event func(pod *corev1.Pod, eventType, reason, message string)
	// Allocatable is the node's allocatable resources: the value of a
	// resourceFieldRef to a limit the container does not set. Optional.
	Allocatable corev1.ResourceList
	// PrepareVolumes runs before a pod's first container starts and returns
	// environment additions and bind mounts, or an error that keeps the pod
	// Waiting. Optional.
	PrepareVolumes func(ctx context.Context, pod *corev1.Pod) (Volumes, error)
	// BackoffBase and BackoffMax bound CrashLoopBackOff; zero: 10s and 5m.
	BackoffBase, BackoffMax time.Duration
	// LogMaxBytes rotates a container log when it grows beyond; zero 10 MiB.
	LogMaxBytes int64
	// Network gives each pod its own network namespace (root only); nil:
	// pods share the agent's network (status.podIP is HostIP).
	Network Network
	// InitPath is the tether binary whose hidden `pod-init` command starts
	// containers in their pod's namespaces; zero: this executable.
	InitPath string
	// StopPodsOnExit kills every pod when Run returns (tests, `tether up`);
	// by default pods outlive the agent and are adopted on restart.
	StopPodsOnExit bool
	Logger         *slog.Logger
}

// Runtime runs process pods.
type Runtime struct {
	cfg  Config
	log  *slog.Logger
	mu   sync.Mutex
	pods map[types.UID]*podWorker
	ctx  context.Context
	wg   sync.WaitGroup

	reaper  *reaper
	pending []*corev1.Pod // synced before Run started
}

// New validates cfg.
func New(cfg Config) (*Runtime, error) {
	if cfg.Dir == "" {
		return nil, errors.New("runtime: Dir is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HostIP == nil {
		cfg.HostIP = net.IPv4(127, 0, 0, 1)
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = 10 * time.Second
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 5 * time.Minute
	}
	if cfg.LogMaxBytes <= 0 {
		cfg.LogMaxBytes = 10 << 20
	}
	if cfg.InitPath == "" && (cfg.Network != nil || os.Geteuid() == 0) {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("runtime: pod init binary: %w", err)
		}
		cfg.InitPath = exe
	}
	if cfg.OnChange == nil {
		cfg.OnChange = func(types.UID) {}
	}
	return &Runtime{cfg: cfg, log: cfg.Logger, pods: map[types.UID]*podWorker{}, reaper: newReaper()}, nil
}

// Run adopts the pods recorded in Dir and supervises pods until ctx ends.
func (r *Runtime) Run(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Join(r.cfg.Dir, "pods"), 0o700); err != nil {
		return fmt.Errorf("runtime: %w", err)
	}
	reapCtx, stopReaper := context.WithCancel(context.Background())
	reaperDone := make(chan struct{})
	go func() {
		defer close(reaperDone)
		r.reaper.run(reapCtx)
	}()
	defer func() {
		stopReaper()
		<-reaperDone
	}()
	if err := r.adoptAll(ctx); err != nil {
		r.log.Warn("runtime: adopting pods", "err", err)
	}
	r.mu.Lock()
	r.ctx = ctx
	pending := r.pending
	r.pending = nil
	r.mu.Unlock()
	for _, p := range pending {
		r.SyncPod(p)
	}
	<-ctx.Done()
	r.mu.Lock()
	workers := make([]*podWorker, 0, len(r.pods))
	for _, w := range r.pods {
		workers = append(workers, w)
	}
	r.mu.Unlock()
	if r.cfg.StopPodsOnExit {
		var wg sync.WaitGroup
		for _, w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.terminate(0)
				if r.cfg.Network != nil {
					r.cfg.Network.Remove(w.uid)
				}
			}()
		}
		wg.Wait()
	}
	for _, w := range workers {
		w.detach()
	}
	r.wg.Wait()
	return nil
}

// SyncPod makes the pod's processes match pod: starts a new pod, or
// terminates it gracefully once it has a deletionTimestamp.
func (r *Runtime) SyncPod(pod *corev1.Pod) {
	r.mu.Lock()
	ctx := r.ctx
	if ctx == nil {
		r.pending = append(r.pending, pod.DeepCopy())
		r.mu.Unlock()
		return
	}
	w, ok := r.pods[pod.UID]
	if !ok && pod.DeletionTimestamp == nil && ctx != nil && ctx.Err() == nil {
		w = newPodWorker(r, pod.DeepCopy())
		r.pods[pod.UID] = w
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			w.run(ctx, nil)
		}()
	}
	r.mu.Unlock()
	if w == nil {
		return
	}
	w.update(pod)
	if pod.DeletionTimestamp != nil {
		grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
		if pod.DeletionGracePeriodSeconds != nil {
			grace = *pod.DeletionGracePeriodSeconds
		}
		go w.terminate(time.Duration(grace) * time.Second)
	}
}

// Terminated reports whether every process of the pod has exited (true for
// unknown pods).
func (r *Runtime) Terminated(uid types.UID) bool {
	w := r.worker(uid)
	return w == nil || w.allStopped()
}

// RemovePod kills the pod at once (if still running) and deletes its state.
func (r *Runtime) RemovePod(uid types.UID) {
	r.mu.Lock()
	w := r.pods[uid]
	delete(r.pods, uid)
	r.mu.Unlock()
	if w == nil {
		return
	}
	w.terminate(0)
	w.detach()
	if r.cfg.Network != nil {
		r.cfg.Network.Remove(uid)
	}
	_ = os.RemoveAll(w.dir)
}

// Status returns the pod's current status as the runtime sees it.
func (r *Runtime) Status(uid types.UID) (corev1.PodStatus, bool) {
	w := r.worker(uid)
	if w == nil {
		return corev1.PodStatus{}, false
	}
	return w.status(), true
}

// Pods returns the pods the runtime knows with their current status.
func (r *Runtime) Pods() []*corev1.Pod {
	r.mu.Lock()
	ws := make([]*podWorker, 0, len(r.pods))
	for _, w := range r.pods {
		ws = append(ws, w)
	}
	r.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(ws))
	for _, w := range ws {
		p := w.snapshot()
		p.Status = w.status()
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name
	})
	return out
}

// UIDs returns the UIDs of the pods the runtime knows.
func (r *Runtime) UIDs() []types.UID {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]types.UID, 0, len(r.pods))
	for uid := range r.pods {
		out = append(out, uid)
	}
	return out
}

func (r *Runtime) worker(uid types.UID) *podWorker {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pods[uid]
}

// find returns the worker of namespace/name (the newest, by creation).
func (r *Runtime) find(namespace, name, uid string) *podWorker {
	r.mu.Lock()
	defer r.mu.Unlock()
	var best *podWorker
	for _, w := range r.pods {
		p := w.snapshot()
		if p.Namespace != namespace || p.Name != name || (uid != "" && string(p.UID) != uid) {
			continue
		}
		if best == nil || best.snapshot().CreationTimestamp.Before(&p.CreationTimestamp) {
			best = w
		}
	}
	return best
}

// Network provides pod network namespaces.
type Network interface {
	// Add returns the path of pod uid's network namespace and its IP,
	// creating them if needed (idempotent); an error keeps the pod Waiting.
	Add(ctx context.Context, uid types.UID) (netnsPath string, ip net.IP, err error)
	// Remove deletes pod uid's network.
	Remove(uid types.UID)
}

// Volumes are what PrepareVolumes provides to a pod's containers.
type Volumes struct {
	Env []string
	// Mounts are bind-mounted into a private mount namespace per container
	// when the agent runs as root (unshare(1)); otherwise they are skipped
	// and containers find the files through Env.
	Mounts []Mount
}

// Mount is a read-only bind mount of a host directory.
type Mount struct {
	HostPath, ContainerPath string
}

// ErrNotFound is returned for unknown pods and containers.
var ErrNotFound = errors.New("not found")

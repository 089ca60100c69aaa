package nodeagent

import (
	"bufio"
	"bytes"
	"context"
	"os"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	clientretry "k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/tether-dev/tether/internal/version"
)

func validateNodeName(name string) []string { return validation.IsDNS1123Subdomain(name) }

// nodeStatus registers the Node, posts its status and renews its Lease.
type nodeStatus struct {
	a      *Agent
	client kubernetes.Interface
	port   int32
	uid    string
	// stale is set when a Lease renewal failed or came late (the node was
	// cut off from the hub): the node lifecycle controller may have marked
	// the node Ready=Unknown meanwhile, so the next successful renewal
	// kicks a status post instead of leaving the node NotReady until the
	// next StatusInterval tick (kubelet re-checks its status every 10s).
	// A successful status post clears it.
	stale atomic.Bool
	kick  chan struct{} // buffered (1); nil: no kicks
}

func (n *nodeStatus) labels() map[string]string {
	return map[string]string{
		corev1.LabelHostname:   n.a.cfg.NodeName,
		corev1.LabelOSStable:   goruntime.GOOS,
		corev1.LabelArchStable: goruntime.GOARCH,
	}
}

// register creates the Node (or adopts an existing one), retrying until
// the hub answers.
func (n *nodeStatus) register(ctx context.Context) error {
	return retry(ctx, n.a.log, "node registration", func() error {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.a.cfg.NodeName, Labels: n.labels()}}
		created, err := n.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		switch {
		case err == nil:
			n.uid = string(created.UID)
			n.a.log.Info("node registered")
		case apierrors.IsAlreadyExists(err):
			existing, err := n.client.CoreV1().Nodes().Get(ctx, n.a.cfg.NodeName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			n.uid = string(existing.UID)
			changed := false
			for k, v := range n.labels() {
				if existing.Labels[k] != v {
					if existing.Labels == nil {
						existing.Labels = map[string]string{}
					}
					existing.Labels[k], changed = v, true
				}
			}
			if changed {
				if _, err := n.client.CoreV1().Nodes().Update(ctx, existing, metav1.UpdateOptions{}); err != nil {
					return err
				}
			}
		default:
			return err
		}
		return n.postStatus(ctx)
	})
}

func (n *nodeStatus) run(ctx context.Context) error {
	t := time.NewTicker(n.a.cfg.StatusInterval)
	defer t.Stop()
	for {
		kicked := false
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-n.kick:
			kicked = true
		}
		if err := n.postStatus(ctx); err != nil {
			if ctx.Err() == nil {
				n.a.log.Warn("node status update failed", "err", err)
			}
			continue
		}
		if n.stale.Swap(false) || kicked {
			n.a.log.Info("node status posted after the hub was unreachable")
		}
	}
}

// postStatus writes addresses, capacity, node info and conditions,
// re-reading the Node when someone else (e.g. the hub's IPAM controller
// setting spec.podCIDR) changed it in between.
func (n *nodeStatus) postStatus(ctx context.Context) error {
	return clientretry.RetryOnConflict(clientretry.DefaultRetry, func() error { return n.postStatusOnce(ctx) })
}

func (n *nodeStatus) postStatusOnce(ctx context.Context) error {
	node, err := n.client.CoreV1().Nodes().Get(ctx, n.a.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	st := node.Status.DeepCopy()
	n.fillStatus(st)
	if apiequality.Semantic.DeepEqual(*st, node.Status) {
		return nil
	}
	node.Status = *st
	_, err = n.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}

func (n *nodeStatus) fillStatus(st *corev1.NodeStatus) {
	a := n.a
	hostname := a.cfg.NodeName
	st.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: a.cfg.NodeIP.String()},
		{Type: corev1.NodeHostName, Address: hostname},
	}
	st.DaemonEndpoints.KubeletEndpoint.Port = n.port
	st.Capacity = nodeCapacity(a.cfg.DataDir)
	st.Allocatable = st.Capacity.DeepCopy()
	st.NodeInfo = corev1.NodeSystemInfo{
		MachineID: readTrim("/etc/machine-id"), SystemUUID: readTrim("/sys/class/dmi/id/product_uuid"),
		BootID: readTrim("/proc/sys/kernel/random/boot_id"), KernelVersion: readTrim("/proc/sys/kernel/osrelease"),
		OSImage: osImage(), ContainerRuntimeVersion: "tether-process://" + version.Info().GitVersion,
		KubeletVersion: version.Info().GitVersion, KubeProxyVersion: "",
		OperatingSystem: goruntime.GOOS, Architecture: goruntime.GOARCH,
	}
	now := metav1.Now()
	setCondition(st, corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "tether agent is posting ready status"}, now)
	for _, t := range []corev1.NodeConditionType{corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure} {
		setCondition(st, corev1.NodeCondition{Type: t, Status: corev1.ConditionFalse, Reason: "KubeletHas" + strings.TrimPrefix(string(t), "Node") + "Sufficient"}, now)
	}
}

// nodeCapacity is the node's capacity (and allocatable): CPUs, memory from
// /proc, 110 pods, the data directory's file system.
func nodeCapacity(dataDir string) corev1.ResourceList {
	cpu := resource.NewQuantity(int64(goruntime.NumCPU()), resource.DecimalSI)
	mem := resource.NewQuantity(memTotal(), resource.BinarySI)
	pods := resource.NewQuantity(110, resource.DecimalSI)
	eph := resource.NewQuantity(diskTotal(dataDir), resource.BinarySI)
	return corev1.ResourceList{corev1.ResourceCPU: *cpu, corev1.ResourceMemory: *mem, corev1.ResourcePods: *pods, corev1.ResourceEphemeralStorage: *eph}
}

// setCondition updates c in place, keeping the transition time when the
// status did not change; the heartbeat time moves only with the status
// interval (the Lease is the heartbeat).
func setCondition(st *corev1.NodeStatus, c corev1.NodeCondition, now metav1.Time) {
	for i := range st.Conditions {
		old := &st.Conditions[i]
		if old.Type != c.Type {
			continue
		}
		c.LastTransitionTime = old.LastTransitionTime
		if old.Status != c.Status {
			c.LastTransitionTime = now
		}
		c.LastHeartbeatTime = now
		*old = c
		return
	}
	c.LastTransitionTime, c.LastHeartbeatTime = now, now
	st.Conditions = append(st.Conditions, c)
}

// runLease renews the node's Lease in kube-node-lease.
func (n *nodeStatus) runLease(ctx context.Context) error {
	t := time.NewTicker(n.a.cfg.LeaseRenewInterval)
	defer t.Stop()
	var last time.Time // start of the last successful renewal
	for {
		started := time.Now()
		if err := n.renewLease(ctx); err != nil {
			if ctx.Err() == nil {
				n.a.log.Warn("lease renewal failed", "err", err)
			}
			n.stale.Store(true)
		} else {
			// A renewal that hung past the next ones (a black-holed
			// connection that came back) fails nothing but is late all the same.
			if !last.IsZero() && started.Sub(last) > 2*n.a.cfg.LeaseRenewInterval {
				n.stale.Store(true)
			}
			last = started
			if n.stale.Load() {
				select {
				case n.kick <- struct{}{}:
				default:
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (n *nodeStatus) renewLease(ctx context.Context) error {
	leases := n.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	lease, err := leases.Get(ctx, n.a.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: n.a.cfg.NodeName, Namespace: corev1.NamespaceNodeLease},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(n.a.cfg.NodeName),
				LeaseDurationSeconds: ptr.To(int32(n.a.cfg.LeaseDuration / time.Second)),
				RenewTime:            &now,
			},
		}
		if n.uid != "" {
			lease.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.a.cfg.NodeName, UID: typesUID(n.uid)}}
		}
		_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	lease.Spec.HolderIdentity = ptr.To(n.a.cfg.NodeName)
	lease.Spec.LeaseDurationSeconds = ptr.To(int32(n.a.cfg.LeaseDuration / time.Second))
	lease.Spec.RenewTime = &now
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	return err
}

func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err == nil {
				return kb * 1024
			}
		}
	}
	return 0
}

func readTrim(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(bytes.TrimSpace(data))
}

func osImage() string {
	data, err := os.ReadFile("/etc/os-release")
	if err != nil {
		return goruntime.GOOS
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return goruntime.GOOS
}

func diskTotal(dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0
	}
	return int64(st.Blocks) * st.Bsize
}

func typesUID(s string) types.UID { return types.UID(s) }

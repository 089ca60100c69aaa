package registry

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

func pods() Resource {
	return Resource{
		GroupVersion: gvCore, Plural: "pods", Singular: "pod", ShortNames: []string{"po"}, Categories: []string{"all"},
		New: func() runtime.Object { return &corev1.Pod{} }, NewList: func() runtime.Object { return &corev1.PodList{} },
		Kind: Kind{Namespaced: true, HasStatus: true,
			Default: defaultPod,
			PrepareCreate: func(_ context.Context, obj runtime.Object) {
				p := obj.(*corev1.Pod)
				p.Status = corev1.PodStatus{Phase: corev1.PodPending, QOSClass: qosClass(p)}
			},
			Validate:       validatePod,
			ValidateUpdate: validatePodUpdate,
			GracefulDelete: podGracefulDelete,
		},
		Table: Table{
			Columns: []metav1.TableColumnDefinition{
				col("Name", "string", false, "Name"), col("Ready", "string", false, "Ready containers"),
				col("Status", "string", false, "Pod status"), col("Restarts", "string", false, "Container restarts"),
				col("Age", "string", false, "Age"), col("IP", "string", true, "Pod IP"), col("Node", "string", true, "Node"),
				col("Nominated Node", "string", true, "Nominated node"), col("Readiness Gates", "string", true, "Readiness gates"),
			},
			Row: podRow,
		},
	}
}

func defaultPod(obj runtime.Object) {
	p := obj.(*corev1.Pod)
	s := &p.Spec
	if s.RestartPolicy == "" {
		s.RestartPolicy = corev1.RestartPolicyAlways
	}
	if s.DNSPolicy == "" {
		s.DNSPolicy = corev1.DNSClusterFirst
	}
	if s.TerminationGracePeriodSeconds == nil {
		g := int64(corev1.DefaultTerminationGracePeriodSeconds)
		s.TerminationGracePeriodSeconds = &g
	}
	if s.SchedulerName == "" {
		s.SchedulerName = corev1.DefaultSchedulerName
	}
	if s.SecurityContext == nil {
		s.SecurityContext = &corev1.PodSecurityContext{}
	}
	if s.ServiceAccountName == "" {
		s.ServiceAccountName = "default"
	}
	if s.EnableServiceLinks == nil {
		t := true
		s.EnableServiceLinks = &t
	}
	if s.Priority == nil {
		z := int32(0)
		s.Priority = &z
	}
	if s.PreemptionPolicy == nil {
		pp := corev1.PreemptLowerPriority
		s.PreemptionPolicy = &pp
	}
	for i := range s.InitContainers {
		defaultContainer(&s.InitContainers[i])
	}
	for i := range s.Containers {
		defaultContainer(&s.Containers[i])
	}
	if !hasToleration(s.Tolerations, corev1.TaintNodeNotReady) {
		sec := int64(300)
		s.Tolerations = append(s.Tolerations,
			corev1.Toleration{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &sec},
			corev1.Toleration{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &sec})
	}
}

func hasToleration(list []corev1.Toleration, key string) bool {
	for _, t := range list {
		if t.Key == key {
			return true
		}
	}
	return false
}

func defaultContainer(c *corev1.Container) {
	if c.ImagePullPolicy == "" {
		_, tag, hasTag := strings.Cut(c.Image[strings.LastIndex(c.Image, "/")+1:], ":")
		if !hasTag || tag == "latest" {
			c.ImagePullPolicy = corev1.PullAlways
		} else {
			c.ImagePullPolicy = corev1.PullIfNotPresent
		}
	}
	if c.TerminationMessagePath == "" {
		c.TerminationMessagePath = corev1.TerminationMessagePathDefault
	}
	if c.TerminationMessagePolicy == "" {
		c.TerminationMessagePolicy = corev1.TerminationMessageReadFile
	}
	for i := range c.Ports {
		if c.Ports[i].Protocol == "" {
			c.Ports[i].Protocol = corev1.ProtocolTCP
		}
	}
	for _, probe := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
		if probe == nil {
			continue
		}
		if probe.TimeoutSeconds == 0 {
			probe.TimeoutSeconds = 1
		}
		if probe.PeriodSeconds == 0 {
			probe.PeriodSeconds = 10
		}
		if probe.SuccessThreshold == 0 {
			probe.SuccessThreshold = 1
		}
		if probe.FailureThreshold == 0 {
			probe.FailureThreshold = 3
		}
		if probe.HTTPGet != nil && probe.HTTPGet.Scheme == "" {
			probe.HTTPGet.Scheme = corev1.URISchemeHTTP
		}
		if probe.HTTPGet != nil && probe.HTTPGet.Path == "" {
			probe.HTTPGet.Path = "/"
		}
	}
}

func qosClass(p *corev1.Pod) corev1.PodQOSClass {
	anyReq, allGuaranteed := false, true
	for _, c := range p.Spec.Containers {
		if len(c.Resources.Requests) > 0 || len(c.Resources.Limits) > 0 {
			anyReq = true
		}
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			l, ok := c.Resources.Limits[r]
			if !ok {
				allGuaranteed = false
				continue
			}
			if req, ok := c.Resources.Requests[r]; ok && req.Cmp(l) != 0 {
				allGuaranteed = false
			}
		}
	}
	switch {
	case !anyReq:
		return corev1.PodQOSBestEffort
	case allGuaranteed:
		return corev1.PodQOSGuaranteed
	}
	return corev1.PodQOSBurstable
}

func validatePod(obj runtime.Object) field.ErrorList {
	p := obj.(*corev1.Pod)
	sp := field.NewPath("spec")
	var errs field.ErrorList
	if len(p.Spec.Containers) == 0 {
		errs = append(errs, field.Required(sp.Child("containers"), ""))
	}
	volumes := map[string]bool{}
	for i, v := range p.Spec.Volumes {
		vp := sp.Child("volumes").Index(i).Child("name")
		for _, msg := range validation.IsDNS1123Label(v.Name) {
			errs = append(errs, field.Invalid(vp, v.Name, msg))
		}
		if volumes[v.Name] {
			errs = append(errs, field.Duplicate(vp, v.Name))
		}
		volumes[v.Name] = true
	}
	names := map[string]bool{}
	validateList := func(list []corev1.Container, path *field.Path) {
		for i := range list {
			errs = append(errs, validateContainer(&list[i], path.Index(i), names, volumes)...)
		}
	}
	validateList(p.Spec.InitContainers, sp.Child("initContainers"))
	validateList(p.Spec.Containers, sp.Child("containers"))
	switch p.Spec.RestartPolicy {
	case corev1.RestartPolicyAlways, corev1.RestartPolicyOnFailure, corev1.RestartPolicyNever:
	default:
		errs = append(errs, field.NotSupported(sp.Child("restartPolicy"), p.Spec.RestartPolicy, []string{"Always", "OnFailure", "Never"}))
	}
	switch p.Spec.DNSPolicy {
	case corev1.DNSClusterFirst, corev1.DNSClusterFirstWithHostNet, corev1.DNSDefault, corev1.DNSNone:
	default:
		errs = append(errs, field.NotSupported(sp.Child("dnsPolicy"), p.Spec.DNSPolicy, []string{"ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"}))
	}
	if g := p.Spec.TerminationGracePeriodSeconds; g != nil && *g < 0 {
		errs = append(errs, field.Invalid(sp.Child("terminationGracePeriodSeconds"), *g, "must be >= 0"))
	}
	if p.Spec.ActiveDeadlineSeconds != nil && *p.Spec.ActiveDeadlineSeconds <= 0 {
		errs = append(errs, field.Invalid(sp.Child("activeDeadlineSeconds"), *p.Spec.ActiveDeadlineSeconds, "must be greater than 0"))
	}
	if p.Spec.NodeName != "" {
		for _, msg := range validation.IsDNS1123Subdomain(p.Spec.NodeName) {
			errs = append(errs, field.Invalid(sp.Child("nodeName"), p.Spec.NodeName, msg))
		}
	}
	errs = append(errs, metav1validation.ValidateLabels(p.Spec.NodeSelector, sp.Child("nodeSelector"))...)
	return errs
}

func validateContainer(c *corev1.Container, p *field.Path, names, volumes map[string]bool) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Label(c.Name) {
		errs = append(errs, field.Invalid(p.Child("name"), c.Name, msg))
	}
	if names[c.Name] {
		errs = append(errs, field.Duplicate(p.Child("name"), c.Name))
	}
	names[c.Name] = true
	if strings.TrimSpace(c.Image) == "" {
		errs = append(errs, field.Required(p.Child("image"), ""))
	}
	switch c.ImagePullPolicy {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		errs = append(errs, field.NotSupported(p.Child("imagePullPolicy"), c.ImagePullPolicy, []string{"Always", "IfNotPresent", "Never"}))
	}
	portNames := map[string]bool{}
	for i, port := range c.Ports {
		pp := p.Child("ports").Index(i)
		errs = append(errs, validatePort(pp.Child("containerPort"), port.ContainerPort)...)
		if port.HostPort != 0 {
			errs = append(errs, validatePort(pp.Child("hostPort"), port.HostPort)...)
		}
		errs = append(errs, validateProtocol(pp.Child("protocol"), port.Protocol)...)
		if port.Name != "" {
			for _, msg := range validation.IsValidPortName(port.Name) {
				errs = append(errs, field.Invalid(pp.Child("name"), port.Name, msg))
			}
			if portNames[port.Name] {
				errs = append(errs, field.Duplicate(pp.Child("name"), port.Name))
			}
			portNames[port.Name] = true
		}
	}
	for i, e := range c.Env {
		if len(validation.IsRelaxedEnvVarName(e.Name)) > 0 || e.Name == "" {
			errs = append(errs, field.Invalid(p.Child("env").Index(i).Child("name"), e.Name, "a valid environment variable name must consist only of printable ASCII characters other than '='"))
		}
	}
	for i, m := range c.VolumeMounts {
		mp := p.Child("volumeMounts").Index(i)
		if !volumes[m.Name] {
			errs = append(errs, field.NotFound(mp.Child("name"), m.Name))
		}
		if m.MountPath == "" {
			errs = append(errs, field.Required(mp.Child("mountPath"), ""))
		}
	}
	for name, q := range c.Resources.Requests {
		if q.Sign() < 0 {
			errs = append(errs, field.Invalid(p.Child("resources", "requests").Key(string(name)), q.String(), "must be greater than or equal to 0"))
		}
		if l, ok := c.Resources.Limits[name]; ok && q.Cmp(l) > 0 {
			errs = append(errs, field.Invalid(p.Child("resources", "requests").Key(string(name)), q.String(), fmt.Sprintf("must be less than or equal to %s limit of %s", name, l.String())))
		}
	}
	for name, q := range c.Resources.Limits {
		if q.Sign() < 0 {
			errs = append(errs, field.Invalid(p.Child("resources", "limits").Key(string(name)), q.String(), "must be greater than or equal to 0"))
		}
	}
	return errs
}

// validatePodUpdate: like Kubernetes, only images, activeDeadlineSeconds,
// added tolerations and removed scheduling gates may change.
func validatePodUpdate(obj, old runtime.Object) field.ErrorList {
	p, o := obj.(*corev1.Pod), old.(*corev1.Pod)
	mutable := o.Spec.DeepCopy()
	for i := range mutable.Containers {
		if i < len(p.Spec.Containers) {
			mutable.Containers[i].Image = p.Spec.Containers[i].Image
		}
	}
	for i := range mutable.InitContainers {
		if i < len(p.Spec.InitContainers) {
			mutable.InitContainers[i].Image = p.Spec.InitContainers[i].Image
		}
	}
	mutable.ActiveDeadlineSeconds = p.Spec.ActiveDeadlineSeconds
	if len(p.Spec.Tolerations) >= len(o.Spec.Tolerations) {
		mutable.Tolerations = p.Spec.Tolerations
	}
	mutable.SchedulingGates = p.Spec.SchedulingGates
	if o.Spec.NodeName == "" {
		mutable.NodeName = p.Spec.NodeName
	}
	if !equalBut(&corev1.Pod{Spec: *mutable}, &corev1.Pod{Spec: p.Spec}, "ObjectMeta", "TypeMeta", "Status") {
		return field.ErrorList{field.Forbidden(field.NewPath("spec"), "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations) or `spec.schedulingGates`")}
	}
	return nil
}

// podGracefulDelete mirrors Kubernetes: unscheduled or finished pods go at
// once; others get deletionTimestamp and the node agent finishes them.
func podGracefulDelete(_ context.Context, obj runtime.Object, options *metav1.DeleteOptions) bool {
	p := obj.(*corev1.Pod)
	if options == nil {
		return false
	}
	period := int64(0)
	if options.GracePeriodSeconds != nil {
		period = *options.GracePeriodSeconds
	} else if p.DeletionGracePeriodSeconds != nil {
		period = *p.DeletionGracePeriodSeconds
	} else if p.Spec.TerminationGracePeriodSeconds != nil {
		period = *p.Spec.TerminationGracePeriodSeconds
	}
	if p.Spec.NodeName == "" || p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
		period = 0
	}
	if period == 0 && options.GracePeriodSeconds != nil && *options.GracePeriodSeconds == 0 {
		// Explicit --grace-period=0 is honoured as immediate deletion.
		period = 0
	}
	options.GracePeriodSeconds = &period
	return true
}

func podRow(obj runtime.Object) []any {
	p := obj.(*corev1.Pod)
	restarts, ready := 0, 0
	var lastRestart metav1.Time
	reason := string(p.Status.Phase)
	if p.Status.Reason != "" {
		reason = p.Status.Reason
	}
	initializing := false
	for i, c := range p.Status.InitContainerStatuses {
		restarts += int(c.RestartCount)
		switch {
		case c.State.Terminated != nil && c.State.Terminated.ExitCode == 0:
			continue
		case c.State.Terminated != nil:
			reason = "Init:" + orDefault(c.State.Terminated.Reason, fmt.Sprintf("ExitCode:%d", c.State.Terminated.ExitCode))
			initializing = true
		case c.State.Waiting != nil && c.State.Waiting.Reason != "" && c.State.Waiting.Reason != "PodInitializing":
			reason = "Init:" + c.State.Waiting.Reason
			initializing = true
		default:
			reason = fmt.Sprintf("Init:%d/%d", i, len(p.Spec.InitContainers))
			initializing = true
		}
		break
	}
	if !initializing {
		hasRunning := false
		for i := len(p.Status.ContainerStatuses) - 1; i >= 0; i-- {
			c := p.Status.ContainerStatuses[i]
			restarts += int(c.RestartCount)
			if c.LastTerminationState.Terminated != nil && c.LastTerminationState.Terminated.FinishedAt.After(lastRestart.Time) {
				lastRestart = c.LastTerminationState.Terminated.FinishedAt
			}
			switch {
			case c.State.Waiting != nil && c.State.Waiting.Reason != "":
				reason = c.State.Waiting.Reason
			case c.State.Terminated != nil && c.State.Terminated.Reason != "":
				reason = c.State.Terminated.Reason
			case c.State.Terminated != nil && c.State.Terminated.Signal != 0:
				reason = fmt.Sprintf("Signal:%d", c.State.Terminated.Signal)
			case c.State.Terminated != nil:
				reason = fmt.Sprintf("ExitCode:%d", c.State.Terminated.ExitCode)
			case c.Ready && c.State.Running != nil:
				hasRunning = true
				ready++
			}
		}
		if reason == "Completed" && hasRunning {
			reason = "Running"
		}
	}
	if p.DeletionTimestamp != nil {
		reason = "Terminating"
		if p.Status.Reason == "NodeLost" {
			reason = "Unknown"
		}
	}
	restartStr := formatInt(int64(restarts))
	if !lastRestart.IsZero() {
		restartStr += " (" + age(lastRestart) + " ago)"
	}
	nominated := orNone(p.Status.NominatedNodeName)
	gates := "<none>"
	if n := len(p.Spec.ReadinessGates); n > 0 {
		gates = fmt.Sprintf("%d/%d", countTrueGates(p), n)
	}
	return []any{p.Name, fmt.Sprintf("%d/%d", ready, len(p.Spec.Containers)), reason, restartStr, age(p.CreationTimestamp),
		orNone(p.Status.PodIP), orNone(p.Spec.NodeName), nominated, gates}
}

func countTrueGates(p *corev1.Pod) int {
	n := 0
	for _, g := range p.Spec.ReadinessGates {
		for _, c := range p.Status.Conditions {
			if c.Type == g.ConditionType && c.Status == corev1.ConditionTrue {
				n++
			}
		}
	}
	return n
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

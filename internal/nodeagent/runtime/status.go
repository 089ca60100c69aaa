package runtime

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// status computes the pod status from the containers' states.
func (w *podWorker) status() corev1.PodStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	ip := w.rt.cfg.HostIP.String()
	st := corev1.PodStatus{
		HostIP: ip, HostIPs: []corev1.HostIP{{IP: ip}},
		PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		StartTime: &w.startTime,
		QOSClass:  corev1.PodQOSBestEffort,
	}
	switch {
	case w.podIP != nil:
		st.PodIP, st.PodIPs = w.podIP.String(), []corev1.PodIP{{IP: w.podIP.String()}}
	case w.rt.cfg.Network != nil:
		st.PodIP, st.PodIPs = "", nil // not assigned yet
	}
	for _, c := range w.inits {
		st.InitContainerStatuses = append(st.InitContainerStatuses, c.statusLocked())
	}
	allReady, anyRunning, allDone, anyFailed := true, false, true, false
	for _, c := range w.mains {
		cs := c.statusLocked()
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		allReady = allReady && cs.Ready
		switch {
		case cs.State.Running != nil:
			anyRunning, allDone = true, false
		case cs.State.Terminated != nil:
			if cs.State.Terminated.ExitCode != 0 {
				anyFailed = true
			}
			if !c.stopped {
				allDone = false
			}
		default:
			allDone = false
		}
	}
	switch {
	case w.failed:
		st.Phase, st.Reason = corev1.PodFailed, "InitContainerFailed"
	case !w.initsDone:
		st.Phase = corev1.PodPending
	case allDone && len(w.mains) > 0 && anyFailed:
		st.Phase = corev1.PodFailed
	case allDone && len(w.mains) > 0:
		st.Phase = corev1.PodSucceeded
	case anyRunning || w.initsDone:
		st.Phase = corev1.PodRunning
	default:
		st.Phase = corev1.PodPending
	}
	if w.waitReason != "" && st.Phase == corev1.PodPending {
		st.Message = w.waitMessage
	}
	now := metav1.Now()
	cond := func(t corev1.PodConditionType, ok bool, reason string) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s, reason = corev1.ConditionTrue, ""
		}
		return corev1.PodCondition{Type: t, Status: s, Reason: reason, LastTransitionTime: now}
	}
	ready := allReady && anyRunning && w.initsDone
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, w.waitReason == "", "CreatingPod"),
		cond(corev1.PodInitialized, w.initsDone, "ContainersNotInitialized"),
		cond(corev1.ContainersReady, ready, "ContainersNotReady"),
		cond(corev1.PodReady, ready, "ContainersNotReady"),
		cond(corev1.PodScheduled, true, ""),
	}
	return st
}

func (c *container) statusLocked() corev1.ContainerStatus {
	cs := corev1.ContainerStatus{
		Name: c.spec.Name, Image: c.spec.Image, ImageID: "process://" + c.spec.Image,
		RestartCount: c.restartCount, Ready: c.ready,
	}
	if c.lastTerm != nil {
		cs.LastTerminationState.Terminated = c.lastTerm.DeepCopy()
	}
	running := c.proc != nil && c.term == nil
	switch {
	case c.waitReason != "":
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: c.waitReason, Message: c.waitMessage}
		if c.term != nil {
			cs.LastTerminationState.Terminated = c.term.DeepCopy()
		}
	case running:
		cs.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.startedAt)}
		t := true
		cs.Started = &t
		cs.ContainerID = "process://" + itoa(c.proc.pid)
	case c.term != nil:
		cs.State.Terminated = c.term.DeepCopy()
	case c.w.waitReason != "":
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: c.w.waitReason, Message: c.w.waitMessage}
	default:
		reason := "ContainerCreating"
		if c.init {
			reason = "PodInitializing"
		} else if !c.w.initsDone && len(c.w.inits) > 0 {
			reason = "PodInitializing"
		}
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: reason}
	}
	return cs
}

func itoa(i int) string {
	var b [20]byte
	n := len(b)
	if i == 0 {
		return "0"
	}
	for i > 0 {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
	}
	return string(b[n:])
}

package runtime

import (
	"fmt"
	"net"
	"os"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

func (r *Runtime) envFor(pod *corev1.Pod) []string {
	if r.cfg.Env == nil {
		return nil
	}
	return r.cfg.Env(pod)
}

// containerEnv builds a container's environment: a minimal base, the
// runtime's extras (service discovery), then the container's env in order
// with $(VAR) expansion, as kubelet does.
func containerEnv(pod *corev1.Pod, c *corev1.Container, hostIP, podIP net.IP, extra []string) (map[string]string, error) {
	env := map[string]string{
		"PATH":     "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOSTNAME": pod.Name,
	}
	if p := os.Getenv("PATH"); p != "" {
		env["PATH"] = p
	}
	for _, kv := range extra {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	if len(c.EnvFrom) > 0 {
		return nil, fmt.Errorf("container %s: envFrom is not supported by the process runtime", c.Name)
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = expand(e.Value, env)
			continue
		}
		if e.ValueFrom.FieldRef == nil {
			return nil, fmt.Errorf("container %s: env %s: only fieldRef valueFrom is supported by the process runtime", c.Name, e.Name)
		}
		v, err := fieldValue(pod, e.ValueFrom.FieldRef.FieldPath, hostIP, podIP)
		if err != nil {
			return nil, fmt.Errorf("container %s: env %s: %w", c.Name, e.Name, err)
		}
		env[e.Name] = v
	}
	return env, nil
}

func fieldValue(pod *corev1.Pod, path string, hostIP, podIP net.IP) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.hostIPs":
		return hostIP.String(), nil
	case "status.podIP", "status.podIPs":
		return podIP.String(), nil
	}
	if k, ok := strings.CutPrefix(path, "metadata.labels['"); ok {
		return pod.Labels[strings.TrimSuffix(k, "']")], nil
	}
	if k, ok := strings.CutPrefix(path, "metadata.annotations['"); ok {
		return pod.Annotations[strings.TrimSuffix(k, "']")], nil
	}
	return "", fmt.Errorf("unsupported fieldPath %q", path)
}

// expand replaces $(VAR) with env[VAR]; $$ escapes; unknown references
// stay as written (Kubernetes semantics).
func expand(s string, env map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

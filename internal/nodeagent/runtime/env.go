package runtime

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
)

// EnvSource reads the ConfigMaps and Secrets that containers' env and
// envFrom refer to. A missing object is an error for which
// apierrors.IsNotFound is true (optional references then skip it).
type EnvSource interface {
	ConfigMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error)
	Secret(ctx context.Context, namespace, name string) (*corev1.Secret, error)
}

// ConfigError is a container configuration that cannot be resolved yet (a
// missing ConfigMap, Secret or key, an unsupported field): the container
// waits with CreateContainerConfigError and the runtime retries.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// defaultPath is the PATH of containers whose env does not set one (an
// image's env would; processes inherit the agent's PATH when it has one).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func (r *Runtime) envFor(pod *corev1.Pod) []string {
	if r.cfg.Env == nil {
		return nil
	}
	return r.cfg.Env(pod)
}

// resolveEnv resolves a container's environment (see resolveEnv below) and
// records its warnings as events.
func (r *Runtime) resolveEnv(ctx context.Context, pod *corev1.Pod, c *corev1.Container, podIP net.IP, extra []string) (envResult, error) {
	res, err := r.resolveEnvQuiet(ctx, pod, c, podIP, extra)
	for _, wn := range res.warnings {
		r.event(pod, corev1.EventTypeWarning, wn.reason, wn.message)
	}
	return res, err
}

func (r *Runtime) resolveEnvQuiet(ctx context.Context, pod *corev1.Pod, c *corev1.Container, podIP net.IP, extra []string) (envResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return resolveEnv(ctx, envInput{
		pod: pod, c: c, hostIP: r.cfg.HostIP, podIP: podIP,
		service: append(r.envFor(pod), extra...), source: r.cfg.EnvSource, allocatable: r.cfg.Allocatable,
	})
}

func (r *Runtime) event(pod *corev1.Pod, eventType, reason, message string) {
	if r.cfg.Event != nil {
		r.cfg.Event(pod, eventType, reason, message)
	}
}

// envInput is what a container's environment is made from.
type envInput struct {
	pod           *corev1.Pod
	c             *corev1.Container
	hostIP, podIP net.IP
	// service is the runtime's environment (service discovery, volumes):
	// visible to $(VAR) expansion, overridden by the container's own env.
	service     []string
	source      EnvSource
	allocatable corev1.ResourceList
}

// envResult is a resolved container environment.
type envResult struct {
	// vars is what kubelet passes to the container: the container's env
	// and envFrom, plus service variables it did not set. Command and args
	// expand against it.
	vars map[string]string
	// warnings are kubelet-style events (InvalidEnvironmentVariableNames).
	warnings []envWarning
}

type envWarning struct{ reason, message string }

// process is the process environment: a minimal base (PATH, HOSTNAME, as
// an image would provide) under vars.
func (e envResult) process(podName string) map[string]string {
	env := map[string]string{"PATH": defaultPath, "HOSTNAME": podName}
	if p := os.Getenv("PATH"); p != "" {
		env["PATH"] = p
	}
	for k, v := range e.vars {
		env[k] = v
	}
	return env
}

// resolveEnv builds a container's environment the way kubelet's
// makeEnvironmentVariables does: envFrom first (later sources win; invalid
// names skipped with a warning), then env in order, each value $(VAR)-
// expanded against what was defined before it and the service variables,
// valueFrom resolved from the pod's fields, its resources, ConfigMaps and
// Secrets. Missing non-optional objects or keys are ConfigErrors with
// kubelet's messages.
func resolveEnv(ctx context.Context, in envInput) (envResult, error) {
	pod, c := in.pod, in.c
	service := map[string]string{}
	for _, kv := range in.service {
		if k, v, ok := strings.Cut(kv, "="); ok {
			service[k] = v
		}
	}
	var res envResult
	tmp := map[string]string{}
	configMaps := map[string]*corev1.ConfigMap{}
	secrets := map[string]*corev1.Secret{}
	getConfigMap := func(name string) (*corev1.ConfigMap, error) {
		if cm, ok := configMaps[name]; ok {
			return cm, nil
		}
		if in.source == nil {
			return nil, fmt.Errorf("couldn't get configMap %v/%v, no kubeClient defined", pod.Namespace, name)
		}
		cm, err := in.source.ConfigMap(ctx, pod.Namespace, name)
		if err != nil {
			return nil, err
		}
		configMaps[name] = cm
		return cm, nil
	}
	getSecret := func(name string) (*corev1.Secret, error) {
		if s, ok := secrets[name]; ok {
			return s, nil
		}
		if in.source == nil {
			return nil, fmt.Errorf("couldn't get secret %v/%v, no kubeClient defined", pod.Namespace, name)
		}
		s, err := in.source.Secret(ctx, pod.Namespace, name)
		if err != nil {
			return nil, err
		}
		secrets[name] = s
		return s, nil
	}
	fail := func(err error) (envResult, error) { return envResult{}, &ConfigError{Err: err} }

	for _, ef := range c.EnvFrom {
		var data map[string]string
		var kind, name string
		switch {
		case ef.ConfigMapRef != nil:
			kind, name = "configMap", ef.ConfigMapRef.Name
			cm, err := getConfigMap(name)
			if err != nil {
				if apierrors.IsNotFound(err) && ptrTrue(ef.ConfigMapRef.Optional) {
					continue
				}
				return fail(err)
			}
			data = cm.Data
		case ef.SecretRef != nil:
			kind, name = "secret", ef.SecretRef.Name
			s, err := getSecret(name)
			if err != nil {
				if apierrors.IsNotFound(err) && ptrTrue(ef.SecretRef.Optional) {
					continue
				}
				return fail(err)
			}
			data = make(map[string]string, len(s.Data))
			for k, v := range s.Data {
				data[k] = string(v)
			}
		default:
			continue
		}
		var invalid []string
		for k, v := range data {
			k = ef.Prefix + k
			if errs := validation.IsEnvVarName(k); len(errs) != 0 {
				invalid = append(invalid, k)
				continue
			}
			tmp[k] = v
		}
		if len(invalid) > 0 {
			sort.Strings(invalid)
			res.warnings = append(res.warnings, envWarning{"InvalidEnvironmentVariableNames",
				fmt.Sprintf("Keys [%s] from the EnvFrom %s %s/%s were skipped since they are considered invalid environment variable names.",
					strings.Join(invalid, ", "), kind, pod.Namespace, name)})
		}
	}

	mapping := mappingFuncFor(tmp, service)
	for _, e := range c.Env {
		val := e.Value
		switch {
		case val != "":
			val = Expand(val, mapping)
		case e.ValueFrom == nil:
		case e.ValueFrom.FieldRef != nil:
			v, err := fieldValue(pod, e.ValueFrom.FieldRef.FieldPath, in.hostIP, in.podIP)
			if err != nil {
				return fail(err)
			}
			val = v
		case e.ValueFrom.ResourceFieldRef != nil:
			v, err := resourceValue(pod, c, e.ValueFrom.ResourceFieldRef, in.allocatable)
			if err != nil {
				return fail(err)
			}
			val = v
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			optional := ptrTrue(ref.Optional)
			cm, err := getConfigMap(ref.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && optional {
					continue
				}
				return fail(err)
			}
			v, ok := cm.Data[ref.Key]
			if !ok {
				if optional {
					continue
				}
				return fail(fmt.Errorf("couldn't find key %v in ConfigMap %v/%v", ref.Key, pod.Namespace, ref.Name))
			}
			val = v
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			optional := ptrTrue(ref.Optional)
			s, err := getSecret(ref.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && optional {
					continue
				}
				return fail(err)
			}
			v, ok := s.Data[ref.Key]
			if !ok {
				if optional {
					continue
				}
				return fail(fmt.Errorf("couldn't find key %v in Secret %v/%v", ref.Key, pod.Namespace, ref.Name))
			}
			val = string(v)
		default:
			return fail(fmt.Errorf("env %s: unsupported valueFrom source", e.Name))
		}
		tmp[e.Name] = val
	}
	for k, v := range service {
		if _, set := tmp[k]; !set {
			tmp[k] = v
		}
	}
	res.vars = tmp
	return res, nil
}

func ptrTrue(b *bool) bool { return b != nil && *b }

// expandArgs expands $(VAR) in command and args against the container's
// resolved variables, as kubelet's ExpandContainerCommandAndArgs does.
func expandArgs(argv []string, vars map[string]string) []string {
	mapping := mappingFuncFor(vars)
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = Expand(a, mapping)
	}
	return out
}

// fieldValue resolves a downward-API fieldRef for env (the paths kubelet
// accepts there).
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
		return ipString(hostIP), nil
	case "status.podIP", "status.podIPs":
		return ipString(podIP), nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	}
	for prefix, m := range map[string]map[string]string{"metadata.labels": pod.Labels, "metadata.annotations": pod.Annotations} {
		rest, ok := strings.CutPrefix(path, prefix+"[")
		if !ok {
			continue
		}
		key, ok := strings.CutSuffix(rest, "]")
		if !ok || len(key) < 2 || key[0] != '\'' || key[len(key)-1] != '\'' {
			return "", fmt.Errorf("unsupported fieldPath %q", path)
		}
		return m[key[1:len(key)-1]], nil
	}
	return "", fmt.Errorf("unsupported fieldPath %q", path)
}

func ipString(ip net.IP) string {
	if ip == nil {
		return ""
	}
	return ip.String()
}

// formatMap renders a map as the downward API does: sorted key="value"
// lines.
func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(k + "=" + strconv.Quote(m[k]))
	}
	return b.String()
}

// resourceValue resolves a resourceFieldRef: the container's (or the named
// container's) requests and limits, with unset limits defaulting to the
// node's allocatable, divided by the divisor and rounded up.
func resourceValue(pod *corev1.Pod, self *corev1.Container, ref *corev1.ResourceFieldSelector, allocatable corev1.ResourceList) (string, error) {
	c := self
	if ref.ContainerName != "" {
		c = nil
		for i := range pod.Spec.Containers {
			if pod.Spec.Containers[i].Name == ref.ContainerName {
				c = &pod.Spec.Containers[i]
			}
		}
		for i := range pod.Spec.InitContainers {
			if c == nil && pod.Spec.InitContainers[i].Name == ref.ContainerName {
				c = &pod.Spec.InitContainers[i]
			}
		}
		if c == nil {
			return "", fmt.Errorf("container %s not found", ref.ContainerName)
		}
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	kind, name, ok := strings.Cut(ref.Resource, ".")
	if !ok || (kind != "limits" && kind != "requests") {
		return "", fmt.Errorf("unsupported container resource : %v", ref.Resource)
	}
	rn := corev1.ResourceName(name)
	if rn != corev1.ResourceCPU && rn != corev1.ResourceMemory && rn != corev1.ResourceEphemeralStorage && !strings.HasPrefix(name, corev1.ResourceHugePagesPrefix) {
		return "", fmt.Errorf("unsupported container resource : %v", ref.Resource)
	}
	var q resource.Quantity
	if kind == "limits" {
		v, set := c.Resources.Limits[rn]
		if !set {
			v = allocatable[rn]
		}
		q = v
	} else {
		q = c.Resources.Requests[rn]
	}
	if rn == corev1.ResourceCPU {
		return strconv.FormatInt(int64(math.Ceil(float64(q.MilliValue())/float64(divisor.MilliValue()))), 10), nil
	}
	if divisor.Value() == 0 {
		return "", errors.New("resourceFieldRef divisor must not be below 1 for " + name)
	}
	return strconv.FormatInt(int64(math.Ceil(float64(q.Value())/float64(divisor.Value()))), 10), nil
}

// mappingFuncFor looks a name up in each map in turn; unknown names stay
// as written, $(NAME) (k8s.io/kubernetes third_party/forked/golang/expansion).
func mappingFuncFor(maps ...map[string]string) func(string) string {
	return func(name string) string {
		for _, m := range maps {
			if v, ok := m[name]; ok {
				return v
			}
		}
		return "$(" + name + ")"
	}
}

// Expand replaces $(VAR) references in input with mapping(VAR), exactly as
// kubelet's expansion package does: $$ is an escaped $, a $ not followed by
// ( or $ is kept, an unclosed $( is kept as written.
func Expand(input string, mapping func(string) string) string {
	if !strings.Contains(input, "$") {
		return input
	}
	var b strings.Builder
	checkpoint := 0
	for cursor := 0; cursor < len(input); cursor++ {
		if input[cursor] != '$' || cursor+1 >= len(input) {
			continue
		}
		b.WriteString(input[checkpoint:cursor])
		read, isVar, advance := readVariableName(input[cursor+1:])
		if isVar {
			b.WriteString(mapping(read))
		} else {
			b.WriteString(read)
		}
		cursor += advance
		checkpoint = cursor + 1
	}
	return b.String() + input[checkpoint:]
}

// readVariableName reads what follows a $: the bytes to write (or the
// variable name), whether it is a variable, and how many bytes it used.
func readVariableName(input string) (string, bool, int) {
	switch input[0] {
	case '$':
		return "$", false, 1
	case '(':
		for i := 1; i < len(input); i++ {
			if input[i] == ')' {
				return input[1:i], true, i + 1
			}
		}
		return "$(", false, 1
	default:
		return "$" + input[0:1], false, 1
	}
}

func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

package registry

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

var gvCore = corev1.SchemeGroupVersion

// Namespaces: cluster-scoped; deletion is graceful (see NamespaceREST).
func namespaces() Resource {
	return Resource{
		GroupVersion: gvCore, Plural: "namespaces", Singular: "namespace", ShortNames: []string{"ns"},
		New: func() runtime.Object { return &corev1.Namespace{} }, NewList: func() runtime.Object { return &corev1.NamespaceList{} },
		Kind: Kind{
			NameFn:    apivalidation.ValidateNamespaceName,
			HasStatus: true,
			Default: func(obj runtime.Object) {
				ns := obj.(*corev1.Namespace)
				if ns.Labels == nil {
					ns.Labels = map[string]string{}
				}
				ns.Labels[corev1.LabelMetadataName] = ns.Name
			},
			PrepareCreate: func(_ context.Context, obj runtime.Object) {
				ns := obj.(*corev1.Namespace)
				ns.Status = corev1.NamespaceStatus{Phase: corev1.NamespaceActive}
				if !slices.Contains(ns.Spec.Finalizers, corev1.FinalizerKubernetes) {
					ns.Spec.Finalizers = append(ns.Spec.Finalizers, corev1.FinalizerKubernetes)
				}
			},
		},
		Table: Table{
			Columns: []metav1.TableColumnDefinition{col("Name", "string", false, "Name"), col("Status", "string", false, "Phase"), col("Age", "string", false, "Age")},
			Row: func(obj runtime.Object) []any {
				ns := obj.(*corev1.Namespace)
				return []any{ns.Name, string(ns.Status.Phase), age(ns.CreationTimestamp)}
			},
		},
	}
}

func configMaps() Resource {
	return Resource{
		GroupVersion: gvCore, Plural: "configmaps", Singular: "configmap", ShortNames: []string{"cm"},
		New: func() runtime.Object { return &corev1.ConfigMap{} }, NewList: func() runtime.Object { return &corev1.ConfigMapList{} },
		Kind: Kind{Namespaced: true, Validate: func(obj runtime.Object) field.ErrorList {
			cm := obj.(*corev1.ConfigMap)
			var errs field.ErrorList
			size := 0
			for k, v := range cm.Data {
				errs = append(errs, validateDataKey(field.NewPath("data").Key(k), k)...)
				if _, dup := cm.BinaryData[k]; dup {
					errs = append(errs, field.Invalid(field.NewPath("data").Key(k), k, "duplicate of key present in binaryData"))
				}
				size += len(k) + len(v)
			}
			for k, v := range cm.BinaryData {
				errs = append(errs, validateDataKey(field.NewPath("binaryData").Key(k), k)...)
				size += len(k) + len(v)
			}
			if size > corev1.MaxSecretSize {
				errs = append(errs, field.TooLong(field.NewPath(""), "", corev1.MaxSecretSize))
			}
			return errs
		}, ValidateUpdate: immutableData},
		Table: Table{
			Columns: []metav1.TableColumnDefinition{col("Name", "string", false, "Name"), col("Data", "string", false, "Number of data keys"), col("Age", "string", false, "Age")},
			Row: func(obj runtime.Object) []any {
				cm := obj.(*corev1.ConfigMap)
				return []any{cm.Name, int64(len(cm.Data) + len(cm.BinaryData)), age(cm.CreationTimestamp)}
			},
		},
	}
}

func validateDataKey(p *field.Path, k string) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsConfigMapKey(k) {
		errs = append(errs, field.Invalid(p, k, msg))
	}
	return errs
}

// immutableData enforces `immutable: true` on ConfigMaps and Secrets.
func immutableData(obj, old runtime.Object) field.ErrorList {
	var wasImmutable bool
	var same bool
	switch o := old.(type) {
	case *corev1.ConfigMap:
		n := obj.(*corev1.ConfigMap)
		wasImmutable = o.Immutable != nil && *o.Immutable
		same = equalBut(n, o, "ObjectMeta", "TypeMeta")
	case *corev1.Secret:
		n := obj.(*corev1.Secret)
		if n.Type != o.Type {
			return field.ErrorList{field.Invalid(field.NewPath("type"), n.Type, "field is immutable")}
		}
		wasImmutable = o.Immutable != nil && *o.Immutable
		same = equalBut(n, o, "ObjectMeta", "TypeMeta")
	}
	if wasImmutable && !same {
		return field.ErrorList{field.Forbidden(field.NewPath("data"), "field is immutable when `immutable` is set")}
	}
	return nil
}

func secrets() Resource {
	return Resource{
		GroupVersion: gvCore, Plural: "secrets", Singular: "secret",
		New: func() runtime.Object { return &corev1.Secret{} }, NewList: func() runtime.Object { return &corev1.SecretList{} },
		Kind: Kind{Namespaced: true,
			Default: func(obj runtime.Object) {
				s := obj.(*corev1.Secret)
				if s.Type == "" {
					s.Type = corev1.SecretTypeOpaque
				}
				// stringData is write-only: merged into data, never stored.
				for k, v := range s.StringData {
					if s.Data == nil {
						s.Data = map[string][]byte{}
					}
					s.Data[k] = []byte(v)
				}
				s.StringData = nil
			},
			Validate: func(obj runtime.Object) field.ErrorList {
				s := obj.(*corev1.Secret)
				var errs field.ErrorList
				size := 0
				for k, v := range s.Data {
					errs = append(errs, validateDataKey(field.NewPath("data").Key(k), k)...)
					size += len(v)
				}
				if size > corev1.MaxSecretSize {
					errs = append(errs, field.TooLong(field.NewPath("data"), "", corev1.MaxSecretSize))
				}
				switch s.Type {
				case corev1.SecretTypeTLS:
					for _, k := range []string{corev1.TLSCertKey, corev1.TLSPrivateKeyKey} {
						if _, ok := s.Data[k]; !ok {
							errs = append(errs, field.Required(field.NewPath("data").Key(k), ""))
						}
					}
				case corev1.SecretTypeServiceAccountToken:
					if s.Annotations[corev1.ServiceAccountNameKey] == "" {
						errs = append(errs, field.Required(field.NewPath("metadata", "annotations").Key(corev1.ServiceAccountNameKey), ""))
					}
				}
				return errs
			},
			ValidateUpdate: immutableData,
		},
		Table: Table{
			Columns: []metav1.TableColumnDefinition{col("Name", "string", false, "Name"), col("Type", "string", false, "Type"), col("Data", "string", false, "Number of data keys"), col("Age", "string", false, "Age")},
			Row: func(obj runtime.Object) []any {
				s := obj.(*corev1.Secret)
				return []any{s.Name, string(s.Type), int64(len(s.Data)), age(s.CreationTimestamp)}
			},
		},
	}
}

func serviceAccounts() Resource {
	return Resource{
		GroupVersion: gvCore, Plural: "serviceaccounts", Singular: "serviceaccount", ShortNames: []string{"sa"},
		New: func() runtime.Object { return &corev1.ServiceAccount{} }, NewList: func() runtime.Object { return &corev1.ServiceAccountList{} },
		Kind: Kind{Namespaced: true},
		Table: Table{
			Columns: []metav1.TableColumnDefinition{col("Name", "string", false, "Name"), col("Secrets", "string", false, "Number of secrets"), col("Age", "string", false, "Age")},
			Row: func(obj runtime.Object) []any {
				sa := obj.(*corev1.ServiceAccount)
				return []any{sa.Name, int64(len(sa.Secrets)), age(sa.CreationTimestamp)}
			},
		},
	}
}

func events() Resource {
	return Resource{
		GroupVersion: gvCore, Plural: "events", Singular: "event", ShortNames: []string{"ev"},
		New: func() runtime.Object { return &corev1.Event{} }, NewList: func() runtime.Object { return &corev1.EventList{} },
		Kind: Kind{Namespaced: true, Validate: func(obj runtime.Object) field.ErrorList {
			e := obj.(*corev1.Event)
			var errs field.ErrorList
			if e.InvolvedObject.Namespace != "" && e.Namespace != e.InvolvedObject.Namespace {
				errs = append(errs, field.Invalid(field.NewPath("involvedObject", "namespace"), e.InvolvedObject.Namespace, "does not match event.namespace"))
			}
			if e.Type != "" && e.Type != corev1.EventTypeNormal && e.Type != corev1.EventTypeWarning {
				errs = append(errs, field.NotSupported(field.NewPath("type"), e.Type, []string{corev1.EventTypeNormal, corev1.EventTypeWarning}))
			}
			return errs
		}},
		Table: Table{
			Columns: []metav1.TableColumnDefinition{
				col("Last Seen", "string", false, "Time of the last occurrence"), col("Type", "string", false, "Type"),
				col("Reason", "string", false, "Reason"), col("Object", "string", false, "Involved object"),
				col("Message", "string", false, "Message"), col("Source", "string", true, "Source"),
				col("Count", "string", true, "Count"), col("Name", "string", true, "Name"),
			},
			Row: func(obj runtime.Object) []any {
				e := obj.(*corev1.Event)
				last := e.LastTimestamp
				if last.IsZero() {
					last = metav1.NewTime(e.EventTime.Time)
				}
				object := strings.ToLower(e.InvolvedObject.Kind) + "/" + e.InvolvedObject.Name
				return []any{age(last), e.Type, e.Reason, object, strings.TrimSpace(e.Message), e.Source.Component, int64(e.Count), e.Name}
			},
		},
	}
}

func endpoints() Resource {
	return Resource{
		GroupVersion: gvCore, Plural: "endpoints", Singular: "endpoints", ShortNames: []string{"ep"},
		New: func() runtime.Object { return &corev1.Endpoints{} }, NewList: func() runtime.Object { return &corev1.EndpointsList{} },
		Kind: Kind{Namespaced: true, NameFn: apivalidation.NameIsDNS1035Label,
			Default: func(obj runtime.Object) {
				ep := obj.(*corev1.Endpoints)
				for i := range ep.Subsets {
					for j := range ep.Subsets[i].Ports {
						if ep.Subsets[i].Ports[j].Protocol == "" {
							ep.Subsets[i].Ports[j].Protocol = corev1.ProtocolTCP
						}
					}
				}
			},
			Validate: func(obj runtime.Object) field.ErrorList {
				ep := obj.(*corev1.Endpoints)
				var errs field.ErrorList
				for i, ss := range ep.Subsets {
					p := field.NewPath("subsets").Index(i)
					for j, a := range append(append([]corev1.EndpointAddress{}, ss.Addresses...), ss.NotReadyAddresses...) {
						errs = append(errs, validateIP(p.Child("addresses").Index(j).Child("ip"), a.IP)...)
					}
					for j, port := range ss.Ports {
						errs = append(errs, validatePort(p.Child("ports").Index(j).Child("port"), port.Port)...)
					}
				}
				return errs
			}},
		Table: Table{
			Columns: []metav1.TableColumnDefinition{col("Name", "string", false, "Name"), col("Endpoints", "string", false, "Endpoints"), col("Age", "string", false, "Age")},
			Row: func(obj runtime.Object) []any {
				ep := obj.(*corev1.Endpoints)
				return []any{ep.Name, formatEndpoints(ep), age(ep.CreationTimestamp)}
			},
		},
	}
}

func formatEndpoints(ep *corev1.Endpoints) string {
	var list []string
	for _, ss := range ep.Subsets {
		for _, a := range ss.Addresses {
			if len(ss.Ports) == 0 {
				list = append(list, a.IP)
			}
			for _, p := range ss.Ports {
				list = append(list, fmt.Sprintf("%s:%d", a.IP, p.Port))
			}
		}
	}
	if len(list) == 0 {
		return "<none>"
	}
	if len(list) > 3 {
		return strings.Join(list[:3], ",") + fmt.Sprintf(" + %d more...", len(list)-3)
	}
	return strings.Join(list, ",")
}

func validateIP(p *field.Path, ip string) field.ErrorList {
	return validation.IsValidIP(p, ip)
}

func validatePort(p *field.Path, port int32) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsValidPortNum(int(port)) {
		errs = append(errs, field.Invalid(p, port, msg))
	}
	return errs
}

func nodes() Resource {
	return Resource{
		GroupVersion: gvCore, Plural: "nodes", Singular: "node", ShortNames: []string{"no"},
		New: func() runtime.Object { return &corev1.Node{} }, NewList: func() runtime.Object { return &corev1.NodeList{} },
		Kind: Kind{HasStatus: true,
			Validate: func(obj runtime.Object) field.ErrorList {
				n := obj.(*corev1.Node)
				var errs field.ErrorList
				for i, c := range n.Spec.PodCIDRs {
					if _, _, err := net.ParseCIDR(c); err != nil {
						errs = append(errs, field.Invalid(field.NewPath("spec", "podCIDRs").Index(i), c, err.Error()))
					}
				}
				for i, t := range n.Spec.Taints {
					errs = append(errs, validateTaint(field.NewPath("spec", "taints").Index(i), t)...)
				}
				return errs
			},
			ValidateUpdate: func(obj, old runtime.Object) field.ErrorList {
				n, o := obj.(*corev1.Node), old.(*corev1.Node)
				if len(o.Spec.PodCIDRs) > 0 && !slices.Equal(n.Spec.PodCIDRs, o.Spec.PodCIDRs) {
					return field.ErrorList{field.Forbidden(field.NewPath("spec", "podCIDRs"), "node updates may not change podCIDR except from \"\" to valid")}
				}
				return nil
			},
		},
		Table: Table{
			Columns: []metav1.TableColumnDefinition{
				col("Name", "string", false, "Name"), col("Status", "string", false, "Node status"), col("Roles", "string", false, "Node roles"),
				col("Age", "string", false, "Age"), col("Version", "string", false, "Kubelet version"),
				col("Internal-IP", "string", true, "Internal IP"), col("External-IP", "string", true, "External IP"),
				col("OS-Image", "string", true, "OS image"), col("Kernel-Version", "string", true, "Kernel version"),
				col("Container-Runtime", "string", true, "Container runtime"),
			},
			Row: func(obj runtime.Object) []any {
				n := obj.(*corev1.Node)
				return []any{n.Name, nodeStatus(n), nodeRoles(n), age(n.CreationTimestamp), n.Status.NodeInfo.KubeletVersion,
					nodeAddress(n, corev1.NodeInternalIP), nodeAddress(n, corev1.NodeExternalIP),
					orUnknown(n.Status.NodeInfo.OSImage), orUnknown(n.Status.NodeInfo.KernelVersion), orUnknown(n.Status.NodeInfo.ContainerRuntimeVersion)}
			},
		},
	}
}

func validateTaint(p *field.Path, t corev1.Taint) field.ErrorList {
	var errs field.ErrorList
	errs = append(errs, metav1validation.ValidateLabelName(t.Key, p.Child("key"))...)
	switch t.Effect {
	case corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute:
	default:
		errs = append(errs, field.NotSupported(p.Child("effect"), t.Effect, []string{"NoSchedule", "PreferNoSchedule", "NoExecute"}))
	}
	return errs
}

func orUnknown(s string) string {
	if s == "" {
		return "<unknown>"
	}
	return s
}

func nodeStatus(n *corev1.Node) string {
	status := "Unknown"
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			switch c.Status {
			case corev1.ConditionTrue:
				status = "Ready"
			case corev1.ConditionFalse:
				status = "NotReady"
			}
		}
	}
	if n.Spec.Unschedulable {
		status += ",SchedulingDisabled"
	}
	return status
}

func nodeRoles(n *corev1.Node) string {
	var roles []string
	for k := range n.Labels {
		if r, ok := strings.CutPrefix(k, "node-role.kubernetes.io/"); ok && r != "" {
			roles = append(roles, r)
		}
	}
	if len(roles) == 0 {
		return "<none>"
	}
	sort.Strings(roles)
	return strings.Join(roles, ",")
}

func nodeAddress(n *corev1.Node, t corev1.NodeAddressType) string {
	for _, a := range n.Status.Addresses {
		if a.Type == t {
			return a.Address
		}
	}
	return "<none>"
}

func services() Resource {
	return Resource{
		GroupVersion: gvCore, Plural: "services", Singular: "service", ShortNames: []string{"svc"}, Categories: []string{"all"},
		New: func() runtime.Object { return &corev1.Service{} }, NewList: func() runtime.Object { return &corev1.ServiceList{} },
		Kind: Kind{Namespaced: true, HasStatus: true, NameFn: apivalidation.NameIsDNS1035Label,
			Default:        defaultService,
			Validate:       validateService,
			ValidateUpdate: validateServiceUpdate,
		},
		Table: Table{
			Columns: []metav1.TableColumnDefinition{
				col("Name", "string", false, "Name"), col("Type", "string", false, "Type"), col("Cluster-IP", "string", false, "Cluster IP"),
				col("External-IP", "string", false, "External IPs"), col("Port(s)", "string", false, "Ports"), col("Age", "string", false, "Age"),
				col("Selector", "string", true, "Selector"),
			},
			Row: func(obj runtime.Object) []any {
				s := obj.(*corev1.Service)
				return []any{s.Name, string(s.Spec.Type), orNone(s.Spec.ClusterIP), serviceExternalIP(s), servicePorts(s), age(s.CreationTimestamp), formatSelector(s.Spec.Selector)}
			},
		},
	}
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

func serviceExternalIP(s *corev1.Service) string {
	switch s.Spec.Type {
	case corev1.ServiceTypeExternalName:
		return s.Spec.ExternalName
	case corev1.ServiceTypeLoadBalancer:
		var ips []string
		for _, in := range s.Status.LoadBalancer.Ingress {
			ips = append(ips, in.IP+in.Hostname)
		}
		ips = append(ips, s.Spec.ExternalIPs...)
		if len(ips) == 0 {
			return "<pending>"
		}
		return strings.Join(ips, ",")
	}
	if len(s.Spec.ExternalIPs) > 0 {
		return strings.Join(s.Spec.ExternalIPs, ",")
	}
	return "<none>"
}

func servicePorts(s *corev1.Service) string {
	if len(s.Spec.Ports) == 0 {
		return "<none>"
	}
	var parts []string
	for _, p := range s.Spec.Ports {
		str := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
		if p.NodePort > 0 {
			str = fmt.Sprintf("%d:%d/%s", p.Port, p.NodePort, p.Protocol)
		}
		parts = append(parts, str)
	}
	return strings.Join(parts, ",")
}

func formatSelector(sel map[string]string) string {
	if len(sel) == 0 {
		return "<none>"
	}
	keys := make([]string, 0, len(sel))
	for k := range sel {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+sel[k])
	}
	return strings.Join(parts, ",")
}

func defaultService(obj runtime.Object) {
	s := obj.(*corev1.Service)
	if s.Spec.Type == "" {
		s.Spec.Type = corev1.ServiceTypeClusterIP
	}
	if s.Spec.SessionAffinity == "" {
		s.Spec.SessionAffinity = corev1.ServiceAffinityNone
	}
	for i := range s.Spec.Ports {
		p := &s.Spec.Ports[i]
		if p.Protocol == "" {
			p.Protocol = corev1.ProtocolTCP
		}
		if p.TargetPort == (intstr.IntOrString{}) {
			p.TargetPort = intstr.FromInt32(p.Port)
		}
	}
	if s.Spec.Type != corev1.ServiceTypeExternalName {
		if s.Spec.InternalTrafficPolicy == nil {
			p := corev1.ServiceInternalTrafficPolicyCluster
			s.Spec.InternalTrafficPolicy = &p
		}
		if s.Spec.IPFamilyPolicy == nil {
			p := corev1.IPFamilyPolicySingleStack
			s.Spec.IPFamilyPolicy = &p
		}
		if len(s.Spec.IPFamilies) == 0 {
			s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
		}
	}
	if (s.Spec.Type == corev1.ServiceTypeNodePort || s.Spec.Type == corev1.ServiceTypeLoadBalancer) && s.Spec.ExternalTrafficPolicy == "" {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	}
}

func validateService(obj runtime.Object) field.ErrorList {
	s := obj.(*corev1.Service)
	var errs field.ErrorList
	sp := field.NewPath("spec")
	switch s.Spec.Type {
	case corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
		if len(s.Spec.Ports) == 0 && s.Spec.ClusterIP != corev1.ClusterIPNone {
			errs = append(errs, field.Required(sp.Child("ports"), ""))
		}
	case corev1.ServiceTypeExternalName:
		if s.Spec.ExternalName == "" {
			errs = append(errs, field.Required(sp.Child("externalName"), ""))
		}
	default:
		errs = append(errs, field.NotSupported(sp.Child("type"), s.Spec.Type, []string{"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"}))
	}
	names := map[string]bool{}
	for i, p := range s.Spec.Ports {
		pp := sp.Child("ports").Index(i)
		if len(s.Spec.Ports) > 1 && p.Name == "" {
			errs = append(errs, field.Required(pp.Child("name"), "must be specified when there is more than one port"))
		}
		if p.Name != "" {
			if names[p.Name] {
				errs = append(errs, field.Duplicate(pp.Child("name"), p.Name))
			}
			names[p.Name] = true
			for _, msg := range validation.IsDNS1123Label(p.Name) {
				errs = append(errs, field.Invalid(pp.Child("name"), p.Name, msg))
			}
		}
		errs = append(errs, validatePort(pp.Child("port"), p.Port)...)
		errs = append(errs, validateProtocol(pp.Child("protocol"), p.Protocol)...)
		if p.TargetPort.Type == intstr.Int {
			errs = append(errs, validatePort(pp.Child("targetPort"), p.TargetPort.IntVal)...)
		} else {
			for _, msg := range validation.IsValidPortName(p.TargetPort.StrVal) {
				errs = append(errs, field.Invalid(pp.Child("targetPort"), p.TargetPort.StrVal, msg))
			}
		}
		if p.NodePort != 0 && s.Spec.Type == corev1.ServiceTypeClusterIP {
			errs = append(errs, field.Forbidden(pp.Child("nodePort"), "may not be used when `type` is 'ClusterIP'"))
		}
	}
	errs = append(errs, metav1validation.ValidateLabels(s.Spec.Selector, sp.Child("selector"))...)
	if s.Spec.ClusterIP != "" && s.Spec.ClusterIP != corev1.ClusterIPNone {
		errs = append(errs, validateIP(sp.Child("clusterIP"), s.Spec.ClusterIP)...)
	}
	return errs
}

func validateServiceUpdate(obj, old runtime.Object) field.ErrorList {
	s, o := obj.(*corev1.Service), old.(*corev1.Service)
	if o.Spec.ClusterIP != "" && s.Spec.ClusterIP != o.Spec.ClusterIP && s.Spec.Type != corev1.ServiceTypeExternalName {
		return field.ErrorList{field.Invalid(field.NewPath("spec", "clusterIP"), s.Spec.ClusterIP, "field is immutable")}
	}
	return nil
}

func validateProtocol(p *field.Path, proto corev1.Protocol) field.ErrorList {
	switch proto {
	case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
		return nil
	}
	return field.ErrorList{field.NotSupported(p, proto, []string{"TCP", "UDP", "SCTP"})}
}

// pods are defined in pod.go.

func formatInt(i int64) string { return strconv.FormatInt(i, 10) }

func persistentVolumeClaims() Resource {
	return Resource{
		GroupVersion: gvCore, Plural: "persistentvolumeclaims", Singular: "persistentvolumeclaim", ShortNames: []string{"pvc"},
		New: func() runtime.Object { return &corev1.PersistentVolumeClaim{} }, NewList: func() runtime.Object { return &corev1.PersistentVolumeClaimList{} },
		Kind: Kind{Namespaced: true, HasStatus: true,
			PrepareCreate: func(_ context.Context, obj runtime.Object) {
				obj.(*corev1.PersistentVolumeClaim).Status = corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimPending}
			},
			Validate: func(obj runtime.Object) field.ErrorList {
				c := obj.(*corev1.PersistentVolumeClaim)
				if len(c.Spec.AccessModes) == 0 {
					return field.ErrorList{field.Required(field.NewPath("spec", "accessModes"), "at least 1 access mode is required")}
				}
				return nil
			}},
		Table: Table{
			Columns: []metav1.TableColumnDefinition{col("Name", "string", false, "Name"), col("Status", "string", false, "Phase"),
				col("Volume", "string", false, "Bound volume"), col("Age", "string", false, "Age")},
			Row: func(obj runtime.Object) []any {
				c := obj.(*corev1.PersistentVolumeClaim)
				return []any{c.Name, string(c.Status.Phase), c.Spec.VolumeName, age(c.CreationTimestamp)}
			},
		},
	}
}

func persistentVolumes() Resource {
	return Resource{
		GroupVersion: gvCore, Plural: "persistentvolumes", Singular: "persistentvolume", ShortNames: []string{"pv"},
		New: func() runtime.Object { return &corev1.PersistentVolume{} }, NewList: func() runtime.Object { return &corev1.PersistentVolumeList{} },
		Kind: Kind{HasStatus: true,
			PrepareCreate: func(_ context.Context, obj runtime.Object) {
				obj.(*corev1.PersistentVolume).Status = corev1.PersistentVolumeStatus{Phase: corev1.VolumePending}
			}},
		Table: Table{
			Columns: []metav1.TableColumnDefinition{col("Name", "string", false, "Name"), col("Status", "string", false, "Phase"),
				col("Claim", "string", false, "Bound claim"), col("Age", "string", false, "Age")},
			Row: func(obj runtime.Object) []any {
				v := obj.(*corev1.PersistentVolume)
				claim := ""
				if r := v.Spec.ClaimRef; r != nil {
					claim = r.Namespace + "/" + r.Name
				}
				return []any{v.Name, string(v.Status.Phase), claim, age(v.CreationTimestamp)}
			},
		},
	}
}

package apiserver

import (
	"fmt"
	"reflect"
	"strconv"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/storage"
)

// fieldLabels lists, per kind, the field selectors Kubernetes supports beyond
// metadata.name and metadata.namespace.
var fieldLabels = map[schema.GroupKind][]string{
	{Kind: "Pod"}: {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
		"spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"},
	{Kind: "Event"}: {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
		"involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
		"involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"},
	{Kind: "Secret"}:    {"type"},
	{Kind: "Node"}:      {"spec.unschedulable"},
	{Kind: "Namespace"}: {"status.phase"},
	{Kind: "Service"}:   {"spec.clusterIP", "spec.type"},
	{Group: certificatesv1.GroupName, Kind: "CertificateSigningRequest"}: {"spec.signerName"},
}

// selectableFields returns the field set that field selectors match against.
func selectableFields(obj runtime.Object) fields.Set {
	m, err := meta.Accessor(obj)
	if err != nil {
		return fields.Set{}
	}
	set := fields.Set{"metadata.name": m.GetName()}
	if m.GetNamespace() != "" {
		set["metadata.namespace"] = m.GetNamespace()
	}
	switch o := obj.(type) {
	case *corev1.Pod:
		set["spec.nodeName"] = o.Spec.NodeName
		set["spec.restartPolicy"] = string(o.Spec.RestartPolicy)
		set["spec.schedulerName"] = o.Spec.SchedulerName
		set["spec.serviceAccountName"] = o.Spec.ServiceAccountName
		set["spec.hostNetwork"] = strconv.FormatBool(o.Spec.HostNetwork)
		set["status.phase"] = string(o.Status.Phase)
		set["status.podIP"] = o.Status.PodIP
		set["status.nominatedNodeName"] = o.Status.NominatedNodeName
	case *corev1.Event:
		set["involvedObject.kind"] = o.InvolvedObject.Kind
		set["involvedObject.namespace"] = o.InvolvedObject.Namespace
		set["involvedObject.name"] = o.InvolvedObject.Name
		set["involvedObject.uid"] = string(o.InvolvedObject.UID)
		set["involvedObject.apiVersion"] = o.InvolvedObject.APIVersion
		set["involvedObject.resourceVersion"] = o.InvolvedObject.ResourceVersion
		set["involvedObject.fieldPath"] = o.InvolvedObject.FieldPath
		set["reason"] = o.Reason
		set["reportingComponent"] = o.ReportingController
		set["source"] = o.Source.Component
		set["type"] = o.Type
	case *corev1.Secret:
		set["type"] = string(o.Type)
	case *corev1.Node:
		set["spec.unschedulable"] = strconv.FormatBool(o.Spec.Unschedulable)
	case *corev1.Namespace:
		set["status.phase"] = string(o.Status.Phase)
	case *corev1.Service:
		set["spec.clusterIP"] = o.Spec.ClusterIP
		set["spec.type"] = string(o.Spec.Type)
	case *certificatesv1.CertificateSigningRequest:
		set["spec.signerName"] = o.Spec.SignerName
	}
	return set
}

// getAttrs is the storage.AttrFunc for every resource.
func getAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil, nil, err
	}
	return labels.Set(m.GetLabels()), selectableFields(obj), nil
}

var _ storage.AttrFunc = getAttrs

// addFieldLabelConversions registers, for every served kind, which field
// selectors are valid, so that a bad one gets a 400 naming it.
func addFieldLabelConversions(s *runtime.Scheme) error {
	for _, g := range groupVersions {
		for kind := range s.KnownTypes(g.gv) {
			if isMetaKind(kind) {
				continue
			}
			allowed := map[string]bool{"metadata.name": true, "metadata.namespace": true}
			for _, l := range fieldLabels[schema.GroupKind{Group: g.gv.Group, Kind: kind}] {
				allowed[l] = true
			}
			gvk := g.gv.WithKind(kind)
			err := s.AddFieldLabelConversionFunc(gvk, func(label, value string) (string, string, error) {
				if allowed[label] {
					return label, value, nil
				}
				return "", "", fmt.Errorf("field label not supported: %s", label)
			})
			if err != nil {
				return fmt.Errorf("field labels %s: %w", gvk, err)
			}
		}
	}
	return nil
}

func runtimeObjectOf(t reflect.Type) (runtime.Object, bool) {
	obj, ok := reflect.New(t).Interface().(runtime.Object)
	return obj, ok
}

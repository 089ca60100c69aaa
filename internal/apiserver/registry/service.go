package registry

import (
	"context"
	"errors"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage/names"
)

// ServiceREST is the services resource: it allocates cluster IPs and node
// ports on create and releases them on delete.
type ServiceREST struct {
	*genericregistry.Store
	IPs       *Allocator
	NodePorts *Allocator
}

func (r *ServiceREST) ShortNames() []string { return []string{"svc"} }
func (r *ServiceREST) Categories() []string { return []string{"all"} }

func owner(ns, name string) string { return ns + "/" + name }

func needsClusterIP(s *corev1.Service) bool {
	return s.Spec.Type != corev1.ServiceTypeExternalName && s.Spec.ClusterIP != corev1.ClusterIPNone
}

func needsNodePorts(s *corev1.Service) bool {
	return s.Spec.Type == corev1.ServiceTypeNodePort || s.Spec.Type == corev1.ServiceTypeLoadBalancer
}

// allocate reserves what svc needs; it returns the values to release if the
// create fails afterwards.
func (r *ServiceREST) allocate(ctx context.Context, svc *corev1.Service, dryRun bool) (ips, ports []string, err error) {
	who := owner(svc.Namespace, svc.Name)
	fail := func(p *field.Path, v any, msg string) error {
		return apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Service").GroupKind(), svc.Name, field.ErrorList{field.Invalid(p, v, msg)})
	}
	defer func() {
		if err != nil && !dryRun {
			r.release(ctx, who, ips, ports)
			ips, ports = nil, nil
		}
	}()
	if needsClusterIP(svc) {
		ipPath := field.NewPath("spec", "clusterIPs").Index(0)
		switch {
		case svc.Spec.ClusterIP == "" && dryRun:
			svc.Spec.ClusterIP = "" // assigned on the real request
		case svc.Spec.ClusterIP == "":
			ip, err := r.IPs.AllocateNext(ctx, who)
			if errors.Is(err, ErrFull) {
				return ips, ports, fail(ipPath, "", "range is full")
			} else if err != nil {
				return ips, ports, apierrors.NewInternalError(err)
			}
			svc.Spec.ClusterIP = ip
			ips = append(ips, ip)
		case !r.IPs.Contains(svc.Spec.ClusterIP):
			return ips, ports, fail(ipPath, svc.Spec.ClusterIP, "provided IP is not in the valid range")
		case dryRun:
			if free, err := r.IPs.Free(ctx, svc.Spec.ClusterIP); err == nil && !free {
				return ips, ports, fail(ipPath, svc.Spec.ClusterIP, "provided IP is already allocated")
			}
		default:
			fresh, err := r.IPs.allocate(ctx, svc.Spec.ClusterIP, who)
			if errors.Is(err, ErrAllocated) {
				return ips, ports, fail(ipPath, svc.Spec.ClusterIP, "provided IP is already allocated")
			} else if err != nil {
				return ips, ports, apierrors.NewInternalError(err)
			}
			// An IP this owner already held (a retried create of an
			// existing service) is not this call's to release.
			if fresh {
				ips = append(ips, svc.Spec.ClusterIP)
			}
		}
		if svc.Spec.ClusterIP != "" {
			svc.Spec.ClusterIPs = []string{svc.Spec.ClusterIP}
		}
	} else if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		svc.Spec.ClusterIPs = []string{corev1.ClusterIPNone}
	}
	if needsNodePorts(svc) {
		for i := range svc.Spec.Ports {
			p := &svc.Spec.Ports[i]
			path := field.NewPath("spec", "ports").Index(i).Child("nodePort")
			if dryRun {
				continue
			}
			if p.NodePort == 0 {
				v, err := r.NodePorts.AllocateNext(ctx, who)
				if err != nil {
					return ips, ports, fail(path, 0, err.Error())
				}
				n, _ := strconv.Atoi(v)
				p.NodePort = int32(n)
				ports = append(ports, v)
				continue
			}
			v := strconv.Itoa(int(p.NodePort))
			if !r.NodePorts.Contains(v) {
				return ips, ports, fail(path, p.NodePort, "provided port is not in the valid range")
			}
			fresh, err := r.NodePorts.allocate(ctx, v, who)
			if err != nil {
				return ips, ports, fail(path, p.NodePort, "provided port is already allocated")
			}
			if fresh {
				ports = append(ports, v)
			}
		}
	}
	return ips, ports, nil
}

func (r *ServiceREST) release(ctx context.Context, who string, ips, ports []string) {
	for _, ip := range ips {
		_ = r.IPs.Release(context.WithoutCancel(ctx), ip, who)
	}
	for _, p := range ports {
		_ = r.NodePorts.Release(context.WithoutCancel(ctx), p, who)
	}
}

// Create allocates, stores, and releases again if storing fails.
func (r *ServiceREST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return nil, apierrors.NewBadRequest("not a Service")
	}
	if ns, ok := genericapirequest.NamespaceFrom(ctx); ok && svc.Namespace == "" {
		svc.Namespace = ns
	}
	defaultService(svc)
	if svc.Name == "" {
		// generateName: the store picks the name; allocate under a temporary owner is
		// not possible, so reject as kube-apiserver would accept; we generate here.
		if svc.GenerateName == "" {
			return nil, apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Service").GroupKind(), "", field.ErrorList{field.Required(field.NewPath("metadata", "name"), "name or generateName is required")})
		}
		svc.Name = names.SimpleNameGenerator.GenerateName(svc.GenerateName)
	}
	dryRun := len(options.DryRun) > 0
	ips, ports, err := r.allocate(ctx, svc, dryRun)
	if err != nil {
		return nil, err
	}
	out, err := r.Store.Create(ctx, svc, createValidation, options)
	if err != nil {
		r.release(ctx, owner(svc.Namespace, svc.Name), ips, ports)
		return nil, err
	}
	return out, nil
}

// Update keeps allocations in step with type changes.
func (r *ServiceREST) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo, createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc, forceAllowCreate bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	dryRun := len(options.DryRun) > 0
	var allocatedIPs, allocatedPorts []string
	var who string
	keep := func(ctx context.Context, newObj, oldObj runtime.Object) (runtime.Object, error) {
		n, o := newObj.(*corev1.Service), oldObj.(*corev1.Service)
		who = owner(o.Namespace, o.Name)
		defaultService(n)
		if n.Spec.ClusterIP == "" && needsClusterIP(n) && o.Spec.ClusterIP != "" {
			n.Spec.ClusterIP, n.Spec.ClusterIPs = o.Spec.ClusterIP, o.Spec.ClusterIPs
		}
		if needsNodePorts(n) {
			old := map[string]int32{}
			for _, p := range o.Spec.Ports {
				old[p.Name+"/"+strconv.Itoa(int(p.Port))] = p.NodePort
			}
			for i := range n.Spec.Ports {
				if n.Spec.Ports[i].NodePort == 0 {
					n.Spec.Ports[i].NodePort = old[n.Spec.Ports[i].Name+"/"+strconv.Itoa(int(n.Spec.Ports[i].Port))]
				}
			}
		}
		if needsClusterIP(n) && n.Spec.ClusterIP == "" {
			ips, _, err := r.allocate(ctx, n, dryRun)
			if err != nil {
				return nil, err
			}
			allocatedIPs = append(allocatedIPs, ips...)
		}
		if needsNodePorts(n) && !dryRun {
			for i := range n.Spec.Ports {
				p := &n.Spec.Ports[i]
				v := strconv.Itoa(int(p.NodePort))
				if p.NodePort == 0 {
					nv, err := r.NodePorts.AllocateNext(ctx, who)
					if err != nil {
						return nil, apierrors.NewInternalError(err)
					}
					pn, _ := strconv.Atoi(nv)
					p.NodePort = int32(pn)
					allocatedPorts = append(allocatedPorts, nv)
				} else if err := r.NodePorts.Allocate(ctx, v, who); err != nil {
					return nil, apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Service").GroupKind(), n.Name,
						field.ErrorList{field.Invalid(field.NewPath("spec", "ports").Index(i).Child("nodePort"), p.NodePort, "provided port is already allocated")})
				}
			}
		}
		if !needsNodePorts(n) {
			for i := range n.Spec.Ports {
				n.Spec.Ports[i].NodePort = 0
			}
		}
		return n, nil
	}
	out, created, err := r.Store.Update(ctx, name, rest.WrapUpdatedObjectInfo(objInfo, keep), createValidation, updateValidation, forceAllowCreate, options)
	if err != nil {
		if !dryRun {
			r.release(ctx, who, allocatedIPs, allocatedPorts)
		}
		return out, created, err
	}
	return out, created, nil
}

// Delete removes the service and frees its cluster IP and node ports.
func (r *ServiceREST) Delete(ctx context.Context, name string, deleteValidation rest.ValidateObjectFunc, options *metav1.DeleteOptions) (runtime.Object, bool, error) {
	out, immediate, err := r.Store.Delete(ctx, name, deleteValidation, options)
	if err != nil || (options != nil && len(options.DryRun) > 0) {
		return out, immediate, err
	}
	if svc, ok := out.(*corev1.Service); ok && immediate {
		r.releaseAll(ctx, svc)
	}
	return out, immediate, nil
}

func (r *ServiceREST) releaseAll(ctx context.Context, svc *corev1.Service) {
	var ports []string
	for _, p := range svc.Spec.Ports {
		if p.NodePort != 0 {
			ports = append(ports, strconv.Itoa(int(p.NodePort)))
		}
	}
	var ips []string
	if svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone {
		ips = []string{svc.Spec.ClusterIP}
	}
	r.release(ctx, owner(svc.Namespace, svc.Name), ips, ports)
}

// DeleteCollection deletes each service through Delete so allocations are freed.
func (r *ServiceREST) DeleteCollection(ctx context.Context, deleteValidation rest.ValidateObjectFunc, options *metav1.DeleteOptions, listOptions *metainternalversion.ListOptions) (runtime.Object, error) {
	listObj, err := r.Store.List(ctx, listOptions)
	if err != nil {
		return nil, err
	}
	list := listObj.(*corev1.ServiceList)
	out := &corev1.ServiceList{ListMeta: list.ListMeta}
	for i := range list.Items {
		opts := options.DeepCopy()
		uid := list.Items[i].UID
		if opts == nil {
			opts = &metav1.DeleteOptions{}
		}
		opts.Preconditions = &metav1.Preconditions{UID: &uid}
		obj, _, err := r.Delete(ctx, list.Items[i].Name, deleteValidation, opts)
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if svc, ok := obj.(*corev1.Service); ok {
			out.Items = append(out.Items, *svc)
		}
	}
	return out, nil
}

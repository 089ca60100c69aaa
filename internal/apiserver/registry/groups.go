package registry

import (
	"context"
	"fmt"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/api/validation/path"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
)

func leases() Resource {
	return Resource{
		GroupVersion: coordinationv1.SchemeGroupVersion, Plural: "leases", Singular: "lease",
		New: func() runtime.Object { return &coordinationv1.Lease{} }, NewList: func() runtime.Object { return &coordinationv1.LeaseList{} },
		Kind: Kind{Namespaced: true, Validate: func(obj runtime.Object) field.ErrorList {
			l := obj.(*coordinationv1.Lease)
			if d := l.Spec.LeaseDurationSeconds; d != nil && *d <= 0 {
				return field.ErrorList{field.Invalid(field.NewPath("spec", "leaseDurationSeconds"), *d, "must be greater than 0")}
			}
			return nil
		}},
		Table: Table{
			Columns: []metav1.TableColumnDefinition{col("Name", "string", false, "Name"), col("Holder", "string", false, "Holder identity"), col("Age", "string", false, "Age")},
			Row: func(obj runtime.Object) []any {
				l := obj.(*coordinationv1.Lease)
				holder := ""
				if l.Spec.HolderIdentity != nil {
					holder = *l.Spec.HolderIdentity
				}
				return []any{l.Name, holder, age(l.CreationTimestamp)}
			},
		},
	}
}

func endpointSlices() Resource {
	return Resource{
		GroupVersion: discoveryv1.SchemeGroupVersion, Plural: "endpointslices", Singular: "endpointslice",
		New: func() runtime.Object { return &discoveryv1.EndpointSlice{} }, NewList: func() runtime.Object { return &discoveryv1.EndpointSliceList{} },
		Kind: Kind{Namespaced: true, Validate: func(obj runtime.Object) field.ErrorList {
			s := obj.(*discoveryv1.EndpointSlice)
			var errs field.ErrorList
			switch s.AddressType {
			case discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN:
			default:
				errs = append(errs, field.NotSupported(field.NewPath("addressType"), s.AddressType, []string{"IPv4", "IPv6", "FQDN"}))
			}
			for i, ep := range s.Endpoints {
				if len(ep.Addresses) == 0 || len(ep.Addresses) > 100 {
					errs = append(errs, field.Invalid(field.NewPath("endpoints").Index(i).Child("addresses"), len(ep.Addresses), "must contain between 1 and 100 addresses"))
				}
			}
			return errs
		}},
		Table: Table{
			Columns: []metav1.TableColumnDefinition{col("Name", "string", false, "Name"), col("AddressType", "string", false, "Address type"),
				col("Ports", "string", false, "Ports"), col("Endpoints", "string", false, "Endpoints"), col("Age", "string", false, "Age")},
			Row: func(obj runtime.Object) []any {
				s := obj.(*discoveryv1.EndpointSlice)
				var ports, addrs []string
				for _, p := range s.Ports {
					if p.Port != nil {
						ports = append(ports, fmt.Sprint(*p.Port))
					}
				}
				for _, ep := range s.Endpoints {
					addrs = append(addrs, ep.Addresses...)
				}
				if len(addrs) > 3 {
					addrs = append(addrs[:3], fmt.Sprintf("+ %d more...", len(addrs)-3))
				}
				return []any{s.Name, string(s.AddressType), orUnset(strings.Join(ports, ",")), orUnset(strings.Join(addrs, ",")), age(s.CreationTimestamp)}
			},
		},
	}
}

func orUnset(s string) string {
	if s == "" {
		return "<unset>"
	}
	return s
}

func csrs() Resource {
	return Resource{
		GroupVersion: certificatesv1.SchemeGroupVersion, Plural: "certificatesigningrequests", Singular: "certificatesigningrequest", ShortNames: []string{"csr"},
		New: func() runtime.Object { return &certificatesv1.CertificateSigningRequest{} }, NewList: func() runtime.Object { return &certificatesv1.CertificateSigningRequestList{} },
		Kind: Kind{HasStatus: true, Validate: validateCSR, PrepareCreate: prepareCSR,
			ValidateUpdate: func(obj, old runtime.Object) field.ErrorList {
				n, o := obj.(*certificatesv1.CertificateSigningRequest), old.(*certificatesv1.CertificateSigningRequest)
				if !equalBut(&certificatesv1.CertificateSigningRequest{Spec: n.Spec}, &certificatesv1.CertificateSigningRequest{Spec: o.Spec}, "ObjectMeta", "TypeMeta", "Status") {
					return field.ErrorList{field.Forbidden(field.NewPath("spec"), "field is immutable")}
				}
				return nil
			},
			StatusValidate: func(obj, old runtime.Object) field.ErrorList {
				return validateCSRConditions(obj.(*certificatesv1.CertificateSigningRequest))
			}},
		Table: Table{
			Columns: []metav1.TableColumnDefinition{col("Name", "string", false, "Name"), col("Age", "string", false, "Age"),
				col("SignerName", "string", false, "Signer"), col("Requestor", "string", false, "Requestor"),
				col("RequestedDuration", "string", false, "Requested duration"), col("Condition", "string", false, "Condition")},
			Row: func(obj runtime.Object) []any {
				c := obj.(*certificatesv1.CertificateSigningRequest)
				dur := "<none>"
				if c.Spec.ExpirationSeconds != nil {
					dur = (time.Duration(*c.Spec.ExpirationSeconds) * time.Second).String()
				}
				return []any{c.Name, age(c.CreationTimestamp), c.Spec.SignerName, c.Spec.Username, dur, csrCondition(c)}
			},
		},
	}
}

// prepareCSR records who asked, from the authenticated request (never from
// the body), and starts with an empty status — as Kubernetes does.
func prepareCSR(ctx context.Context, obj runtime.Object) {
	c := obj.(*certificatesv1.CertificateSigningRequest)
	c.Spec.Username, c.Spec.UID, c.Spec.Groups, c.Spec.Extra = "", "", nil, nil
	if u, ok := genericapirequest.UserFrom(ctx); ok {
		c.Spec.Username, c.Spec.UID, c.Spec.Groups = u.GetName(), u.GetUID(), u.GetGroups()
		for k, v := range u.GetExtra() {
			if c.Spec.Extra == nil {
				c.Spec.Extra = map[string]certificatesv1.ExtraValue{}
			}
			c.Spec.Extra[k] = v
		}
	}
	c.Status = certificatesv1.CertificateSigningRequestStatus{}
}

func csrCondition(c *certificatesv1.CertificateSigningRequest) string {
	var parts []string
	for _, cond := range c.Status.Conditions {
		if cond.Status == corev1.ConditionTrue || cond.Status == "" {
			parts = append(parts, string(cond.Type))
		}
	}
	if len(c.Status.Certificate) > 0 {
		parts = append(parts, "Issued")
	}
	if len(parts) == 0 {
		return "Pending"
	}
	return strings.Join(parts, ",")
}

func validateCSR(obj runtime.Object) field.ErrorList {
	c := obj.(*certificatesv1.CertificateSigningRequest)
	sp := field.NewPath("spec")
	var errs field.ErrorList
	if len(c.Spec.Request) == 0 {
		errs = append(errs, field.Required(sp.Child("request"), ""))
	}
	if c.Spec.SignerName == "" {
		errs = append(errs, field.Required(sp.Child("signerName"), ""))
	} else if !strings.Contains(c.Spec.SignerName, "/") {
		errs = append(errs, field.Invalid(sp.Child("signerName"), c.Spec.SignerName, "must be a fully qualified domain and path of the form 'example.com/signer-name'"))
	}
	if len(c.Spec.Usages) == 0 {
		errs = append(errs, field.Required(sp.Child("usages"), ""))
	}
	if e := c.Spec.ExpirationSeconds; e != nil && *e < 600 {
		errs = append(errs, field.Invalid(sp.Child("expirationSeconds"), *e, "may not specify a duration less than 600 seconds (10 minutes)"))
	}
	return append(errs, validateCSRConditions(c)...)
}

func validateCSRConditions(c *certificatesv1.CertificateSigningRequest) field.ErrorList {
	var errs field.ErrorList
	approved, denied := false, false
	for i, cond := range c.Status.Conditions {
		p := field.NewPath("status", "conditions").Index(i)
		switch cond.Type {
		case certificatesv1.CertificateApproved:
			approved = true
		case certificatesv1.CertificateDenied:
			denied = true
		case "":
			errs = append(errs, field.Required(p.Child("type"), ""))
		}
	}
	if approved && denied {
		errs = append(errs, field.Invalid(field.NewPath("status", "conditions"), "", "Approved and Denied conditions are mutually exclusive"))
	}
	return errs
}

var gvRBAC = rbacv1.SchemeGroupVersion

func validateRules(rules []rbacv1.PolicyRule, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i, r := range rules {
		rp := p.Index(i)
		if len(r.Verbs) == 0 {
			errs = append(errs, field.Required(rp.Child("verbs"), "verbs must contain at least one value"))
		}
		if len(r.NonResourceURLs) > 0 && (len(r.APIGroups) > 0 || len(r.Resources) > 0 || len(r.ResourceNames) > 0) {
			errs = append(errs, field.Invalid(rp.Child("nonResourceURLs"), r.NonResourceURLs, "rules cannot apply to both regular resources and non-resource URLs"))
		}
		if len(r.NonResourceURLs) == 0 && len(r.Resources) == 0 {
			errs = append(errs, field.Required(rp.Child("resources"), "resource rules must supply at least one resource"))
		}
	}
	return errs
}

func validateBinding(ref rbacv1.RoleRef, subjects []rbacv1.Subject, namespaced bool) field.ErrorList {
	var errs field.ErrorList
	switch {
	case ref.APIGroup != rbacv1.GroupName:
		errs = append(errs, field.NotSupported(field.NewPath("roleRef", "apiGroup"), ref.APIGroup, []string{rbacv1.GroupName}))
	case ref.Kind != "ClusterRole" && (!namespaced || ref.Kind != "Role"):
		errs = append(errs, field.NotSupported(field.NewPath("roleRef", "kind"), ref.Kind, []string{"Role", "ClusterRole"}))
	case ref.Name == "":
		errs = append(errs, field.Required(field.NewPath("roleRef", "name"), ""))
	}
	for i, s := range subjects {
		sp := field.NewPath("subjects").Index(i)
		if s.Name == "" {
			errs = append(errs, field.Required(sp.Child("name"), ""))
		}
		switch s.Kind {
		case rbacv1.ServiceAccountKind:
			if !namespaced && s.Namespace == "" {
				errs = append(errs, field.Required(sp.Child("namespace"), ""))
			}
		case rbacv1.UserKind, rbacv1.GroupKind:
		default:
			errs = append(errs, field.NotSupported(sp.Child("kind"), s.Kind, []string{"ServiceAccount", "User", "Group"}))
		}
	}
	return errs
}

func immutableRoleRef(a, b rbacv1.RoleRef) field.ErrorList {
	if a != b {
		return field.ErrorList{field.Invalid(field.NewPath("roleRef"), a, "cannot change roleRef")}
	}
	return nil
}

func bindingTable(namespaced bool) Table {
	return Table{
		Columns: []metav1.TableColumnDefinition{col("Name", "string", false, "Name"), col("Role", "string", false, "Role"), col("Age", "string", false, "Age"),
			col("Users", "string", true, "Users"), col("Groups", "string", true, "Groups"), col("ServiceAccounts", "string", true, "Service accounts")},
		Row: func(obj runtime.Object) []any {
			var name string
			var ref rbacv1.RoleRef
			var subjects []rbacv1.Subject
			var created metav1.Time
			switch b := obj.(type) {
			case *rbacv1.RoleBinding:
				name, ref, subjects, created = b.Name, b.RoleRef, b.Subjects, b.CreationTimestamp
			case *rbacv1.ClusterRoleBinding:
				name, ref, subjects, created = b.Name, b.RoleRef, b.Subjects, b.CreationTimestamp
			}
			var users, groups, sas []string
			for _, s := range subjects {
				switch s.Kind {
				case rbacv1.UserKind:
					users = append(users, s.Name)
				case rbacv1.GroupKind:
					groups = append(groups, s.Name)
				case rbacv1.ServiceAccountKind:
					sas = append(sas, s.Namespace+"/"+s.Name)
				}
			}
			return []any{name, ref.Kind + "/" + ref.Name, age(created), strings.Join(users, ", "), strings.Join(groups, ", "), strings.Join(sas, ", ")}
		},
	}
}

func rbacResources() []Resource {
	pathName := apivalidation.ValidateNameFunc(path.ValidatePathSegmentName)
	return []Resource{
		{GroupVersion: gvRBAC, Plural: "roles", Singular: "role",
			New: func() runtime.Object { return &rbacv1.Role{} }, NewList: func() runtime.Object { return &rbacv1.RoleList{} },
			Kind: Kind{Namespaced: true, NameFn: pathName, Validate: func(obj runtime.Object) field.ErrorList {
				return validateRules(obj.(*rbacv1.Role).Rules, field.NewPath("rules"))
			}},
			Table: nameCreatedAt()},
		{GroupVersion: gvRBAC, Plural: "clusterroles", Singular: "clusterrole",
			New: func() runtime.Object { return &rbacv1.ClusterRole{} }, NewList: func() runtime.Object { return &rbacv1.ClusterRoleList{} },
			Kind: Kind{NameFn: pathName, Validate: func(obj runtime.Object) field.ErrorList {
				cr := obj.(*rbacv1.ClusterRole)
				if cr.AggregationRule != nil && len(cr.Rules) > 0 && len(cr.AggregationRule.ClusterRoleSelectors) == 0 {
					return field.ErrorList{field.Required(field.NewPath("aggregationRule", "clusterRoleSelectors"), "")}
				}
				return validateRules(cr.Rules, field.NewPath("rules"))
			}},
			Table: nameCreatedAt()},
		{GroupVersion: gvRBAC, Plural: "rolebindings", Singular: "rolebinding",
			New: func() runtime.Object { return &rbacv1.RoleBinding{} }, NewList: func() runtime.Object { return &rbacv1.RoleBindingList{} },
			Kind: Kind{Namespaced: true, NameFn: pathName,
				Validate: func(obj runtime.Object) field.ErrorList {
					b := obj.(*rbacv1.RoleBinding)
					return validateBinding(b.RoleRef, b.Subjects, true)
				},
				ValidateUpdate: func(obj, old runtime.Object) field.ErrorList {
					return immutableRoleRef(obj.(*rbacv1.RoleBinding).RoleRef, old.(*rbacv1.RoleBinding).RoleRef)
				}},
			Table: bindingTable(true)},
		{GroupVersion: gvRBAC, Plural: "clusterrolebindings", Singular: "clusterrolebinding",
			New: func() runtime.Object { return &rbacv1.ClusterRoleBinding{} }, NewList: func() runtime.Object { return &rbacv1.ClusterRoleBindingList{} },
			Kind: Kind{NameFn: pathName,
				Validate: func(obj runtime.Object) field.ErrorList {
					b := obj.(*rbacv1.ClusterRoleBinding)
					return validateBinding(b.RoleRef, b.Subjects, false)
				},
				ValidateUpdate: func(obj, old runtime.Object) field.ErrorList {
					return immutableRoleRef(obj.(*rbacv1.ClusterRoleBinding).RoleRef, old.(*rbacv1.ClusterRoleBinding).RoleRef)
				}},
			Table: bindingTable(false)},
	}
}

// Stored returns every stored resource the hub serves.
func Stored() []Resource {
	list := []Resource{namespaces(), nodes(), pods(), services(), endpoints(), serviceAccounts(), secrets(), configMaps(), events(),
		persistentVolumeClaims(), persistentVolumes(),
		leases(), endpointSlices(), csrs()}
	return append(list, rbacResources()...)
}

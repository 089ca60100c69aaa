package authz

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
)

// escalationCheck is the privilege-escalation prevention Kubernetes does in
// RBAC storage: a user may write a role only with rules they already hold
// (or with the escalate verb on it), and a binding only to a role whose
// rules they hold (or with the bind verb on it).
type escalationCheck struct {
	*admission.Handler
	rbac  *RBAC
	authz authorizer.Authorizer
}

// NewEscalationCheck returns the admission check for create/update of
// roles, clusterroles, rolebindings and clusterrolebindings. r resolves the
// requester's rules; authz (the whole chain) answers escalate and bind.
// Members of system:masters may do anything, as in Kubernetes.
func NewEscalationCheck(r *RBAC, authz authorizer.Authorizer) admission.ValidationInterface {
	return &escalationCheck{Handler: admission.NewHandler(admission.Create, admission.Update), rbac: r, authz: authz}
}

func (e *escalationCheck) Validate(ctx context.Context, a admission.Attributes, _ admission.ObjectInterfaces) error {
	if a == nil {
		return nil
	}
	gr := a.GetResource().GroupResource()
	if gr.Group != rbacv1.GroupName || a.GetSubresource() != "" {
		return nil
	}
	if a.GetOperation() != admission.Create && a.GetOperation() != admission.Update {
		return nil
	}
	u := a.GetUserInfo()
	if u == nil {
		return admission.NewForbidden(a, errors.New("no user"))
	}
	if privileged(u) {
		return nil
	}
	var err error
	switch obj := a.GetObject().(type) {
	case *rbacv1.Role:
		if obj == nil {
			return admission.NewForbidden(a, errors.New("nil object"))
		}
		if old, ok := a.GetOldObject().(*rbacv1.Role); ok && old != nil && onlyGCFieldsChanged(&obj.ObjectMeta, &old.ObjectMeta) && equality.Semantic.DeepEqual(obj.Rules, old.Rules) {
			return nil
		}
		err = e.checkRole(ctx, a, u, "roles", nsOf(obj.Namespace, a), obj.Name, obj.Rules, false)
	case *rbacv1.ClusterRole:
		if obj == nil {
			return admission.NewForbidden(a, errors.New("nil object"))
		}
		if old, ok := a.GetOldObject().(*rbacv1.ClusterRole); ok && old != nil && onlyGCFieldsChanged(&obj.ObjectMeta, &old.ObjectMeta) &&
			equality.Semantic.DeepEqual(obj.Rules, old.Rules) && equality.Semantic.DeepEqual(obj.AggregationRule, old.AggregationRule) {
			return nil
		}
		hasAgg := obj.AggregationRule != nil && len(obj.AggregationRule.ClusterRoleSelectors) > 0
		err = e.checkRole(ctx, a, u, "clusterroles", "", obj.Name, obj.Rules, hasAgg)
	case *rbacv1.RoleBinding:
		if obj == nil {
			return admission.NewForbidden(a, errors.New("nil object"))
		}
		if old, ok := a.GetOldObject().(*rbacv1.RoleBinding); ok && old != nil && onlyGCFieldsChanged(&obj.ObjectMeta, &old.ObjectMeta) &&
			obj.RoleRef == old.RoleRef && equality.Semantic.DeepEqual(obj.Subjects, old.Subjects) {
			return nil
		}
		err = e.checkBinding(ctx, u, obj.RoleRef, nsOf(obj.Namespace, a))
	case *rbacv1.ClusterRoleBinding:
		if obj == nil {
			return admission.NewForbidden(a, errors.New("nil object"))
		}
		if old, ok := a.GetOldObject().(*rbacv1.ClusterRoleBinding); ok && old != nil && onlyGCFieldsChanged(&obj.ObjectMeta, &old.ObjectMeta) &&
			obj.RoleRef == old.RoleRef && equality.Semantic.DeepEqual(obj.Subjects, old.Subjects) {
			return nil
		}
		if obj.RoleRef.Kind != "ClusterRole" {
			err = fmt.Errorf("clusterrolebinding %q must reference a ClusterRole", obj.Name)
			break
		}
		err = e.checkBinding(ctx, u, obj.RoleRef, "")
	case nil:
		return nil
	default:
		switch gr.Resource {
		case "roles", "clusterroles", "rolebindings", "clusterrolebindings":
			return admission.NewForbidden(a, fmt.Errorf("unexpected object %T", obj))
		}
		return nil
	}
	if err != nil {
		return admission.NewForbidden(a, err)
	}
	return nil
}

func nsOf(ns string, a admission.Attributes) string {
	if ns != "" {
		return ns
	}
	return a.GetNamespace()
}

func privileged(u user.Info) bool {
	for _, g := range u.GetGroups() {
		if g == user.SystemPrivilegedGroup {
			return true
		}
	}
	return false
}

// onlyGCFieldsChanged: updates that only touch ownerReferences and
// finalizers (or nothing) need no escalation check, as in Kubernetes.
func onlyGCFieldsChanged(obj, old *metav1.ObjectMeta) bool {
	a, b := obj.DeepCopy(), old.DeepCopy()
	for _, m := range []*metav1.ObjectMeta{a, b} {
		m.OwnerReferences, m.Finalizers = nil, nil
		m.ResourceVersion, m.ManagedFields, m.Generation = "", nil, 0
	}
	return equality.Semantic.DeepEqual(a, b)
}

func (e *escalationCheck) allowedVerb(ctx context.Context, u user.Info, verb, resource, namespace, name string) (bool, error) {
	if e.authz == nil {
		return false, nil
	}
	d, _, err := e.authz.Authorize(ctx, authorizer.AttributesRecord{
		User: u, Verb: verb, Namespace: namespace, APIGroup: rbacv1.GroupName, APIVersion: "*",
		Resource: resource, Name: name, ResourceRequest: true,
	})
	return d == authorizer.DecisionAllow, err
}

func (e *escalationCheck) checkRole(ctx context.Context, a admission.Attributes, u user.Info, resource, namespace, name string, rules []rbacv1.PolicyRule, aggregation bool) error {
	if name == "" {
		name = a.GetName()
	}
	if ok, _ := e.allowedVerb(ctx, u, "escalate", resource, namespace, name); ok {
		return nil
	}
	if aggregation {
		full := []rbacv1.PolicyRule{rule(vs("*"), vs("*"), "*"), urls(vs("*"), "*")}
		if err := e.confirmNoEscalation(u, namespace, full); err != nil {
			return fmt.Errorf("must have cluster-admin privileges or escalate on %s to use an aggregationRule: %w", resource, err)
		}
	}
	return e.confirmNoEscalation(u, namespace, rules)
}

func (e *escalationCheck) checkBinding(ctx context.Context, u user.Info, ref rbacv1.RoleRef, namespace string) error {
	if ref.APIGroup != rbacv1.GroupName {
		return fmt.Errorf("roleRef apiGroup must be %q", rbacv1.GroupName)
	}
	resource := ""
	switch ref.Kind {
	case "Role":
		resource = "roles"
	case "ClusterRole":
		resource = "clusterroles"
	default:
		return fmt.Errorf("unsupported roleRef kind %q", ref.Kind)
	}
	if ok, _ := e.allowedVerb(ctx, u, "bind", resource, namespace, ref.Name); ok {
		return nil
	}
	if e.rbac == nil {
		return errors.New("no RBAC rule resolver")
	}
	rules, err := e.rbac.roleRefRules(ref, namespace)
	if err != nil {
		return fmt.Errorf("cannot check the rules of %s %q: %w", ref.Kind, ref.Name, err)
	}
	return e.confirmNoEscalation(u, namespace, rules)
}

// confirmNoEscalation fails when rules grant something u does not hold in
// namespace (cluster-wide bindings plus that namespace's bindings).
func (e *escalationCheck) confirmNoEscalation(u user.Info, namespace string, rules []rbacv1.PolicyRule) error {
	if e.rbac == nil {
		return errors.New("no RBAC rule resolver")
	}
	owner, resolveErr := e.rbac.policyRulesFor(u, namespace)
	ok, missing := covers(owner, rules)
	if ok {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "user %q (groups=%q) is attempting to grant RBAC permissions not currently held:", u.GetName(), u.GetGroups())
	for i, m := range missing {
		if i == 20 {
			fmt.Fprintf(&b, "\n... and %d more", len(missing)-i)
			break
		}
		writeRule(&b, &m)
	}
	if resolveErr != nil {
		fmt.Fprintf(&b, "\n; resolution errors: %v", resolveErr)
	}
	return errors.New(b.String())
}

func writeRule(w io.Writer, r *rbacv1.PolicyRule) {
	parts := []string{}
	if len(r.APIGroups) > 0 {
		parts = append(parts, fmt.Sprintf("APIGroups:%q", r.APIGroups))
	}
	if len(r.Resources) > 0 {
		parts = append(parts, fmt.Sprintf("Resources:%q", r.Resources))
	}
	if len(r.ResourceNames) > 0 {
		parts = append(parts, fmt.Sprintf("ResourceNames:%q", r.ResourceNames))
	}
	if len(r.NonResourceURLs) > 0 {
		parts = append(parts, fmt.Sprintf("NonResourceURLs:%q", r.NonResourceURLs))
	}
	parts = append(parts, fmt.Sprintf("Verbs:%q", r.Verbs))
	fmt.Fprintf(w, "\n{%s}", strings.Join(parts, ", "))
}

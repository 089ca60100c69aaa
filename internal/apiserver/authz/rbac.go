package authz

import (
	"context"
	"errors"
	"fmt"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/client-go/informers"
	rbaclisters "k8s.io/client-go/listers/rbac/v1"
	"k8s.io/client-go/tools/cache"
)

// subjectIndex is the indexer name under which bindings are indexed by
// subject ("u:<user>" or "g:<group>"; RoleBindings prefixed "<ns>/").
const subjectIndex = "tether.authz/subject"

// RBAC authorizes by Roles/ClusterRoles/bindings read from informers.
type RBAC struct {
	roles        rbaclisters.RoleLister
	clusterRoles rbaclisters.ClusterRoleLister
	rbIndex      cache.Indexer
	crbIndex     cache.Indexer
	initErr      error
}

var (
	_ authorizer.Authorizer   = (*RBAC)(nil)
	_ authorizer.RuleResolver = (*RBAC)(nil)
)

// NewRBAC registers its informers (and a by-subject index on the bindings)
// on f; f is started by the caller.
func NewRBAC(f informers.SharedInformerFactory) *RBAC {
	v1 := f.Rbac().V1()
	r := &RBAC{
		roles:        v1.Roles().Lister(),
		clusterRoles: v1.ClusterRoles().Lister(),
	}
	rbInf := v1.RoleBindings().Informer()
	crbInf := v1.ClusterRoleBindings().Informer()
	r.rbIndex = rbInf.GetIndexer()
	r.crbIndex = crbInf.GetIndexer()
	errRB := addIndex(rbInf, cache.IndexFunc(roleBindingSubjectKeys))
	errCRB := addIndex(crbInf, cache.IndexFunc(clusterRoleBindingSubjectKeys))
	r.initErr = errors.Join(errRB, errCRB)
	return r
}

func addIndex(inf cache.SharedIndexInformer, fn cache.IndexFunc) error {
	if _, ok := inf.GetIndexer().GetIndexers()[subjectIndex]; ok {
		return nil
	}
	if err := inf.AddIndexers(cache.Indexers{subjectIndex: fn}); err != nil {
		return fmt.Errorf("authz: index bindings by subject: %w", err)
	}
	return nil
}

// subjectKeys returns the index keys of a binding's subjects; ns is the
// binding's namespace (empty for ClusterRoleBindings), which is also the
// default namespace of ServiceAccount subjects.
func subjectKeys(prefix, ns string, subjects []rbacv1.Subject) []string {
	keys := make([]string, 0, len(subjects))
	for _, s := range subjects {
		switch s.Kind {
		case rbacv1.UserKind:
			if s.APIGroup == rbacv1.GroupName || s.APIGroup == "" {
				keys = append(keys, prefix+"u:"+s.Name)
			}
		case rbacv1.GroupKind:
			if s.APIGroup == rbacv1.GroupName || s.APIGroup == "" {
				keys = append(keys, prefix+"g:"+s.Name)
			}
		case rbacv1.ServiceAccountKind:
			saNS := s.Namespace
			if saNS == "" {
				saNS = ns
			}
			if saNS == "" || s.Name == "" || s.APIGroup != "" {
				continue
			}
			keys = append(keys, prefix+"u:"+serviceaccount.MakeUsername(saNS, s.Name))
		}
	}
	return keys
}

func roleBindingSubjectKeys(obj interface{}) ([]string, error) {
	rb, ok := obj.(*rbacv1.RoleBinding)
	if !ok {
		return nil, nil
	}
	return subjectKeys(rb.Namespace+"/", rb.Namespace, rb.Subjects), nil
}

func clusterRoleBindingSubjectKeys(obj interface{}) ([]string, error) {
	crb, ok := obj.(*rbacv1.ClusterRoleBinding)
	if !ok {
		return nil, nil
	}
	return subjectKeys("", "", crb.Subjects), nil
}

// visitor is called with each rule that applies to the user, and the
// binding it came from; it returns false to stop.
type visitor func(source bindingSource, rule *rbacv1.PolicyRule, err error) bool

type bindingSource struct {
	kind, namespace, name string // the binding
	roleKind, roleName    string
}

func (s bindingSource) String() string {
	if s.namespace != "" {
		return fmt.Sprintf("%s %q of %s %q in namespace %q", s.kind, s.name, s.roleKind, s.roleName, s.namespace)
	}
	return fmt.Sprintf("%s %q of %s %q", s.kind, s.name, s.roleKind, s.roleName)
}

// visitRules walks the rules bound to u cluster-wide and, when namespace is
// set, in that namespace, through the subject index (not a scan of all
// bindings).
func (r *RBAC) visitRules(u user.Info, namespace string, visit visitor) {
	if r.initErr != nil {
		visit(bindingSource{}, nil, r.initErr)
		return
	}
	if u == nil {
		return
	}
	name, groups := u.GetName(), u.GetGroups()
	lookup := func(idx cache.Indexer, prefix string, fn func(obj interface{}) bool) bool {
		for i := -1; i < len(groups); i++ {
			var key string
			switch {
			case i >= 0:
				key = prefix + "g:" + groups[i]
			case name == "":
				continue
			default:
				key = prefix + "u:" + name
			}
			objs, err := idx.ByIndex(subjectIndex, key)
			if err != nil {
				if !visit(bindingSource{}, nil, fmt.Errorf("authz: binding index: %w", err)) {
					return false
				}
				continue
			}
			for _, o := range objs {
				if !fn(o) {
					return false
				}
			}
		}
		return true
	}
	cont := lookup(r.crbIndex, "", func(obj interface{}) bool {
		crb, ok := obj.(*rbacv1.ClusterRoleBinding)
		if !ok {
			return true
		}
		src := bindingSource{kind: "ClusterRoleBinding", name: crb.Name, roleKind: crb.RoleRef.Kind, roleName: crb.RoleRef.Name}
		rules, err := r.roleRefRules(crb.RoleRef, "")
		return visitAll(src, rules, err, visit)
	})
	if !cont || namespace == "" {
		return
	}
	lookup(r.rbIndex, namespace+"/", func(obj interface{}) bool {
		rb, ok := obj.(*rbacv1.RoleBinding)
		if !ok {
			return true
		}
		src := bindingSource{kind: "RoleBinding", namespace: rb.Namespace, name: rb.Name, roleKind: rb.RoleRef.Kind, roleName: rb.RoleRef.Name}
		rules, err := r.roleRefRules(rb.RoleRef, rb.Namespace)
		return visitAll(src, rules, err, visit)
	})
}

func visitAll(src bindingSource, rules []rbacv1.PolicyRule, err error, visit visitor) bool {
	if err != nil {
		return visit(src, nil, err)
	}
	for i := range rules {
		if !visit(src, &rules[i], nil) {
			return false
		}
	}
	return true
}

// roleRefRules returns the rules of the role a binding refers to. The slice
// belongs to the informer cache and must not be modified.
func (r *RBAC) roleRefRules(ref rbacv1.RoleRef, namespace string) ([]rbacv1.PolicyRule, error) {
	if ref.APIGroup != rbacv1.GroupName {
		return nil, fmt.Errorf("authz: unsupported roleRef apiGroup %q", ref.APIGroup)
	}
	switch ref.Kind {
	case "ClusterRole":
		cr, err := r.clusterRoles.Get(ref.Name)
		if err != nil {
			return nil, fmt.Errorf("authz: clusterrole %q: %w", ref.Name, err)
		}
		return cr.Rules, nil
	case "Role":
		if namespace == "" {
			return nil, fmt.Errorf("authz: role %q referenced outside a namespace", ref.Name)
		}
		role, err := r.roles.Roles(namespace).Get(ref.Name)
		if err != nil {
			return nil, fmt.Errorf("authz: role %s/%s: %w", namespace, ref.Name, err)
		}
		return role.Rules, nil
	default:
		return nil, fmt.Errorf("authz: unsupported roleRef kind %q", ref.Kind)
	}
}

// Authorize allows a request granted by a rule of a role bound to the user
// (cluster-wide, or in the request's namespace); otherwise it has no
// opinion. It never denies.
func (r *RBAC) Authorize(ctx context.Context, a authorizer.Attributes) (authorizer.Decision, string, error) {
	if a == nil {
		return authorizer.DecisionNoOpinion, "", nil
	}
	var (
		allowedBy *bindingSource
		errs      []error
	)
	r.visitRules(a.GetUser(), a.GetNamespace(), func(src bindingSource, rule *rbacv1.PolicyRule, err error) bool {
		if err != nil {
			if !apierrors.IsNotFound(err) {
				errs = append(errs, err)
			}
			return true
		}
		if ruleAllows(a, rule) {
			s := src
			allowedBy = &s
			return false
		}
		return true
	})
	if allowedBy != nil {
		return authorizer.DecisionAllow, "RBAC: allowed by " + allowedBy.String(), nil
	}
	// As in Kubernetes, resolution errors (a binding to a role of unknown
	// kind, …) are reported in the reason, not as an error: an error would
	// turn the 403 into a 500.
	reason := ""
	if len(errs) > 0 {
		reason = fmt.Sprintf("RBAC: %v", errors.Join(errs...))
	}
	return authorizer.DecisionNoOpinion, reason, nil
}

// ConditionsAwareAuthorize is Authorize; RBAC has no conditions.
func (r *RBAC) ConditionsAwareAuthorize(ctx context.Context, a authorizer.Attributes) authorizer.ConditionsAwareDecision {
	return authorizer.ConditionsAwareDecisionFromParts(r.Authorize(ctx, a))
}

// EvaluateConditions fails closed: RBAC does not support conditions.
func (r *RBAC) EvaluateConditions(context.Context, authorizer.ConditionsAwareDecision, authorizer.ConditionsData) (authorizer.Decision, string, error) {
	return authorizer.DecisionDeny, "", authorizer.ErrorConditionEvaluationNotSupported
}

// RulesFor lists the rules that apply to u cluster-wide and in namespace
// (authorizer.RuleResolver, for SelfSubjectRulesReview). Incomplete is true
// when a referenced role could not be read; the error says which.
func (r *RBAC) RulesFor(ctx context.Context, u user.Info, namespace string) ([]authorizer.ResourceRuleInfo, []authorizer.NonResourceRuleInfo, bool, error) {
	rules, err := r.policyRulesFor(u, namespace)
	var res []authorizer.ResourceRuleInfo
	var nonRes []authorizer.NonResourceRuleInfo
	for i := range rules {
		rule := &rules[i]
		if len(rule.Resources) > 0 {
			res = append(res, &authorizer.DefaultResourceRuleInfo{
				Verbs:         append([]string(nil), rule.Verbs...),
				APIGroups:     append([]string(nil), rule.APIGroups...),
				Resources:     append([]string(nil), rule.Resources...),
				ResourceNames: append([]string(nil), rule.ResourceNames...),
			})
		}
		if len(rule.NonResourceURLs) > 0 {
			nonRes = append(nonRes, &authorizer.DefaultNonResourceRuleInfo{
				Verbs:           append([]string(nil), rule.Verbs...),
				NonResourceURLs: append([]string(nil), rule.NonResourceURLs...),
			})
		}
	}
	return res, nonRes, err != nil, err
}

// policyRulesFor returns deep copies of the rules bound to u cluster-wide
// and in namespace; err joins the bindings whose roles could not be read.
func (r *RBAC) policyRulesFor(u user.Info, namespace string) ([]rbacv1.PolicyRule, error) {
	var rules []rbacv1.PolicyRule
	var errs []error
	r.visitRules(u, namespace, func(_ bindingSource, rule *rbacv1.PolicyRule, err error) bool {
		if err != nil {
			errs = append(errs, err)
			return true
		}
		rules = append(rules, *rule.DeepCopy())
		return true
	})
	return rules, errors.Join(errs...)
}

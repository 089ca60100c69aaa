package check

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// rbacState is every role and binding, read once.
type rbacState struct {
	clusterRoles map[string]*rbacv1.ClusterRole
	roles        map[string]*rbacv1.Role // "ns/name"
	crbs         []rbacv1.ClusterRoleBinding
	rbs          []rbacv1.RoleBinding
}

// permission is one thing to find the holders of.
type permission struct {
	what     string
	verbs    []string // any of
	group    string
	resource string // "pods/exec"
}

// holder is a subject granted a permission by a binding.
type holder struct {
	Subject string // "Group system:masters"
	Binding string // "ClusterRoleBinding cluster-admin"
	Scope   string // "cluster-wide" or "namespace x"
	BuiltIn bool
}

func (h holder) String() string {
	return fmt.Sprintf("%s (%s, %s)", h.Subject, h.Binding, h.Scope)
}

func (c *Checker) loadRBAC(ctx context.Context) (*rbacState, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	r := c.client.RbacV1()
	crs, err := r.ClusterRoles().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	roles, err := r.Roles(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	crbs, err := r.ClusterRoleBindings().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	rbs, err := r.RoleBindings(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	s := &rbacState{clusterRoles: map[string]*rbacv1.ClusterRole{}, roles: map[string]*rbacv1.Role{}, crbs: crbs.Items, rbs: rbs.Items}
	for i := range crs.Items {
		s.clusterRoles[crs.Items[i].Name] = &crs.Items[i]
	}
	for i := range roles.Items {
		s.roles[roles.Items[i].Namespace+"/"+roles.Items[i].Name] = &roles.Items[i]
	}
	return s, nil
}

// ruleGrants reports whether rule allows any of p's verbs on p's resource.
func ruleGrants(rule rbacv1.PolicyRule, p permission) bool {
	if !slices.Contains(rule.APIGroups, "*") && !slices.Contains(rule.APIGroups, p.group) {
		return false
	}
	verbOK := slices.Contains(rule.Verbs, "*")
	for _, v := range p.verbs {
		verbOK = verbOK || slices.Contains(rule.Verbs, v)
	}
	if !verbOK {
		return false
	}
	res, sub, _ := strings.Cut(p.resource, "/")
	for _, r := range rule.Resources {
		switch {
		case r == "*", r == p.resource:
			return true
		case sub != "" && (r == res+"/*" || r == "*/"+sub):
			return true
		}
	}
	return false
}

func rulesGrant(rules []rbacv1.PolicyRule, p permission) bool {
	for _, r := range rules {
		if ruleGrants(r, p) {
			return true
		}
	}
	return false
}

// builtIn: bindings of the bootstrap policy (label
// kubernetes.io/bootstrapping=rbac-defaults, as Kubernetes and tether set
// it), the hub's own tether: bindings, and the system:masters group. A name
// alone (system:…) does not make a binding built-in.
func builtIn(meta metav1.ObjectMeta, s rbacv1.Subject) bool {
	return meta.Labels["kubernetes.io/bootstrapping"] == "rbac-defaults" || strings.HasPrefix(meta.Name, "tether:") ||
		(s.Kind == rbacv1.GroupKind && s.Name == "system:masters")
}

func subjectString(s rbacv1.Subject, ns string) string {
	if s.Kind == rbacv1.ServiceAccountKind {
		if s.Namespace != "" {
			ns = s.Namespace
		}
		return "ServiceAccount " + ns + "/" + s.Name
	}
	return s.Kind + " " + s.Name
}

// holders lists who is granted p, cluster-wide or in some namespace.
func (s *rbacState) holders(p permission) []holder {
	var out []holder
	for _, b := range s.crbs {
		cr := s.clusterRoles[b.RoleRef.Name]
		if b.RoleRef.Kind != "ClusterRole" || cr == nil || !rulesGrant(cr.Rules, p) {
			continue
		}
		for _, sub := range b.Subjects {
			out = append(out, holder{Subject: subjectString(sub, ""), Binding: "ClusterRoleBinding " + b.Name, Scope: "cluster-wide", BuiltIn: builtIn(b.ObjectMeta, sub)})
		}
	}
	for _, b := range s.rbs {
		var rules []rbacv1.PolicyRule
		switch b.RoleRef.Kind {
		case "ClusterRole":
			if cr := s.clusterRoles[b.RoleRef.Name]; cr != nil {
				rules = cr.Rules
			}
		case "Role":
			if r := s.roles[b.Namespace+"/"+b.RoleRef.Name]; r != nil {
				rules = r.Rules
			}
		}
		if !rulesGrant(rules, p) {
			continue
		}
		for _, sub := range b.Subjects {
			out = append(out, holder{Subject: subjectString(sub, b.Namespace), Binding: "RoleBinding " + b.Namespace + "/" + b.Name,
				Scope: "namespace " + b.Namespace, BuiltIn: builtIn(b.ObjectMeta, sub)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// rbacFinding reports the holders of perms; extra (non built-in) holders warn.
func rbacFinding(path, check string, s *rbacState, perms []permission) Finding {
	var builtin, extra []string
	for _, p := range perms {
		for _, h := range s.holders(p) {
			line := p.what + ": " + h.String()
			if h.BuiltIn {
				builtin = append(builtin, line)
			} else {
				extra = append(extra, line)
			}
		}
	}
	if len(extra) == 0 {
		return Finding{Path: path, Check: check, Target: "rbac", State: Pass,
			Evidence: "only built-in holders: " + join(builtin)}
	}
	return Finding{Path: path, Check: check, Target: "rbac", State: Warn, Risk: RiskMedium,
		Evidence: "granted beyond the built-in policy: " + strings.Join(extra, "; ") + "; built-in: " + join(builtin),
		Fix:      "review each binding (kubectl describe clusterrolebinding|rolebinding <name>) and remove or narrow what is not needed"}
}

var (
	permPodsExec   = permission{what: "pods/exec", verbs: []string{"create", "get"}, resource: "pods/exec"}
	permNodesProxy = permission{what: "nodes/proxy", verbs: []string{"get", "create", "update", "patch", "delete"}, resource: "nodes/proxy"}
	permPodsProxy  = permission{what: "pods/proxy", verbs: []string{"get", "create", "update", "patch", "delete"}, resource: "pods/proxy"}
	permSvcProxy   = permission{what: "services/proxy", verbs: []string{"get", "create", "update", "patch", "delete"}, resource: "services/proxy"}
	permApproveCSR = permission{what: "approve CSRs", verbs: []string{"update", "patch"}, group: "certificates.k8s.io", resource: "certificatesigningrequests/approval"}
	permSAToken    = permission{what: "serviceaccounts/token", verbs: []string{"create"}, resource: "serviceaccounts/token"}
)

// checkHubProxy: the seed's warning about https proxying, and who may proxy.
func (c *Checker) checkHubProxy(ctx context.Context, e *env) {
	c.add(Finding{Path: PathHubProxy, Check: "https: proxying does not verify endpoints", Target: "hub", State: Info,
		Evidence: "as the seed says: the API server's proxy to nodes, pods and services (…/proxy, https:name:port) uses HTTPS without verifying the endpoint's certificate, and no authentication; it is not safe on untrusted networks",
		Fix:      "do not send secrets through …/proxy over untrusted networks; use kubectl port-forward or Konnectivity egress"})
	s, err := c.rbac(ctx, e)
	if err != nil {
		c.unknown(PathHubProxy, "who can use */proxy", "rbac", err, "")
		return
	}
	c.add(rbacFinding(PathHubProxy, "who can use */proxy", s, []permission{permNodesProxy, permPodsProxy, permSvcProxy}))
}

// checkRBAC: who can exec into pods, reach kubelets, approve CSRs and mint
// tokens.
func (c *Checker) checkRBAC(ctx context.Context, e *env) {
	s, err := c.rbac(ctx, e)
	if err != nil {
		for _, p := range []permission{permPodsExec, permNodesProxy, permApproveCSR, permSAToken} {
			c.unknown(PathRBAC, "who can "+p.what, "rbac", err, "")
		}
		return
	}
	for _, p := range []permission{permPodsExec, permNodesProxy, permApproveCSR, permSAToken} {
		c.add(rbacFinding(PathRBAC, "who can "+p.what, s, []permission{p}))
	}
}

func (c *Checker) rbac(ctx context.Context, e *env) (*rbacState, error) {
	if e.rbac == nil && e.rbacErr == nil {
		e.rbac, e.rbacErr = c.loadRBAC(ctx)
	}
	return e.rbac, e.rbacErr
}

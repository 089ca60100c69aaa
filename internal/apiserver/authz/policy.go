package authz

import (
	"context"
	"errors"
	"fmt"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

const (
	// autoUpdateAnnotation marks bootstrap policy the reconciler may extend.
	autoUpdateAnnotation = "rbac.authorization.kubernetes.io/autoupdate"
	bootstrapLabel       = "kubernetes.io/bootstrapping"
	bootstrapLabelValue  = "rbac-defaults"
	aggregateToAdmin     = "rbac.authorization.k8s.io/aggregate-to-admin"
	aggregateToEdit      = "rbac.authorization.k8s.io/aggregate-to-edit"
	aggregateToView      = "rbac.authorization.k8s.io/aggregate-to-view"

	groupCore      = ""
	groupApps      = "apps"
	groupBatch     = "batch"
	groupAutoscale = "autoscaling"
	groupPolicy    = "policy"
	groupNetwork   = "networking.k8s.io"
	groupDiscovery = "discovery.k8s.io"
	groupCoord     = "coordination.k8s.io"
	groupCerts     = "certificates.k8s.io"
	groupAuthn     = "authentication.k8s.io"
	groupAuthz     = "authorization.k8s.io"
	groupStorage   = "storage.k8s.io"
	groupEvents    = "events.k8s.io"
	groupExt       = "extensions"

	nodeLeaseNamespace = "kube-node-lease"
)

func readVerbs() []string { return []string{"get", "list", "watch"} }
func writeVerbs() []string {
	return []string{"create", "delete", "deletecollection", "patch", "update"}
}

// rule builds a PolicyRule; fresh slices every call.
func rule(verbs []string, groups []string, resources ...string) rbacv1.PolicyRule {
	return rbacv1.PolicyRule{Verbs: append([]string(nil), verbs...), APIGroups: append([]string(nil), groups...), Resources: resources}
}

func vs(v ...string) []string { return v }

func named(r rbacv1.PolicyRule, names ...string) rbacv1.PolicyRule {
	r.ResourceNames = names
	return r
}

func urls(verbs []string, u ...string) rbacv1.PolicyRule {
	return rbacv1.PolicyRule{Verbs: append([]string(nil), verbs...), NonResourceURLs: u}
}

func viewRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		rule(readVerbs(), vs(groupCore), "pods", "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts",
			"services", "services/status", "endpoints", "persistentvolumeclaims", "persistentvolumeclaims/status", "configmaps"),
		rule(readVerbs(), vs(groupCore), "bindings", "events", "limitranges", "namespaces/status", "pods/log", "pods/status",
			"replicationcontrollers/status", "resourcequotas", "resourcequotas/status"),
		rule(readVerbs(), vs(groupCore), "namespaces"),
		rule(readVerbs(), vs(groupDiscovery), "endpointslices"),
		rule(readVerbs(), vs(groupApps), "controllerrevisions", "daemonsets", "daemonsets/status", "deployments", "deployments/scale",
			"deployments/status", "replicasets", "replicasets/scale", "replicasets/status", "statefulsets", "statefulsets/scale", "statefulsets/status"),
		rule(readVerbs(), vs(groupAutoscale), "horizontalpodautoscalers", "horizontalpodautoscalers/status"),
		rule(readVerbs(), vs(groupBatch), "cronjobs", "cronjobs/status", "jobs", "jobs/status"),
		rule(readVerbs(), vs(groupExt), "daemonsets", "daemonsets/status", "deployments", "deployments/scale", "deployments/status",
			"ingresses", "ingresses/status", "networkpolicies", "replicasets", "replicasets/scale", "replicasets/status", "replicationcontrollers/scale"),
		rule(readVerbs(), vs(groupPolicy), "poddisruptionbudgets", "poddisruptionbudgets/status"),
		rule(readVerbs(), vs(groupNetwork), "ingresses", "ingresses/status", "networkpolicies"),
		rule(readVerbs(), vs(groupEvents), "events"),
	}
}

func editRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		rule(readVerbs(), vs(groupCore), "pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"),
		rule(vs("impersonate"), vs(groupCore), "serviceaccounts"),
		rule(writeVerbs(), vs(groupCore), "pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"),
		rule(vs("create"), vs(groupCore), "pods/eviction"),
		rule(writeVerbs(), vs(groupCore), "configmaps", "events", "persistentvolumeclaims", "replicationcontrollers",
			"replicationcontrollers/scale", "secrets", "serviceaccounts", "services", "services/proxy"),
		rule(vs("create"), vs(groupCore), "serviceaccounts/token"),
		rule(writeVerbs(), vs(groupApps), "daemonsets", "deployments", "deployments/rollback", "deployments/scale", "replicasets",
			"replicasets/scale", "statefulsets", "statefulsets/scale"),
		rule(writeVerbs(), vs(groupAutoscale), "horizontalpodautoscalers"),
		rule(writeVerbs(), vs(groupBatch), "cronjobs", "jobs"),
		rule(writeVerbs(), vs(groupExt), "daemonsets", "deployments", "deployments/rollback", "deployments/scale", "ingresses",
			"networkpolicies", "replicasets", "replicasets/scale", "replicationcontrollers/scale"),
		rule(writeVerbs(), vs(groupPolicy), "poddisruptionbudgets"),
		rule(writeVerbs(), vs(groupNetwork), "ingresses", "networkpolicies"),
		rule(readVerbs(), vs(groupCoord), "leases"),
		rule(writeVerbs(), vs(groupCoord), "leases"),
		rule(writeVerbs(), vs(groupDiscovery), "endpointslices"),
	}
}

func adminRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		rule(vs("create"), vs(groupAuthz), "localsubjectaccessreviews"),
		rule(append(readVerbs(), writeVerbs()...), vs(rbacv1.GroupName), "rolebindings", "roles"),
	}
}

// nodeRules is what a node needs (ClusterRole system:node). Kubernetes binds
// no subjects to it: the Node authorizer grants these rules to system:nodes
// and narrows them (own Node, own Lease, pods bound to the node, tokens for
// their service accounts); NodeRestriction narrows writes further.
func nodeRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		rule(vs("create"), vs(groupAuthn), "tokenreviews"),
		rule(vs("create"), vs(groupAuthz), "subjectaccessreviews", "localsubjectaccessreviews"),
		rule(readVerbs(), vs(groupCore), "services", "endpoints"),
		rule(readVerbs(), vs(groupDiscovery), "endpointslices"),
		rule(vs("create", "get", "list", "watch", "patch", "update", "delete"), vs(groupCore), "nodes"),
		rule(vs("patch", "update"), vs(groupCore), "nodes/status"),
		rule(vs("create", "patch", "update"), vs(groupCore, groupEvents), "events"),
		rule(vs("get", "list", "watch", "create", "delete"), vs(groupCore), "pods"),
		rule(vs("patch", "update"), vs(groupCore), "pods/status"),
		rule(vs("create"), vs(groupCore), "pods/eviction"),
		rule(readVerbs(), vs(groupCore), "configmaps", "secrets", "persistentvolumeclaims"),
		rule(vs("get"), vs(groupCore), "persistentvolumes"),
		rule(vs("create"), vs(groupCore), "serviceaccounts/token"),
		rule(vs("create", "get", "list", "watch"), vs(groupCerts), "certificatesigningrequests"),
		rule(vs("get", "create", "update", "patch", "delete"), vs(groupCoord), "leases"),
		rule(vs("get", "create", "update", "patch", "delete"), vs(groupStorage), "csinodes"),
		rule(readVerbs(), vs(groupStorage), "csidrivers", "volumeattachments"),
	}
}

func controllerManagerRules() []rbacv1.PolicyRule {
	all := vs("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
	return []rbacv1.PolicyRule{
		// namespace controller: delete everything in a terminating namespace.
		rule(vs("get", "list", "watch", "delete", "deletecollection"), vs("*"), "*"),
		rule(all, vs(groupCore), "namespaces", "serviceaccounts", "secrets", "configmaps", "endpoints", "services", "pods", "nodes", "events"),
		rule(vs("update", "patch"), vs(groupCore), "namespaces/finalize", "namespaces/status", "nodes/status", "pods/status", "services/status"),
		rule(vs("create"), vs(groupCore), "pods/eviction", "serviceaccounts/token"),
		rule(all, vs(groupDiscovery), "endpointslices"),
		rule(all, vs(groupCoord), "leases"),
		rule(vs("create", "update", "patch"), vs(groupEvents), "events"),
		rule(vs("get", "list", "watch", "delete"), vs(groupCerts), "certificatesigningrequests"),
		rule(vs("update"), vs(groupCerts), "certificatesigningrequests/approval", "certificatesigningrequests/status"),
		named(rule(vs("approve", "sign"), vs(groupCerts), "signers"),
			"kubernetes.io/*", "kubernetes.io/kube-apiserver-client-kubelet", "kubernetes.io/kubelet-serving",
			"kubernetes.io/kube-apiserver-client", "kubernetes.io/legacy-unknown"),
		rule(vs("create"), vs(groupAuthn), "tokenreviews"),
		rule(vs("create"), vs(groupAuthz), "subjectaccessreviews"),
		rule(readVerbs(), vs(rbacv1.GroupName), "roles", "rolebindings", "clusterroles", "clusterrolebindings"),
	}
}

func schedulerRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		rule(vs("get", "list", "watch", "delete"), vs(groupCore), "pods"),
		rule(vs("create"), vs(groupCore), "pods/binding", "bindings"),
		rule(vs("patch", "update"), vs(groupCore), "pods/status"),
		rule(readVerbs(), vs(groupCore), "nodes", "namespaces", "services", "persistentvolumeclaims", "persistentvolumes", "replicationcontrollers"),
		rule(readVerbs(), vs(groupApps), "replicasets", "statefulsets"),
		rule(readVerbs(), vs(groupPolicy), "poddisruptionbudgets"),
		rule(readVerbs(), vs(groupStorage), "storageclasses", "csinodes", "csidrivers", "csistoragecapacities"),
		rule(vs("create", "patch", "update"), vs(groupCore, groupEvents), "events"),
		rule(vs("create"), vs(groupCoord), "leases"),
		named(rule(vs("get", "update"), vs(groupCoord), "leases"), "kube-scheduler"),
		rule(vs("create"), vs(groupAuthn), "tokenreviews"),
		rule(vs("create"), vs(groupAuthz), "subjectaccessreviews"),
	}
}

func concat(parts ...[]rbacv1.PolicyRule) []rbacv1.PolicyRule {
	var out []rbacv1.PolicyRule
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func clusterRole(name string, labels map[string]string, rules ...rbacv1.PolicyRule) rbacv1.ClusterRole {
	l := map[string]string{bootstrapLabel: bootstrapLabelValue}
	for k, v := range labels {
		l[k] = v
	}
	return rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l, Annotations: map[string]string{autoUpdateAnnotation: "true"}},
		Rules:      rules,
	}
}

func aggregated(name, label string, rules []rbacv1.PolicyRule, extraLabels map[string]string) rbacv1.ClusterRole {
	cr := clusterRole(name, extraLabels, rules...)
	cr.AggregationRule = &rbacv1.AggregationRule{ClusterRoleSelectors: []metav1.LabelSelector{{MatchLabels: map[string]string{label: "true"}}}}
	return cr
}

// BootstrapClusterRoles returns the default ClusterRoles, like
// kube-apiserver's bootstrap policy. admin, edit and view carry an
// aggregationRule and, until an aggregation controller runs, the union of
// the system:aggregate-to-* roles as their rules.
func BootstrapClusterRoles() []rbacv1.ClusterRole {
	discovery := vs("/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/")
	return []rbacv1.ClusterRole{
		clusterRole("cluster-admin", nil,
			rule(vs("*"), vs("*"), "*"),
			urls(vs("*"), "*")),
		aggregated("admin", aggregateToAdmin, concat(adminRules(), editRules(), viewRules()), nil),
		aggregated("edit", aggregateToEdit, concat(editRules(), viewRules()), map[string]string{aggregateToAdmin: "true"}),
		aggregated("view", aggregateToView, viewRules(), map[string]string{aggregateToAdmin: "true", aggregateToEdit: "true"}),
		clusterRole("system:aggregate-to-admin", map[string]string{aggregateToAdmin: "true"}, adminRules()...),
		clusterRole("system:aggregate-to-edit", map[string]string{aggregateToAdmin: "true", aggregateToEdit: "true"}, editRules()...),
		clusterRole("system:aggregate-to-view", map[string]string{aggregateToAdmin: "true", aggregateToEdit: "true", aggregateToView: "true"}, viewRules()...),
		clusterRole("system:discovery", nil, urls(vs("get"), discovery...)),
		clusterRole("system:basic-user", nil,
			rule(vs("create"), vs(groupAuthz), "selfsubjectaccessreviews", "selfsubjectrulesreviews"),
			rule(vs("create"), vs(groupAuthn), "selfsubjectreviews")),
		clusterRole("system:public-info-viewer", nil, urls(vs("get"), "/healthz", "/livez", "/readyz", "/version", "/version/")),
		clusterRole("system:node-bootstrapper", nil, rule(vs("create", "get", "list", "watch"), vs(groupCerts), "certificatesigningrequests")),
		clusterRole("system:certificates.k8s.io:certificatesigningrequests:nodeclient", nil,
			rule(vs("create"), vs(groupCerts), "certificatesigningrequests/nodeclient")),
		clusterRole("system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", nil,
			rule(vs("create"), vs(groupCerts), "certificatesigningrequests/selfnodeclient")),
		clusterRole("system:node", nil, nodeRules()...),
		clusterRole("system:kube-controller-manager", nil, controllerManagerRules()...),
		clusterRole("system:kube-scheduler", nil, schedulerRules()...),
		clusterRole("system:kubelet-api-admin", nil,
			rule(vs("*"), vs(groupCore), "nodes/proxy", "nodes/log", "nodes/stats", "nodes/metrics", "nodes/spec", "nodes/checkpoint", "nodes/pods", "nodes/healthz", "nodes/configz"),
			rule(vs("get", "list", "watch", "proxy"), vs(groupCore), "nodes")),
		clusterRole("system:service-account-issuer-discovery", nil, urls(vs("get"), "/.well-known/openid-configuration", "/openid/v1/jwks")),
		clusterRole("system:konnectivity-server", nil, rule(vs("create"), vs(groupAuthn), "tokenreviews")),
	}
}

func subject(kind, name string) rbacv1.Subject {
	return rbacv1.Subject{Kind: kind, APIGroup: rbacv1.GroupName, Name: name}
}

func clusterRoleBinding(role string, subjects ...rbacv1.Subject) rbacv1.ClusterRoleBinding {
	return rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role, Labels: map[string]string{bootstrapLabel: bootstrapLabelValue},
			Annotations: map[string]string{autoUpdateAnnotation: "true"}},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects: subjects,
	}
}

// BootstrapClusterRoleBindings returns the default ClusterRoleBindings.
// system:node has no subjects, as in Kubernetes: the Node authorizer grants
// its rules to nodes.
func BootstrapClusterRoleBindings() []rbacv1.ClusterRoleBinding {
	return []rbacv1.ClusterRoleBinding{
		clusterRoleBinding("cluster-admin", subject(rbacv1.GroupKind, "system:masters")),
		clusterRoleBinding("system:discovery", subject(rbacv1.GroupKind, "system:authenticated")),
		clusterRoleBinding("system:basic-user", subject(rbacv1.GroupKind, "system:authenticated")),
		clusterRoleBinding("system:public-info-viewer", subject(rbacv1.GroupKind, "system:authenticated"), subject(rbacv1.GroupKind, "system:unauthenticated")),
		clusterRoleBinding("system:node-bootstrapper", subject(rbacv1.GroupKind, "system:bootstrappers")),
		clusterRoleBinding("system:certificates.k8s.io:certificatesigningrequests:nodeclient", subject(rbacv1.GroupKind, "system:bootstrappers")),
		clusterRoleBinding("system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", subject(rbacv1.GroupKind, "system:nodes")),
		clusterRoleBinding("system:node"),
		clusterRoleBinding("system:kube-controller-manager", subject(rbacv1.UserKind, "system:kube-controller-manager")),
		clusterRoleBinding("system:kube-scheduler", subject(rbacv1.UserKind, "system:kube-scheduler")),
		clusterRoleBinding("system:kubelet-api-admin", subject(rbacv1.UserKind, "tether-apiserver-kubelet-client")),
		clusterRoleBinding("system:service-account-issuer-discovery", subject(rbacv1.GroupKind, "system:serviceaccounts")),
		clusterRoleBinding("system:konnectivity-server", subject(rbacv1.UserKind, "system:konnectivity-server")),
	}
}

// ReconcilePolicy creates missing bootstrap ClusterRoles and
// ClusterRoleBindings and, on existing ones annotated autoupdate "true",
// adds missing rules, subjects, labels, annotations and aggregation
// selectors. It never removes anything a user added or deletes objects.
func ReconcilePolicy(ctx context.Context, c kubernetes.Interface) error {
	if c == nil {
		return errors.New("authz: reconcile policy: nil client")
	}
	var errs []error
	for _, want := range BootstrapClusterRoles() {
		if err := reconcileClusterRole(ctx, c, want); err != nil {
			errs = append(errs, err)
		}
	}
	for _, want := range BootstrapClusterRoleBindings() {
		if err := reconcileClusterRoleBinding(ctx, c, want); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func reconcileClusterRole(ctx context.Context, c kubernetes.Interface, want rbacv1.ClusterRole) error {
	api := c.RbacV1().ClusterRoles()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		have, err := api.Get(ctx, want.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = api.Create(ctx, &want, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(rbacv1.Resource("clusterroles"), want.Name, err)
			}
			return err
		}
		if err != nil {
			return err
		}
		if have.Annotations[autoUpdateAnnotation] != "true" {
			return nil
		}
		upd := have.DeepCopy()
		changed := mergeMeta(&upd.ObjectMeta, &want.ObjectMeta)
		if _, missing := covers(upd.Rules, want.Rules); len(missing) > 0 {
			upd.Rules = append(upd.Rules, missing...)
			changed = true
		}
		if want.AggregationRule != nil {
			if upd.AggregationRule == nil {
				upd.AggregationRule = &rbacv1.AggregationRule{}
			}
			for _, sel := range want.AggregationRule.ClusterRoleSelectors {
				if !hasSelector(upd.AggregationRule.ClusterRoleSelectors, sel) {
					upd.AggregationRule.ClusterRoleSelectors = append(upd.AggregationRule.ClusterRoleSelectors, sel)
					changed = true
				}
			}
		}
		if !changed {
			return nil
		}
		_, err = api.Update(ctx, upd, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("authz: reconcile clusterrole %q: %w", want.Name, err)
	}
	return nil
}

func reconcileClusterRoleBinding(ctx context.Context, c kubernetes.Interface, want rbacv1.ClusterRoleBinding) error {
	api := c.RbacV1().ClusterRoleBindings()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		have, err := api.Get(ctx, want.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = api.Create(ctx, &want, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(rbacv1.Resource("clusterrolebindings"), want.Name, err)
			}
			return err
		}
		if err != nil {
			return err
		}
		if have.Annotations[autoUpdateAnnotation] != "true" || have.RoleRef != want.RoleRef {
			// roleRef is immutable; a binding to another role is a user's choice.
			return nil
		}
		upd := have.DeepCopy()
		changed := mergeMeta(&upd.ObjectMeta, &want.ObjectMeta)
		for _, s := range want.Subjects {
			if !hasSubject(upd.Subjects, s) {
				upd.Subjects = append(upd.Subjects, s)
				changed = true
			}
		}
		if !changed {
			return nil
		}
		_, err = api.Update(ctx, upd, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("authz: reconcile clusterrolebinding %q: %w", want.Name, err)
	}
	return nil
}

// mergeMeta adds missing labels and annotations; existing values win.
func mergeMeta(have, want *metav1.ObjectMeta) bool {
	changed := false
	for k, v := range want.Labels {
		if _, ok := have.Labels[k]; !ok {
			if have.Labels == nil {
				have.Labels = map[string]string{}
			}
			have.Labels[k] = v
			changed = true
		}
	}
	for k, v := range want.Annotations {
		if _, ok := have.Annotations[k]; !ok {
			if have.Annotations == nil {
				have.Annotations = map[string]string{}
			}
			have.Annotations[k] = v
			changed = true
		}
	}
	return changed
}

func hasSelector(list []metav1.LabelSelector, sel metav1.LabelSelector) bool {
	for i := range list {
		if list[i].String() == sel.String() {
			return true
		}
	}
	return false
}

func hasSubject(list []rbacv1.Subject, s rbacv1.Subject) bool {
	for _, x := range list {
		if x.Kind == s.Kind && x.Name == s.Name && x.Namespace == s.Namespace {
			return true
		}
	}
	return false
}

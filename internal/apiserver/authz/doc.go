// Package authz holds tether's authorization: an RBAC authorizer fed by
// informers (Roles, ClusterRoles and their bindings, indexed by subject), the
// Node authorizer (a graph index from pods to the objects they reference, so
// a node may read only what its own pods need), the admission checks that
// Kubernetes performs inside RBAC storage and the NodeRestriction plugin
// (privilege-escalation prevention on role and binding writes; nodes may
// modify only themselves, their leases and their pods), and the bootstrap
// policy (default ClusterRoles and ClusterRoleBindings) with its reconciler.
//
// The semantics follow Kubernetes' RBAC and Node authorizers; the code is
// tether's own.
package authz

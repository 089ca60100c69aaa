package check

import (
	"context"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-dev/tether/internal/hub"
	"github.com/tether-dev/tether/internal/sshtunnel"
)

// checkEgress: which mode the hub uses to reach nodes, pods and services,
// and per mode whether every node is reachable the secure way.
func (c *Checker) checkEgress(ctx context.Context, e *env) {
	const name = "egress mode"
	switch {
	case e.discoveryErr != nil:
		c.unknown(PathEgress, name, "hub", e.discoveryErr, "")
		return
	case e.discovery == nil:
		c.add(Finding{Path: PathEgress, Check: name, State: Unknown, Risk: RiskLow,
			Evidence: "could not verify: the hub publishes no kube-system/" + hub.DiscoveryConfigMap + " (not tether?)",
			Fix:      "kube-apiserver: read its --egress-selector-config-file"})
		return
	}
	switch mode := e.discovery[hub.DiscoveryEgress]; mode {
	case "konnectivity":
		c.add(Finding{Path: PathEgress, Check: name, State: Pass,
			Evidence: "konnectivity: nodes dial out to the hub's Konnectivity server; the hub reaches nodes, pods and services through those connections"})
		c.konnectivityAgents(ctx, e)
	case "ssh":
		c.add(Finding{Path: PathEgress, Check: name, State: Info,
			Evidence: "ssh: the hub tunnels to nodes over SSH (deprecated in Kubernetes; tether verifies host keys)",
			Fix:      "prefer --egress=konnectivity"})
		c.sshHostKeys(ctx, e)
	case "direct":
		c.add(Finding{Path: PathEgress, Check: name, State: Info,
			Evidence: "direct: the hub dials node, pod and service addresses itself; the seed: safe only when that network is trusted (or kubelet TLS is verified, as checked under hub-to-kubelet)",
			Fix:      "on untrusted or public networks use --egress=konnectivity"})
		c.directExposure(ctx, e)
	default:
		c.add(Finding{Path: PathEgress, Check: name, State: Unknown, Evidence: fmt.Sprintf("could not verify: unknown egress mode %q", mode)})
	}
}

// directExposure: with direct egress the hub must reach every Ready node's
// kubelet itself. A node it cannot dial sits on a network the hub has no
// route to (an isolated or untrusted node network): hub → node paths (logs,
// exec, port-forward, proxy) are down, and opening a direct route to
// kubelets across such a network is what the seed warns against.
func (c *Checker) directExposure(ctx context.Context, e *env) {
	const name = "hub reaches nodes directly"
	if e.nodesErr != nil {
		c.unknown(PathEgress, name, "nodes", e.nodesErr, "")
		return
	}
	for i := range e.nodes {
		n := &e.nodes[i]
		if !nodeReady(n) {
			continue
		}
		err := c.nodeProxy(ctx, e, n.Name)
		switch {
		case err == nil || tlsRefusal(err):
			c.add(Finding{Path: PathEgress, Check: name, Target: n.Name, Node: n.Name, State: Pass,
				Evidence: "the hub dialled the kubelet directly: " + errText(err)})
		case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
			c.unknown(PathEgress, name, n.Name, err, "")
		default:
			c.add(Finding{Path: PathEgress, Check: name, Target: n.Name, Node: n.Name, State: Fail, Risk: RiskHigh,
				Evidence: "Ready node, but the hub cannot dial it directly (its network is isolated from the hub): " + explain(err),
				Fix:      "use --egress=konnectivity (nodes dial out to the hub) instead of routing the hub into the node network"})
		}
	}
}

// konnectivityAgents: every Ready node has a connected agent, proven by the
// hub reaching its kubelet through the Konnectivity server.
func (c *Checker) konnectivityAgents(ctx context.Context, e *env) {
	const name = "Konnectivity agent connected"
	rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	cm, err := c.client.CoreV1().ConfigMaps(metav1.NamespacePublic).Get(rctx, hub.KonnectivityConfigMap, metav1.GetOptions{})
	server := ""
	switch {
	case err == nil:
		server = cm.Data["server"]
	case !apierrors.IsNotFound(err):
		c.unknown(PathEgress, "Konnectivity server published", "kube-public/"+hub.KonnectivityConfigMap, err, "")
	}
	if e.nodesErr != nil {
		c.unknown(PathEgress, name, "nodes", e.nodesErr, "")
		return
	}
	for i := range e.nodes {
		n := &e.nodes[i]
		if !nodeReady(n) {
			continue
		}
		err := c.nodeProxy(ctx, e, n.Name)
		switch {
		case err == nil || tlsRefusal(err):
			c.add(Finding{Path: PathEgress, Check: name, Target: n.Name, Node: n.Name, State: Pass,
				Evidence: "the hub reached the kubelet through Konnectivity (server " + server + "): " + errText(err)})
		default:
			c.add(Finding{Path: PathEgress, Check: name, Target: n.Name, Node: n.Name, State: Warn, Risk: RiskMedium,
				Evidence: "Ready node but the hub could not reach it through Konnectivity: " + explain(err),
				Fix:      "check the node's Konnectivity agent (tether agent --konnectivity=auto reads kube-public/" + hub.KonnectivityConfigMap + "; server " + server + ")"})
		}
	}
}

// tlsRefusal: the tunnel worked and the kubelet's TLS was refused (reported
// under hub-to-kubelet, not here).
func tlsRefusal(err error) bool {
	s := err.Error()
	return strings.Contains(s, "x509") || strings.Contains(s, "certificate")
}

// sshHostKeys: host-key checking on, and a pinned key for every node.
func (c *Checker) sshHostKeys(ctx context.Context, e *env) {
	const name = "SSH host key pinned"
	if e.discovery[hub.DiscoverySSHHostKeyCheck] == "false" {
		c.add(Finding{Path: PathEgress, Check: "SSH host keys verified", State: Fail, Risk: RiskHigh,
			Evidence: "kube-system/" + hub.DiscoveryConfigMap + " sshHostKeyCheck=false: the hub accepts any node host key (what Kubernetes' SSH tunnels did)",
			Fix:      "restart the hub without --insecure-ssh-skip-host-key-check"})
	} else {
		c.add(Finding{Path: PathEgress, Check: "SSH host keys verified", State: Pass,
			Evidence: "kube-system/" + hub.DiscoveryConfigMap + " sshHostKeyCheck=" + e.discovery[hub.DiscoverySSHHostKeyCheck]})
	}
	if e.nodesErr != nil {
		c.unknown(PathEgress, name, "nodes", e.nodesErr, "")
		return
	}
	knownHosts := e.discovery[hub.DiscoverySSHKnownHostsFile] == "true"
	for i := range e.nodes {
		n := &e.nodes[i]
		key := n.Annotations[sshtunnel.HostKeyAnnotation]
		switch {
		case key != "":
			ev := "Node annotation " + sshtunnel.HostKeyAnnotation + ": " + shortKey(key)
			if err := c.nodeProxy(ctx, e, n.Name); err != nil && !tlsRefusal(err) {
				c.add(Finding{Path: PathEgress, Check: name, Target: n.Name, Node: n.Name, State: Warn, Risk: RiskMedium,
					Evidence: ev + "; but the hub could not reach the node through its tunnel: " + explain(err),
					Fix:      "compare the node's host key with the annotation; kubectl annotate --overwrite node " + n.Name + " " + sshtunnel.HostKeyAnnotation + "=<key>"})
				continue
			}
			c.add(Finding{Path: PathEgress, Check: name, Target: n.Name, Node: n.Name, State: Pass, Evidence: ev + "; tunnel works"})
		case knownHosts:
			c.add(Finding{Path: PathEgress, Check: name, Target: n.Name, Node: n.Name, State: Pass,
				Evidence: "no annotation; the hub pins host keys from its --ssh-known-hosts file (not visible through the API)"})
		default:
			c.add(Finding{Path: PathEgress, Check: name, Target: n.Name, Node: n.Name, State: Warn, Risk: RiskMedium,
				Evidence: "no pinned host key (no " + sshtunnel.HostKeyAnnotation + " annotation, no known_hosts file): the hub refuses to tunnel to this node",
				Fix:      "run the node with --ssh-endpoint (it publishes its key) or give the hub --ssh-known-hosts"})
		}
	}
}

func shortKey(k string) string {
	f := strings.Fields(k)
	if len(f) >= 2 && len(f[1]) > 16 {
		return f[0] + " …" + f[1][len(f[1])-16:]
	}
	return k
}

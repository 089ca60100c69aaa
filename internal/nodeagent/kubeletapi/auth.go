package kubeletapi

import (
	"net/http"
	"strings"

	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
)

// Kubelet API paths with their own node subresources.
const (
	statsPath       = "/stats/"
	metricsPath     = "/metrics"
	logsPath        = "/logs/"
	checkpointPath  = "/checkpoint/"
	podsPath        = "/pods"
	runningPodsPath = "/runningpods/"
	healthzPath     = "/healthz"
	configzPath     = "/configz"
)

// Attributes maps a kubelet API request to the authorization checks kubelet
// makes, in order (the first allowed one wins): fine-grained subresources
// (pods, healthz, configz) first, then stats, metrics, log, checkpoint, or
// proxy for everything else (containerLogs, exec, attach, portForward, run).
func Attributes(u user.Info, r *http.Request, node string) []authorizer.Attributes {
	verb := ""
	switch r.Method {
	case http.MethodPost:
		verb = "create"
	case http.MethodGet:
		verb = "get"
	case http.MethodPut:
		verb = "update"
	case http.MethodPatch:
		verb = "patch"
	case http.MethodDelete:
		verb = "delete"
	}
	p := r.URL.Path
	var subs []string
	switch {
	case isSubpath(p, podsPath):
		subs = append(subs, "pods")
	case isSubpath(p, healthzPath):
		subs = append(subs, "healthz")
	case isSubpath(p, configzPath):
		subs = append(subs, "configz")
	case isSubpath(p, runningPodsPath):
		subs = append(subs, "pods")
	}
	switch {
	case isSubpath(p, statsPath):
		subs = append(subs, "stats")
	case isSubpath(p, metricsPath):
		subs = append(subs, "metrics")
	case isSubpath(p, logsPath):
		subs = append(subs, "log")
	case isSubpath(p, checkpointPath):
		subs = append(subs, "checkpoint")
	default:
		subs = append(subs, "proxy")
	}
	out := make([]authorizer.Attributes, 0, len(subs))
	for _, sub := range subs {
		out = append(out, authorizer.AttributesRecord{
			User: u, Verb: verb, APIVersion: "v1", Resource: "nodes", Subresource: sub,
			Name: node, ResourceRequest: true, Path: p,
		})
	}
	return out
}

// isSubpath reports whether subpath is path or below it.
func isSubpath(subpath, path string) bool {
	path = strings.TrimSuffix(path, "/")
	return subpath == path || (strings.HasPrefix(subpath, path) && len(subpath) > len(path) && subpath[len(path)] == '/')
}

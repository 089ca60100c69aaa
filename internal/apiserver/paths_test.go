package apiserver

import (
	"strings"
	"testing"

	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
)

func TestBadResourcePath(t *testing.T) {
	for _, c := range []struct {
		escaped         string
		info            genericapirequest.RequestInfo
		wantBad         bool
		wantMsgContains string
	}{
		{"/api/v1/namespaces/default/configmaps/x", genericapirequest.RequestInfo{Namespace: "default", Name: "x"}, false, ""},
		{"/api/v1/namespaces/default/configmaps/a%2Fb", genericapirequest.RequestInfo{Namespace: "default", Name: "a/b"}, true, "%2F"},
		{"/api/v1/namespaces/default%2fconfigmaps", genericapirequest.RequestInfo{Namespace: "default"}, true, "%2F"},
		{"/api/v1/namespaces/../configmaps", genericapirequest.RequestInfo{Namespace: ".."}, true, "namespace"},
		{"/api/v1/namespaces/./configmaps/x", genericapirequest.RequestInfo{Namespace: ".", Name: "x"}, true, "namespace"},
		{"/api/v1/namespaces/d/configmaps/..", genericapirequest.RequestInfo{Namespace: "d", Name: ".."}, true, "name"},
		{"/api/v1/namespaces/d/pods/p:80/proxy/a%2Fb", genericapirequest.RequestInfo{Namespace: "d", Name: "p:80", Subresource: "proxy"}, false, ""},
		{"/api/v1/namespaces/d%2Fx/pods/p/proxy/a", genericapirequest.RequestInfo{Namespace: "d", Name: "p", Subresource: "proxy"}, true, "%2F"},
	} {
		msg := badResourcePath(c.escaped, &c.info)
		if (msg != "") != c.wantBad || !strings.Contains(msg, c.wantMsgContains) {
			t.Errorf("badResourcePath(%q) = %q, want bad=%v containing %q", c.escaped, msg, c.wantBad, c.wantMsgContains)
		}
	}
}

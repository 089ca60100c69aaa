package apiserver

import (
	"fmt"
	"net/http"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/validation/path"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/endpoints/handlers/responsewriters"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
)

// withPathChecks answers 400 Bad Request, with a Status body, for resource
// paths no client means: an encoded slash ("%2F") inside a path segment
// (the router would otherwise split it into two segments), and a namespace
// or name that is not a valid path segment ("." and "..", which otherwise
// reach storage and come back as 500). Proxy subresources keep their tail.
func withPathChecks(handler http.Handler, s runtime.NegotiatedSerializer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		info, ok := genericapirequest.RequestInfoFrom(req.Context())
		if !ok || !info.IsResourceRequest {
			handler.ServeHTTP(w, req)
			return
		}
		if msg := badResourcePath(req.URL.EscapedPath(), info); msg != "" {
			responsewriters.ErrorNegotiated(apierrors.NewBadRequest(msg), s, schema.GroupVersion{}, w, req)
			return
		}
		handler.ServeHTTP(w, req)
	})
}

func badResourcePath(escaped string, info *genericapirequest.RequestInfo) string {
	checked := escaped
	if info.Subresource == "proxy" {
		if i := strings.Index(checked, "/proxy/"); i >= 0 {
			checked = checked[:i]
		}
	}
	if strings.Contains(strings.ToLower(checked), "%2f") {
		return fmt.Sprintf("invalid request path %q: a path segment may not contain an encoded slash (%%2F)", escaped)
	}
	for _, f := range []struct{ what, v string }{{"namespace", info.Namespace}, {"name", info.Name}} {
		if f.v == "" {
			continue
		}
		if msgs := path.IsValidPathSegmentName(f.v); len(msgs) > 0 {
			return fmt.Sprintf("invalid %s %q in request path: %s", f.what, f.v, strings.Join(msgs, ", "))
		}
	}
	return ""
}

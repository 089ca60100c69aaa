package apiserver

import (
	"net/url"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// FuzzDecodeQuery decodes arbitrary query strings into every subresource
// option type the hub reads from query parameters: bad values are errors,
// never panics.
func FuzzDecodeQuery(f *testing.F) {
	for _, s := range []string{
		"container=c&follow=true&tailLines=10&limitBytes=5&sinceSeconds=3&timestamps=1&previous=false",
		"sinceTime=2024-01-01T00:00:00Z", "sinceTime=yesterday", "tailLines=-1", "tailLines=99999999999999999999",
		"command=sh&command=-c&command=echo+a,b&stdin=1&stdout=true&stderr=0&tty=TRUE",
		"ports=80,8080&ports=443", "ports=,", "ports=70000", "ports=-1", "ports=0x50",
		"path=/healthz", "path=%2F..%2F", "follow", "follow=&follow=", "=&&=", "%zz", ";",
		"limitBytes=&tailLines=", "insecureSkipTLSVerifyBackend=maybe", "stream=All",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil && len(q) == 0 {
			return
		}
		for _, into := range []any{
			&corev1.PodLogOptions{}, &corev1.PodExecOptions{}, &corev1.PodAttachOptions{},
			&corev1.PodPortForwardOptions{}, &corev1.PodProxyOptions{}, &corev1.NodeProxyOptions{},
			&corev1.ServiceProxyOptions{},
		} {
			_ = DecodeQuery(q, into)
		}
		// Not a pointer to a struct: an error, not a panic.
		var n int
		for _, into := range []any{nil, n, &n, corev1.PodLogOptions{}} {
			if DecodeQuery(q, into) == nil {
				t.Fatalf("DecodeQuery into %T: no error", into)
			}
		}
	})
}

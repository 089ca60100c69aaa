// Package version says which Kubernetes API level tether serves and which
// tether release this is; /version and `tether version` report both.
package version

import (
	"fmt"
	"runtime"

	apimachineryversion "k8s.io/apimachinery/pkg/version"
)

const (
	// Tether is this release of tether.
	Tether = "0.1.0"
	// KubernetesMajor and KubernetesMinor are the API level tether reports in
	// /version; kubectl 1.27–1.33 stay within their supported skew.
	KubernetesMajor = "1"
	KubernetesMinor = "33"
	// Libraries is the version of the k8s.io libraries tether is built on.
	Libraries = "1.37.2"
)

// Info returns what /version serves.
func Info() *apimachineryversion.Info {
	return &apimachineryversion.Info{
		Major:        KubernetesMajor,
		Minor:        KubernetesMinor,
		GitVersion:   fmt.Sprintf("v%s.%s.0+tether.%s", KubernetesMajor, KubernetesMinor, Tether),
		GitCommit:    "tether-" + Tether,
		GitTreeState: "clean",
		BuildDate:    "1970-01-01T00:00:00Z",
		GoVersion:    runtime.Version(),
		Compiler:     runtime.Compiler,
		Platform:     runtime.GOOS + "/" + runtime.GOARCH,
	}
}

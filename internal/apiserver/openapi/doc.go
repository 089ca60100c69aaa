// Package openapi holds the OpenAPI definitions of every type the hub serves,
// generated from k8s.io/api and k8s.io/apimachinery by openapi-gen. The hub
// needs them for /openapi/v2 and /openapi/v3 (kubectl explain and client-side
// validation) and for server-side apply, whose type converter is built from
// these schemas. Regenerate with `go generate ./internal/apiserver/openapi`.
package openapi

//go:generate go tool openapi-gen --output-dir . --output-pkg github.com/tether-dev/tether/internal/apiserver/openapi --output-file zz_generated.openapi.go --go-header-file /dev/null --report-filename /dev/null --readonly-pkg k8s.io/api/core/v1 --readonly-pkg k8s.io/api/coordination/v1 --readonly-pkg k8s.io/api/discovery/v1 --readonly-pkg k8s.io/api/certificates/v1 --readonly-pkg k8s.io/api/rbac/v1 --readonly-pkg k8s.io/api/authentication/v1 --readonly-pkg k8s.io/api/authorization/v1 --readonly-pkg k8s.io/api/policy/v1 --readonly-pkg k8s.io/apimachinery/pkg/apis/meta/v1 --readonly-pkg k8s.io/apimachinery/pkg/runtime --readonly-pkg k8s.io/apimachinery/pkg/version --readonly-pkg k8s.io/apimachinery/pkg/util/intstr --readonly-pkg k8s.io/apimachinery/pkg/api/resource k8s.io/api/core/v1 k8s.io/api/coordination/v1 k8s.io/api/discovery/v1 k8s.io/api/certificates/v1 k8s.io/api/rbac/v1 k8s.io/api/authentication/v1 k8s.io/api/authorization/v1 k8s.io/api/policy/v1 k8s.io/apimachinery/pkg/apis/meta/v1 k8s.io/apimachinery/pkg/runtime k8s.io/apimachinery/pkg/version k8s.io/apimachinery/pkg/util/intstr k8s.io/apimachinery/pkg/api/resource

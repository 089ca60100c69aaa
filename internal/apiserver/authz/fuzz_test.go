package authz

import (
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apiserver/pkg/authorization/authorizer"
)

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// FuzzRuleMatch: random rules and requests never panic; a rule with "*"
// covers any request of its form; a rule allows every request its breakdown
// allows and covers itself.
func FuzzRuleMatch(f *testing.F) {
	f.Add("get,list", ",apps", "pods,*/scale,pods/*", "n1", "/api*,/healthz", "get", "apps", "deployments", "scale", "d", "/apis/x", true)
	f.Add("*", "*", "*", "", "*", "delete", "", "pods", "", "", "/", false)
	f.Add("", "", "", "", "", "", "", "", "", "", "", true)
	f.Add("get", "", "*/", "", "*", "get", "", "", "", "", "", true)
	f.Add("get", "", "/*", "", "/x/*", "get", "", "", "", "", "/x/", false)
	f.Fuzz(func(t *testing.T, verbs, groups, resources, names, urlList, verb, group, resource, sub, name, path string, resourceRequest bool) {
		r := rbacv1.PolicyRule{Verbs: split(verbs), APIGroups: split(groups), Resources: split(resources),
			ResourceNames: split(names), NonResourceURLs: split(urlList)}
		a := authorizer.AttributesRecord{User: usr("u"), Verb: verb, APIGroup: group, Resource: resource, Subresource: sub,
			Name: name, Path: path, ResourceRequest: resourceRequest}
		got := ruleAllows(a, &r)

		star := rbacv1.PolicyRule{Verbs: []string{"*"}, APIGroups: []string{"*"}, Resources: []string{"*"}, NonResourceURLs: []string{"*"}}
		if !ruleAllows(a, &star) {
			t.Fatalf("* rule does not allow %+v", a)
		}
		if ok, missing := covers([]rbacv1.PolicyRule{star}, []rbacv1.PolicyRule{r}); !ok {
			t.Fatalf("* rule does not cover %+v: %v", r, missing)
		}
		if ok, missing := covers([]rbacv1.PolicyRule{r}, []rbacv1.PolicyRule{r}); !ok {
			t.Fatalf("rule does not cover itself %+v: %v", r, missing)
		}
		// The breakdown allows exactly what the rule allows.
		any := false
		for _, s := range breakdown(&r) {
			if ruleAllows(a, &s) {
				any = true
				break
			}
		}
		if any != got {
			t.Fatalf("rule allows %v but its breakdown allows %v for %+v / %+v", got, any, r, a)
		}
		// Soundness of covers: a covered rule never allows more.
		owner := rbacv1.PolicyRule{Verbs: split(verb), APIGroups: split(group), Resources: split(resource)}
		if ok, _ := covers([]rbacv1.PolicyRule{owner}, []rbacv1.PolicyRule{r}); ok && got && !ruleAllows(a, &owner) {
			t.Fatalf("covered rule %+v allows %+v that owner %+v does not", r, a, owner)
		}
	})
}

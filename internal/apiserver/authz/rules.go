package authz

import (
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apiserver/pkg/authorization/authorizer"
)

// ruleAllows reports whether one PolicyRule grants the request described by
// the attributes. Resource requests are matched against verbs, apiGroups,
// resources (with "*", "*/sub" and "res/*" forms) and resourceNames;
// non-resource requests against verbs and nonResourceURLs (exact, "*", or a
// prefix ending in "*").
func ruleAllows(a authorizer.Attributes, r *rbacv1.PolicyRule) bool {
	if a.IsResourceRequest() {
		combined := a.GetResource()
		if sub := a.GetSubresource(); sub != "" {
			combined = combined + "/" + sub
		}
		return verbMatches(r.Verbs, a.GetVerb()) &&
			groupMatches(r.APIGroups, a.GetAPIGroup()) &&
			resourceMatches(r.Resources, a.GetResource(), a.GetSubresource(), combined) &&
			nameMatches(r.ResourceNames, a.GetName())
	}
	return verbMatches(r.Verbs, a.GetVerb()) && urlMatches(r.NonResourceURLs, a.GetPath())
}

func verbMatches(verbs []string, verb string) bool {
	for _, v := range verbs {
		if v == rbacv1.VerbAll || v == verb {
			return true
		}
	}
	return false
}

func groupMatches(groups []string, group string) bool {
	for _, g := range groups {
		if g == rbacv1.APIGroupAll || g == group {
			return true
		}
	}
	return false
}

// resourceMatches: "*" matches everything; "pods" matches only the pods
// resource itself; "pods/log" the log subresource; "*/scale" the scale
// subresource of any resource; "pods/*" any subresource of pods (a tether
// extension; it does not match "pods" itself).
func resourceMatches(rules []string, resource, sub, combined string) bool {
	for _, rr := range rules {
		switch {
		case rr == rbacv1.ResourceAll, rr == combined:
			return true
		case sub == "":
			continue
		case len(rr) == len(sub)+2 && strings.HasPrefix(rr, "*/") && strings.HasSuffix(rr, sub):
			return true
		case len(rr) == len(resource)+2 && strings.HasSuffix(rr, "/*") && strings.HasPrefix(rr, resource):
			return true
		}
	}
	return false
}

// nameMatches: no resourceNames means any name; otherwise the request must
// name one of them (so list/create without a name never match).
func nameMatches(names []string, name string) bool {
	if len(names) == 0 {
		return true
	}
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}

func urlMatches(urls []string, path string) bool {
	for _, u := range urls {
		switch {
		case u == rbacv1.NonResourceAll, u == path:
			return true
		case strings.HasSuffix(u, "*") && strings.HasPrefix(path, u[:len(u)-1]):
			return true
		}
	}
	return false
}

// covers reports whether the owner rules grant everything the servant rules
// grant; the uncovered servant rules (broken down to one verb, group,
// resource and name each) are returned. It is the check that keeps a user
// from granting permissions they do not hold.
func covers(owner, servant []rbacv1.PolicyRule) (bool, []rbacv1.PolicyRule) {
	var missing []rbacv1.PolicyRule
	for i := range servant {
		for _, simple := range breakdown(&servant[i]) {
			ok := false
			for j := range owner {
				if ruleCovers(&owner[j], &simple) {
					ok = true
					break
				}
			}
			if !ok {
				missing = append(missing, simple)
			}
		}
	}
	return len(missing) == 0, missing
}

// breakdown splits a rule into rules of one verb, group, resource and
// resourceName (or one verb and one URL).
func breakdown(r *rbacv1.PolicyRule) []rbacv1.PolicyRule {
	var out []rbacv1.PolicyRule
	for _, g := range r.APIGroups {
		for _, res := range r.Resources {
			for _, v := range r.Verbs {
				if len(r.ResourceNames) == 0 {
					out = append(out, rbacv1.PolicyRule{Verbs: []string{v}, APIGroups: []string{g}, Resources: []string{res}})
					continue
				}
				for _, n := range r.ResourceNames {
					out = append(out, rbacv1.PolicyRule{Verbs: []string{v}, APIGroups: []string{g}, Resources: []string{res}, ResourceNames: []string{n}})
				}
			}
		}
	}
	for _, u := range r.NonResourceURLs {
		for _, v := range r.Verbs {
			out = append(out, rbacv1.PolicyRule{Verbs: []string{v}, NonResourceURLs: []string{u}})
		}
	}
	return out
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ruleCovers reports whether owner grants everything the simple rule s
// (one verb/group/resource/name, or one verb/URL) grants.
func ruleCovers(owner, s *rbacv1.PolicyRule) bool {
	if !has(owner.Verbs, rbacv1.VerbAll) && !hasAll(owner.Verbs, s.Verbs) {
		return false
	}
	if len(s.NonResourceURLs) > 0 {
		for _, u := range s.NonResourceURLs {
			if !urlCovers(owner.NonResourceURLs, u) {
				return false
			}
		}
	}
	if len(s.Resources) == 0 && len(s.APIGroups) == 0 {
		return len(s.NonResourceURLs) > 0 || len(s.Verbs) == 0
	}
	if !has(owner.APIGroups, rbacv1.APIGroupAll) && !hasAll(owner.APIGroups, s.APIGroups) {
		return false
	}
	for _, res := range s.Resources {
		if !resourceCovers(owner.Resources, res) {
			return false
		}
	}
	if len(owner.ResourceNames) == 0 {
		return true
	}
	return len(s.ResourceNames) > 0 && hasAll(owner.ResourceNames, s.ResourceNames)
}

func hasAll(set, want []string) bool {
	for _, w := range want {
		if !has(set, w) {
			return false
		}
	}
	return true
}

func resourceCovers(owner []string, res string) bool {
	if has(owner, rbacv1.ResourceAll) || has(owner, res) {
		return true
	}
	resource, sub, ok := strings.Cut(res, "/")
	if !ok {
		return false
	}
	if sub != "*" && has(owner, "*/"+sub) {
		return true
	}
	// "pods/*" covers any subresource of pods.
	return resource != "*" && has(owner, resource+"/*")
}

func urlCovers(owner []string, url string) bool {
	for _, o := range owner {
		if o == rbacv1.NonResourceAll || o == url {
			return true
		}
		if strings.HasSuffix(o, "*") && strings.HasPrefix(url, o[:len(o)-1]) {
			return true
		}
	}
	return false
}

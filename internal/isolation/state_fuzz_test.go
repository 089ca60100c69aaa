package isolation

import (
	"strings"
	"testing"
)

// FuzzParseState: any state file either parses into names this package
// could have created, or is an error; never a panic.
func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"pid":1,"prefix":"tt1a","netns":["tether-tt1a-rtr","tether-tt1a-hub"],"unreachableRoutes":["100.72.0.0/16"]}`))
	f.Add([]byte(`{"pid":1,"prefix":"tt1a","netns":["default"]}`))
	f.Add([]byte(`{"prefix":"../x","netns":["tether-../x-hub"]}`))
	f.Add([]byte(`{"prefix":"tt","unreachableRoutes":["0.0.0.0/0"]}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseState(b)
		if err != nil {
			return
		}
		for _, ns := range s.NetNS {
			if !strings.HasPrefix(ns, "tether-"+s.Prefix+"-") || strings.Contains(ns, "/") {
				t.Fatalf("accepted namespace %q with prefix %q", ns, s.Prefix)
			}
		}
	})
}

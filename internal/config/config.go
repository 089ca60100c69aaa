// Package config applies tether's one precedence rule to a command's flags:
// an explicit flag wins over an environment variable TETHER_<FLAG>, which wins
// over a key in an optional YAML config file, which wins over the default.
//
// The YAML file is a flat map whose keys are flag names, e.g.
//
//	secure-port: 6443
//	data-dir: /var/lib/tether
//	anonymous-auth: false
//
// Unknown keys are an error so that typos in a config file never pass silently.
package config

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// EnvName returns the environment variable that sets the flag with the given
// name: "secure-port" → "TETHER_SECURE_PORT".
func EnvName(flag string) string {
	return "TETHER_" + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(flag))
}

// Apply fills every flag of fs that was not set on the command line, first from
// the environment (lookupEnv, normally os.LookupEnv) and then from the YAML file
// at path (empty path: no file).
func Apply(fs *pflag.FlagSet, path string, lookupEnv func(string) (string, bool)) error {
	file := map[string]any{}
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("config file: %w", err)
		}
		if err := yaml.Unmarshal(raw, &file); err != nil {
			return fmt.Errorf("config file %s: %w", path, err)
		}
		var unknown []string
		for k := range file {
			if fs.Lookup(k) == nil {
				unknown = append(unknown, k)
			}
		}
		if len(unknown) > 0 {
			sort.Strings(unknown)
			return fmt.Errorf("config file %s: unknown keys %s", path, strings.Join(unknown, ", "))
		}
	}
	var firstErr error
	fs.VisitAll(func(f *pflag.Flag) {
		if firstErr != nil || f.Changed {
			return
		}
		if v, ok := lookupEnv(EnvName(f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				firstErr = fmt.Errorf("env %s: %w", EnvName(f.Name), err)
			}
			return
		}
		v, ok := file[f.Name]
		if !ok {
			return
		}
		if err := setFromYAML(fs, f, v); err != nil {
			firstErr = fmt.Errorf("config file %s: key %s: %w", path, f.Name, err)
		}
	})
	return firstErr
}

func setFromYAML(fs *pflag.FlagSet, f *pflag.Flag, v any) error {
	if list, ok := v.([]any); ok {
		parts := make([]string, 0, len(list))
		for _, item := range list {
			parts = append(parts, fmt.Sprint(item))
		}
		return fs.Set(f.Name, strings.Join(parts, ","))
	}
	if fl, ok := v.(float64); ok && fl == float64(int64(fl)) {
		return fs.Set(f.Name, fmt.Sprint(int64(fl)))
	}
	return fs.Set(f.Name, fmt.Sprint(v))
}

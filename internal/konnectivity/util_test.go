package konnectivity_test

import (
	"os"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }

// metricValue sums a counter or gauge family of an agent's or server's registry.
func metricValue(t testing.TB, a interface{ Gatherer() prometheus.Gatherer }, name string) float64 {
	t.Helper()
	mfs, err := a.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += valueOf(m)
		}
	}
	return sum
}

func valueOf(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return 0
}

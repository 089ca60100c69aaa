package agent

import "github.com/prometheus/client_golang/prometheus"

// metrics uses upstream's names (konnectivity_network_proxy_agent_*). All are
// registered in New, so they are exported from start-up with value 0.
type metrics struct {
	dialDuration      prometheus.Histogram
	serverConnFailure *prometheus.CounterVec
	endpointDialFail  *prometheus.CounterVec
	openServerConns   prometheus.Gauge
	knownServerCount  prometheus.Gauge
	openEndpointConns prometheus.Gauge
	streamPackets     *prometheus.CounterVec
	streamErrors      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	o := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: "konnectivity_network_proxy", Subsystem: "agent", Name: name, Help: help}
	}
	m := &metrics{
		dialDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "konnectivity_network_proxy", Subsystem: "agent", Name: "dial_duration_seconds",
			Help:    "Latency of dial to the remote endpoint in seconds",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}),
		serverConnFailure: prometheus.NewCounterVec(prometheus.CounterOpts(o("server_connection_failure_count", "Count of failures to send to or receive from the proxy server, labeled by the failure type")), []string{"failure_type"}),
		endpointDialFail:  prometheus.NewCounterVec(prometheus.CounterOpts(o("endpoint_dial_failure_total", "Number of failures dialing the remote endpoint, by reason (example: timeout).")), []string{"reason"}),
		openServerConns:   prometheus.NewGauge(prometheus.GaugeOpts(o("open_server_connections", "Current number of open server connections."))),
		knownServerCount:  prometheus.NewGauge(prometheus.GaugeOpts(o("known_server_count", "Current number of servers agent is trying to connect to."))),
		openEndpointConns: prometheus.NewGauge(prometheus.GaugeOpts(o("open_endpoint_connections", "Current number of open endpoint connections."))),
		streamPackets:     prometheus.NewCounterVec(prometheus.CounterOpts(o("stream_packets_total", "Count of packets processed, by segment and packet type.")), []string{"segment", "packet_type"}),
		streamErrors:      prometheus.NewCounterVec(prometheus.CounterOpts(o("stream_errors_total", "Count of gRPC stream errors, by segment, grpc Code, packet type.")), []string{"segment", "code", "packet_type"}),
	}
	for _, c := range []prometheus.Collector{m.dialDuration, m.serverConnFailure, m.endpointDialFail, m.openServerConns,
		m.knownServerCount, m.openEndpointConns, m.streamPackets, m.streamErrors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

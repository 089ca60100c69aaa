package server

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics uses upstream's metric names (konnectivity_network_proxy_server_*)
// so that dashboards and alerts written for upstream keep working.
type metrics struct {
	dialDuration      prometheus.Histogram
	frontendWrite     prometheus.Histogram
	grpcConnections   *prometheus.GaugeVec
	httpConnections   prometheus.Gauge
	readyBackendConns prometheus.Gauge
	readyBackends     prometheus.Gauge
	pendingDials      prometheus.Gauge
	established       prometheus.Gauge
	dialFailures      *prometheus.CounterVec
	streamPackets     *prometheus.CounterVec
	streamErrors      *prometheus.CounterVec
}

const (
	mNamespace = "konnectivity_network_proxy"
	mSubsystem = "server"
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: mNamespace, Subsystem: mSubsystem, Name: name, Help: help}
	}
	hist := func(name, help string) prometheus.Histogram {
		o := opts(name, help)
		return prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: o.Namespace, Subsystem: o.Subsystem, Name: o.Name, Help: o.Help,
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		})
	}
	m := &metrics{
		dialDuration:      hist("dial_duration_seconds", "Latency of dial to the remote endpoint in seconds"),
		frontendWrite:     hist("frontend_write_duration_seconds", "Latency of write to the frontend in seconds"),
		grpcConnections:   prometheus.NewGaugeVec(prometheus.GaugeOpts(opts("grpc_connections", "Number of current grpc connections, partitioned by service method.")), []string{"service_method"}),
		httpConnections:   prometheus.NewGauge(prometheus.GaugeOpts(opts("http_connections", "Number of current HTTP CONNECT connections"))),
		readyBackendConns: prometheus.NewGauge(prometheus.GaugeOpts(opts("ready_backend_connections", "Number of konnectivity agent connected to the proxy server"))),
		readyBackends:     prometheus.NewGauge(prometheus.GaugeOpts(opts("ready_backends", "Number of distinct konnectivity agents connected to the proxy server"))),
		pendingDials:      prometheus.NewGauge(prometheus.GaugeOpts(opts("pending_backend_dials", "Current number of pending backend dial requests"))),
		established:       prometheus.NewGauge(prometheus.GaugeOpts(opts("established_connections", "Current number of established end-to-end connections"))),
		dialFailures:      prometheus.NewCounterVec(prometheus.CounterOpts(opts("dial_failure_count", "Number of dial failures observed, by reason.")), []string{"reason"}),
		streamPackets:     prometheus.NewCounterVec(prometheus.CounterOpts(opts("stream_packets_total", "Count of packets processed, by segment and packet type.")), []string{"segment", "packet_type"}),
		streamErrors:      prometheus.NewCounterVec(prometheus.CounterOpts(opts("stream_errors_total", "Count of gRPC stream errors, by segment, grpc Code, packet type.")), []string{"segment", "code", "packet_type"}),
	}
	for _, c := range []prometheus.Collector{m.dialDuration, m.frontendWrite, m.grpcConnections, m.httpConnections,
		m.readyBackendConns, m.readyBackends, m.pendingDials, m.established, m.dialFailures, m.streamPackets, m.streamErrors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Dial failure reasons (upstream label values where upstream has them).
const (
	reasonNoBackend   = "no_backend"
	reasonTimeout     = "timeout"
	reasonEndpoint    = "error_from_backend"
	reasonBackendGone = "backend_close"
	reasonFrontend    = "frontend_close"
	reasonLimit       = "limit"
	reasonBadRequest  = "bad_request"
)

const (
	segFromAgent  = "from_agent"
	segToAgent    = "to_agent"
	segFromClient = "from_client"
	segToClient   = "to_client"
)

// Package storage runs the hub's etcd. By default tether embeds a
// single-member etcd (go.etcd.io/etcd/server/v3/embed) that listens on
// loopback only; operators who want high availability point the hub at an
// external etcd cluster instead and never start this package.
package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// Config configures an embedded etcd member.
type Config struct {
	// DataDir holds the member's WAL and snapshots. Required. Created 0700.
	DataDir string
	// Name is the member name; zero value "tether".
	Name string
	// ClientURL is where the member serves the etcd API; zero value
	// "http://127.0.0.1:0" (a free loopback port, read back with Endpoints).
	ClientURL string
	// PeerURL is the member's peer URL; zero value "http://127.0.0.1:0".
	PeerURL string
	// StartTimeout bounds how long Run waits for the member to become ready;
	// zero value 60s.
	StartTimeout time.Duration
	// InitialCluster lists every member of a new cluster
	// ("name=peerURL,…"); zero value: this member alone. ClusterToken
	// (zero "tether") keeps separate clusters apart.
	InitialCluster, ClusterToken string
	// CertFile, KeyFile and TrustedCAFile, when set, serve both the client
	// and the peer URLs over TLS and require client certificates signed by
	// TrustedCAFile on both (use https:// URLs).
	CertFile, KeyFile, TrustedCAFile string
	// LogFile receives etcd's own log (errors only); zero value stderr.
	LogFile string
	// Logger receives start/stop messages; zero value slog.Default().
	Logger *slog.Logger
}

// Embedded is one embedded etcd member.
type Embedded struct {
	cfg       Config
	ready     chan struct{}
	endpoints []string
}

// New validates cfg and returns a member ready to Run.
func New(cfg Config) (*Embedded, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("storage: DataDir is required")
	}
	if cfg.Name == "" {
		cfg.Name = "tether"
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = "http://127.0.0.1:0"
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = "http://127.0.0.1:0"
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	for _, u := range []string{cfg.ClientURL, cfg.PeerURL} {
		pu, err := url.Parse(u)
		if err != nil {
			return nil, fmt.Errorf("storage: %w", err)
		}
		if (pu.Scheme == "https") != (cfg.CertFile != "") {
			return nil, fmt.Errorf("storage: %s: https URLs go with CertFile/KeyFile/TrustedCAFile, http URLs without", u)
		}
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") || (cfg.CertFile == "") != (cfg.TrustedCAFile == "") {
		return nil, errors.New("storage: CertFile, KeyFile and TrustedCAFile go together")
	}
	return &Embedded{cfg: cfg, ready: make(chan struct{})}, nil
}

// Ready is closed once the member serves requests; Endpoints is valid then.
func (e *Embedded) Ready() <-chan struct{} { return e.ready }

// Endpoints returns the client URLs of the running member.
func (e *Embedded) Endpoints() []string { return e.endpoints }

// Run starts the member, waits until it is ready, and serves until ctx ends,
// then stops the member and returns. A member that fails while running makes
// Run return the error.
func (e *Embedded) Run(ctx context.Context) error {
	if err := os.MkdirAll(e.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	ec := embed.NewConfig()
	ec.Name = e.cfg.Name
	ec.Dir = filepath.Clean(e.cfg.DataDir)
	cu, _ := url.Parse(e.cfg.ClientURL)
	pu, _ := url.Parse(e.cfg.PeerURL)
	ec.ListenClientUrls = []url.URL{*cu}
	ec.AdvertiseClientUrls = []url.URL{*cu}
	ec.ListenPeerUrls = []url.URL{*pu}
	ec.AdvertisePeerUrls = []url.URL{*pu}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	if e.cfg.InitialCluster != "" {
		ec.InitialCluster = e.cfg.InitialCluster
	}
	ec.InitialClusterToken = "tether"
	if e.cfg.ClusterToken != "" {
		ec.InitialClusterToken = e.cfg.ClusterToken
	}
	if e.cfg.CertFile != "" {
		tls := transport.TLSInfo{CertFile: e.cfg.CertFile, KeyFile: e.cfg.KeyFile, TrustedCAFile: e.cfg.TrustedCAFile, ClientCertAuth: true}
		ec.ClientTLSInfo, ec.PeerTLSInfo = tls, tls
	}
	ec.LogLevel = "error"
	ec.LogOutputs = []string{"stderr"}
	if e.cfg.LogFile != "" {
		ec.LogOutputs = []string{e.cfg.LogFile}
	}
	// The hub compacts through its storage layer, as kube-apiserver does.
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = "0"

	etcd, err := embed.StartEtcd(ec)
	if err != nil {
		return fmt.Errorf("storage: start embedded etcd: %w", err)
	}
	defer etcd.Close()
	timer := time.NewTimer(e.cfg.StartTimeout)
	defer timer.Stop()
	select {
	case <-etcd.Server.ReadyNotify():
	case <-timer.C:
		return fmt.Errorf("storage: embedded etcd not ready after %s", e.cfg.StartTimeout)
	case <-ctx.Done():
		return nil
	case err := <-etcd.Err():
		return fmt.Errorf("storage: embedded etcd: %w", err)
	}
	for _, l := range etcd.Clients {
		e.endpoints = append(e.endpoints, cu.Scheme+"://"+l.Addr().String())
	}
	e.cfg.Logger.Info("embedded etcd ready", "endpoints", e.endpoints, "dir", ec.Dir)
	close(e.ready)
	select {
	case <-ctx.Done():
		return nil
	case err := <-etcd.Err():
		return fmt.Errorf("storage: embedded etcd: %w", err)
	}
}

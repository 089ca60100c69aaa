package storage

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tether-dev/tether/internal/pki"
)

// ClusterConfig describes a local multi-member etcd cluster with mutual TLS
// on its client and peer URLs, every member on its own address.
type ClusterConfig struct {
	// Dir holds pki/ (the etcd CA, member and client certificates) and one
	// data dir per member. Required.
	Dir string
	// IPs are the members' addresses, one member each. Required.
	IPs []net.IP
	// ClientPort and PeerPort; zero values 2379 and 2380.
	ClientPort, PeerPort int
	Logger               *slog.Logger
}

// Cluster is the plan of a TLS etcd cluster: the certificates exist; each
// member is started on its own — in this process with New(c.Member(i)) and
// Run, or as a `tether etcd` child process with StartProcess/RunProcess (as
// `tether up --etcd-members` and the HA tests do, so a member can be
// SIGKILLed) — and can be stopped and restarted one by one.
type Cluster struct {
	cfg ClusterConfig
	// CAFile, CertFile and KeyFile are the client credentials for the hubs
	// (--etcd-cafile, --etcd-certfile, --etcd-keyfile).
	CAFile, CertFile, KeyFile string
}

// NewCluster creates (or, on a later run, reuses) the etcd CA under
// Dir/pki and issues member and client certificates.
func NewCluster(cfg ClusterConfig) (*Cluster, error) {
	if cfg.Dir == "" || len(cfg.IPs) == 0 {
		return nil, errors.New("storage: cluster needs a dir and member addresses")
	}
	if cfg.ClientPort == 0 {
		cfg.ClientPort = 2379
	}
	if cfg.PeerPort == 0 {
		cfg.PeerPort = 2380
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	dir := filepath.Join(cfg.Dir, "pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	ca, err := loadOrCreateCA(dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, CAFile: filepath.Join(dir, "ca.crt"), CertFile: filepath.Join(dir, "client.crt"), KeyFile: filepath.Join(dir, "client.key")}
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	for i, ip := range cfg.IPs {
		spec := pki.CertSpec{CommonName: c.name(i), IPs: []net.IP{ip}, DNSNames: []string{"localhost"}, Usages: both}
		if err := issue(ca, spec, filepath.Join(dir, c.name(i))); err != nil {
			return nil, err
		}
	}
	if err := issue(ca, pki.CertSpec{CommonName: "tether-apiserver-etcd-client", Usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, filepath.Join(dir, "client")); err != nil {
		return nil, err
	}
	if err := c.saveLayout(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Cluster) name(i int) string { return "etcd-" + strconv.Itoa(i+1) }

func (c *Cluster) url(i, port int) string {
	return "https://" + net.JoinHostPort(c.cfg.IPs[i].String(), strconv.Itoa(port))
}

// ClientURLs are the members' client URLs (--etcd-servers).
func (c *Cluster) ClientURLs() []string {
	var out []string
	for i := range c.cfg.IPs {
		out = append(out, c.url(i, c.cfg.ClientPort))
	}
	return out
}

// Member returns the configuration of member i (0-based).
func (c *Cluster) Member(i int) Config {
	var initial []string
	for j := range c.cfg.IPs {
		initial = append(initial, c.name(j)+"="+c.url(j, c.cfg.PeerPort))
	}
	base := filepath.Join(c.cfg.Dir, "pki", c.name(i))
	return Config{
		DataDir: filepath.Join(c.cfg.Dir, c.name(i)), Name: c.name(i),
		ClientURL: c.url(i, c.cfg.ClientPort), PeerURL: c.url(i, c.cfg.PeerPort),
		InitialCluster: strings.Join(initial, ","), ClusterToken: "tether-" + filepath.Base(c.cfg.Dir),
		CertFile: base + ".crt", KeyFile: base + ".key", TrustedCAFile: filepath.Join(c.cfg.Dir, "pki", "ca.crt"),
		LogFile: filepath.Join(c.cfg.Dir, c.name(i)+".log"), Logger: c.cfg.Logger.With("etcd", c.name(i)),
	}
}

func loadOrCreateCA(dir string) (*pki.CA, error) {
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	certPEM, err1 := os.ReadFile(certFile)
	keyPEM, err2 := os.ReadFile(keyFile)
	if err1 == nil && err2 == nil {
		ca, err := pki.LoadCA(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("storage: etcd CA in %s: %w", dir, err)
		}
		return ca, nil
	}
	if !errors.Is(err1, os.ErrNotExist) && err1 != nil {
		return nil, fmt.Errorf("storage: %w", err1)
	}
	ca, err := pki.NewCA("tether-etcd-ca", 10*365*24*time.Hour)
	if err != nil {
		return nil, err
	}
	keyPEM, err = pki.EncodeKey(ca.Key)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	if err := os.WriteFile(certFile, ca.CertPEM, 0o644); err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	return ca, nil
}

func issue(ca *pki.CA, spec pki.CertSpec, base string) error {
	certPEM, keyPEM, err := ca.Issue(spec)
	if err != nil {
		return err
	}
	if err := os.WriteFile(base+".key", keyPEM, 0o600); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	return os.WriteFile(base+".crt", certPEM, 0o644)
}

// ParseURLs checks etcd client URLs given on the command line.
func ParseURLs(servers []string) error {
	for _, s := range servers {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("etcd server %q: want http(s)://host:port", s)
		}
	}
	return nil
}

// Package egress is the one place every hub → cluster connection is dialled
// from (kubelet, node/pod/service proxy, future webhooks). The mode is chosen
// by configuration: direct TCP, SSH tunnels (deprecated) or Konnectivity
// (gRPC or HTTP CONNECT, over a Unix socket or mutual-TLS TCP). It reads the
// upstream EgressSelectorConfiguration file format (apiserver.k8s.io/v1beta1)
// and the --egress=direct|ssh|konnectivity shorthand. A failed dial says
// which egress path failed and why.
//
// Upstream has no SSH proxy protocol in that file format; tether accepts
// proxyProtocol "SSH" (no transport) for the `cluster` egress as an
// extension, so a file can select the SSH tunnels too.
package egress

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	apiserverapi "k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/server/egressselector"

	"github.com/tether-dev/tether/internal/konnectivity/client"
)

// Modes of the `cluster` egress.
const (
	ModeDirect       = "direct"
	ModeSSH          = "ssh"
	ModeKonnectivity = "konnectivity"
)

// ProtocolSSH is tether's extension to the EgressSelectorConfiguration
// proxyProtocol values: dial through the hub's SSH tunnels.
const ProtocolSSH apiserverapi.ProtocolType = "SSH"

// Dialer dials addresses in the cluster network.
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// DialerFunc adapts a function to Dialer.
type DialerFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// DialContext implements Dialer.
func (f DialerFunc) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return f(ctx, network, addr)
}

// Config selects the egress for the `cluster` network.
type Config struct {
	// Mode is direct (zero value), ssh or konnectivity. A SelectorConfigFile
	// overrides it for the egress names it lists.
	Mode string
	// SelectorConfigFile is an upstream EgressSelectorConfiguration file.
	SelectorConfigFile string
	// Konnectivity is used when Mode is konnectivity without a config file.
	Konnectivity client.Config
	// SSH dials through SSH tunnels when Mode is ssh (provided by the hub).
	SSH Dialer
	// DialTimeout bounds direct dials; zero value 10s.
	DialTimeout time.Duration
}

// Selector holds the dialer per egress name (cluster, controlplane, etcd).
type Selector struct {
	dialers map[string]Dialer
	modes   map[string]string
	closers []func() error
}

// New builds the dialers described by cfg.
func New(cfg Config) (*Selector, error) {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	s := &Selector{dialers: map[string]Dialer{}, modes: map[string]string{}}
	direct := &net.Dialer{Timeout: cfg.DialTimeout}
	for _, name := range []string{"cluster", "controlplane", "etcd"} {
		s.dialers[name], s.modes[name] = direct, ModeDirect
	}
	switch cfg.Mode {
	case "", ModeDirect:
	case ModeSSH:
		if cfg.SSH == nil {
			return nil, errors.New("egress: ssh mode needs the SSH tunneler")
		}
		s.dialers["cluster"], s.modes["cluster"] = cfg.SSH, ModeSSH
	case ModeKonnectivity:
		if cfg.SelectorConfigFile == "" {
			d, err := client.New(cfg.Konnectivity)
			if err != nil {
				return nil, fmt.Errorf("egress: konnectivity: %w", err)
			}
			s.closers = append(s.closers, d.Close)
			s.dialers["cluster"], s.modes["cluster"] = d, ModeKonnectivity
		}
	default:
		return nil, fmt.Errorf("egress: unknown mode %q (direct, ssh, konnectivity)", cfg.Mode)
	}
	if cfg.SelectorConfigFile != "" {
		if err := s.load(cfg.SelectorConfigFile, cfg.SSH); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// readFile reads an EgressSelectorConfiguration file.
func readFile(path string) (*apiserverapi.EgressSelectorConfiguration, error) {
	conf, err := egressselector.ReadEgressSelectorConfiguration(path)
	if err != nil {
		return nil, fmt.Errorf("egress: %s: %w", path, err)
	}
	if conf == nil {
		return nil, fmt.Errorf("egress: %s: empty configuration", path)
	}
	return conf, nil
}

// NeedsSSH reports whether cfg selects the SSH tunnels for some egress
// (--egress=ssh, or proxyProtocol SSH in the selector file), so the caller
// knows to build the tunneler before New.
func NeedsSSH(cfg Config) (bool, error) {
	if cfg.Mode == ModeSSH {
		return true, nil
	}
	if cfg.SelectorConfigFile == "" {
		return false, nil
	}
	conf, err := readFile(cfg.SelectorConfigFile)
	if err != nil {
		return false, err
	}
	for _, sel := range conf.EgressSelections {
		if sel.Connection.ProxyProtocol == ProtocolSSH {
			return true, nil
		}
	}
	return false, nil
}

// load applies an EgressSelectorConfiguration file.
func (s *Selector) load(path string, sshDialer Dialer) error {
	conf, err := readFile(path)
	if err != nil {
		return err
	}
	for _, sel := range conf.EgressSelections {
		name := sel.Name
		if name == "master" {
			name = "controlplane"
		}
		if _, ok := s.dialers[name]; !ok {
			return fmt.Errorf("egress: %s: unknown egress name %q (cluster, controlplane, etcd)", path, sel.Name)
		}
		c := sel.Connection
		switch c.ProxyProtocol {
		case apiserverapi.ProtocolDirect:
			s.dialers[name], s.modes[name] = &net.Dialer{Timeout: 10 * time.Second}, ModeDirect
			continue
		case ProtocolSSH:
			if name != "cluster" {
				return fmt.Errorf("egress: %s: proxyProtocol SSH is only for the cluster egress, not %q", path, sel.Name)
			}
			if c.Transport != nil {
				return fmt.Errorf("egress: %s: proxyProtocol SSH takes no transport (configure it with the --ssh-* flags)", path)
			}
			if sshDialer == nil {
				return fmt.Errorf("egress: %s: proxyProtocol SSH needs the SSH tunneler", path)
			}
			s.dialers[name], s.modes[name] = sshDialer, ModeSSH
			continue
		case apiserverapi.ProtocolHTTPConnect, apiserverapi.ProtocolGRPC:
		default:
			return fmt.Errorf("egress: %s: unsupported proxyProtocol %q (Direct, HTTPConnect, GRPC, SSH)", name, c.ProxyProtocol)
		}
		kc := client.Config{Mode: client.ModeGRPC}
		if c.ProxyProtocol == apiserverapi.ProtocolHTTPConnect {
			kc.Mode = client.ModeHTTPConnect
		}
		switch {
		case c.Transport != nil && c.Transport.UDS != nil:
			kc.UDSName = c.Transport.UDS.UDSName
		case c.Transport != nil && c.Transport.TCP != nil:
			u, err := url.Parse(c.Transport.TCP.URL)
			if err != nil {
				return fmt.Errorf("egress: %s: %w", name, err)
			}
			kc.Address = u.Host
			tc, err := tlsConfig(c.Transport.TCP.TLSConfig)
			if err != nil {
				return fmt.Errorf("egress: %s: %w", name, err)
			}
			kc.TLS = tc
		default:
			return fmt.Errorf("egress: %s: a transport is required", name)
		}
		d, err := client.New(kc)
		if err != nil {
			return fmt.Errorf("egress: %s: %w", name, err)
		}
		s.closers = append(s.closers, d.Close)
		s.dialers[name], s.modes[name] = d, ModeKonnectivity
	}
	return nil
}

func tlsConfig(c *apiserverapi.TLSConfig) (*tls.Config, error) {
	if c == nil {
		return nil, errors.New("TCP transport needs tlsConfig (mutual TLS)")
	}
	out := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CABundle != "" {
		pem, err := os.ReadFile(c.CABundle)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificates in %s", c.CABundle)
		}
		out.RootCAs = pool
	}
	if c.ClientCert != "" {
		cert, err := tls.LoadX509KeyPair(c.ClientCert, c.ClientKey)
		if err != nil {
			return nil, err
		}
		out.Certificates = []tls.Certificate{cert}
	}
	return out, nil
}

// Cluster returns the dialer for the cluster network (nodes, pods,
// services), wrapping errors with the egress path used.
func (s *Selector) Cluster() Dialer { return s.named("cluster") }

// Mode reports the mode of an egress name.
func (s *Selector) Mode(name string) string { return s.modes[name] }

func (s *Selector) named(name string) Dialer {
	d, mode := s.dialers[name], s.modes[name]
	return DialerFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, &DialError{Egress: name, Mode: mode, Addr: addr, Err: err}
		}
		return c, nil
	})
}

// Close releases the dialers' connections.
func (s *Selector) Close() error {
	var errs []error
	for _, c := range s.closers {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}

// DialError names the egress path that failed.
type DialError struct {
	Egress, Mode, Addr string
	Err                error
}

func (e *DialError) Error() string {
	return fmt.Sprintf("egress %q via %s: dial %s: %v", e.Egress, e.Mode, e.Addr, e.Err)
}

func (e *DialError) Unwrap() error { return e.Err }

package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// failoverServerName is the name every hub replica's serving certificate
// carries (pki: kubernetes, kubernetes.default, …); with several hub
// addresses the agent verifies replicas by it, still against the cluster CA
// only, since one replica's certificate need not list another's address.
const failoverServerName = "kubernetes"

// failover makes cfg dial the hub replicas in turn when Config.Servers lists
// more than one: connections go to the replica that answered last, and to
// the next one in order when it stops answering.
func (a *Agent) failover(cfg *rest.Config, primary string) error {
	if len(a.cfg.Servers) == 0 {
		return nil
	}
	var addrs []string
	for _, s := range append([]string{primary}, a.cfg.Servers...) {
		u, err := url.Parse(s)
		if err != nil {
			return fmt.Errorf("server %q: %w", s, err)
		}
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "443")
		}
		addrs = append(addrs, host)
	}
	d := &failoverDialer{addrs: addrs, timeout: 3 * time.Second, onSwitch: func(addr string) {
		a.log.Info("hub connection failed over", "server", addr)
	}}
	cfg.Dial = d.DialContext
	cfg.TLSClientConfig.ServerName = failoverServerName
	return nil
}

// failoverDialer dials the first address that accepts, starting with the
// one that worked last.
type failoverDialer struct {
	addrs    []string
	timeout  time.Duration
	onSwitch func(addr string)
	mu       sync.Mutex
	cur      int
}

// DialContext ignores the address it is given when that is the primary
// hub's, and dials the replicas instead; other addresses are dialed as is.
func (d *failoverDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if addr != d.addrs[0] {
		var nd net.Dialer
		return nd.DialContext(ctx, network, addr)
	}
	d.mu.Lock()
	start := d.cur
	d.mu.Unlock()
	var errs []error
	for i := range d.addrs {
		idx := (start + i) % len(d.addrs)
		nd := net.Dialer{Timeout: d.timeout, KeepAlive: 30 * time.Second}
		c, err := nd.DialContext(ctx, network, d.addrs[idx])
		if err == nil {
			if idx != start {
				d.mu.Lock()
				d.cur = idx
				d.mu.Unlock()
				if d.onSwitch != nil {
					d.onSwitch(d.addrs[idx])
				}
			}
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("no hub replica answered: %w", errors.Join(errs...))
}

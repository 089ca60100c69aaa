// Package sshtunnel implements tether's SSH egress, the deprecated
// "SSH tunnels" path of the control plane → node communication, done safely.
//
// The hub side is the Tunneler: it keeps at most one SSH connection per node
// (opened lazily on the first dial, shared by many concurrent direct-tcpip
// channels), always verifies the node's host key (published by the node on
// its own Node object as the annotation tether.io/ssh-host-key, or listed in
// a known_hosts file), health-checks connections with keepalive@openssh.com,
// reconnects with capped exponential backoff and drops tunnels of deleted
// nodes. Its DialContext plugs into internal/egress.
//
// The node side is the Endpoint: a restricted SSH server that accepts only
// public-key authentication with the hub key and only direct-tcpip channels
// to allowed destinations (the node's kubelet port, its pod CIDR). Sessions,
// exec, shells, subsystems, agent and X11 forwarding and remote forwarding
// are refused; failed authentications are rate limited and idle connections
// closed. NodeEndpoint wires an Endpoint to the API server for the node
// agent (host key publication, hub key from kube-system/tether-ssh).
//
// A real OpenSSH sshd can replace the Endpoint; see docs/ssh-tunnels.md.
package sshtunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
	corev1 "k8s.io/api/core/v1"
)

// Names shared by the hub and the node agent.
const (
	// HostKeyAnnotation on a Node holds the node's SSH host public key in
	// authorized_keys format, written by the node itself.
	HostKeyAnnotation = "tether.io/ssh-host-key"
	// PortAnnotation on a Node overrides the SSH port the hub dials.
	PortAnnotation = "tether.io/ssh-port"
	// ConfigMapName (namespace kube-system) publishes the hub's public key
	// under ConfigMapKey, readable by group system:nodes.
	ConfigMapName = "tether-ssh"
	ConfigMapKey  = "authorized_key"
)

// NodeLister returns the current nodes (a fresh read: used again when a host
// key does not match, to pick up a rotated key).
type NodeLister func(ctx context.Context) ([]corev1.Node, error)

// Config configures a Tunneler.
type Config struct {
	// User is the SSH user; zero value "tether".
	User string
	// Signer is the hub's private key (required).
	Signer ssh.Signer
	// Port is the node SSH port; zero value 22. The Node annotation
	// tether.io/ssh-port overrides it per node.
	Port int
	// Nodes lists the cluster's nodes (required).
	Nodes NodeLister
	// KnownHostsFile, when set, is an OpenSSH known_hosts file consulted
	// for host keys; a node without an entry there falls back to its
	// published annotation.
	KnownHostsFile string
	// InsecureSkipHostKeyCheck accepts any host key (labs only; warns).
	InsecureSkipHostKeyCheck bool
	// KeepaliveInterval; zero value 15s. A keepalive unanswered within the
	// interval closes the connection.
	KeepaliveInterval time.Duration
	// ResyncInterval re-lists nodes to drop tunnels of deleted nodes; zero 10s.
	ResyncInterval time.Duration
	// DialTimeout bounds the TCP connect + SSH handshake; zero value 10s.
	DialTimeout time.Duration
	// MaxBackoff caps the reconnect backoff; zero value 30s (starts at 500ms).
	MaxBackoff time.Duration
	// Logger; zero value slog.Default().
	Logger *slog.Logger
}

// Tunneler dials cluster addresses through per-node SSH connections.
type Tunneler struct {
	cfg       Config
	log       *slog.Logger
	knownHost ssh.HostKeyCallback

	mu      sync.Mutex
	nodes   []corev1.Node
	tunnels map[string]*tunnel
	closed  bool
	life    context.Context
	stop    context.CancelFunc
}

// tunnel is one node's (shared) SSH connection.
type tunnel struct {
	name string

	mu      sync.Mutex
	client  *ssh.Client
	dialing chan struct{} // closed when an in-flight connect finishes
	lastErr error
	retryAt time.Time
	backoff time.Duration
	removed bool
}

// New validates cfg and returns a Tunneler; Run manages its lifetime.
func New(cfg Config) (*Tunneler, error) {
	if cfg.Signer == nil {
		return nil, errors.New("sshtunnel: Config.Signer is required")
	}
	if cfg.Nodes == nil {
		return nil, errors.New("sshtunnel: Config.Nodes is required")
	}
	if cfg.User == "" {
		cfg.User = "tether"
	}
	if cfg.Port == 0 {
		cfg.Port = 22
	}
	if cfg.Port < 1 || cfg.Port > 65535 {
		return nil, fmt.Errorf("sshtunnel: port %d out of range", cfg.Port)
	}
	if cfg.KeepaliveInterval == 0 {
		cfg.KeepaliveInterval = 15 * time.Second
	}
	if cfg.ResyncInterval == 0 {
		cfg.ResyncInterval = 10 * time.Second
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	t := &Tunneler{cfg: cfg, log: cfg.Logger, tunnels: map[string]*tunnel{}}
	if cfg.KnownHostsFile != "" {
		cb, err := knownhosts.New(cfg.KnownHostsFile)
		if err != nil {
			return nil, fmt.Errorf("sshtunnel: known_hosts: %w", err)
		}
		t.knownHost = cb
	}
	if cfg.InsecureSkipHostKeyCheck {
		t.log.Warn("SSH host key verification is DISABLED (--insecure-ssh-skip-host-key-check): anyone on the path can impersonate nodes")
	}
	t.life, t.stop = context.WithCancel(context.Background())
	return t, nil
}

// Run resyncs the node list (dropping tunnels of deleted nodes) until ctx
// ends, then closes every tunnel.
func (t *Tunneler) Run(ctx context.Context) error {
	defer t.shutdown()
	tick := time.NewTicker(t.cfg.ResyncInterval)
	defer tick.Stop()
	for {
		if err := t.resync(ctx); err != nil && ctx.Err() == nil {
			t.log.Debug("ssh tunneler: list nodes", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (t *Tunneler) shutdown() {
	t.mu.Lock()
	t.closed = true
	tuns := t.tunnels
	t.tunnels = map[string]*tunnel{}
	t.mu.Unlock()
	t.stop()
	for _, tun := range tuns {
		tun.remove()
	}
}

// resync refreshes the node cache and removes tunnels of deleted nodes.
func (t *Tunneler) resync(ctx context.Context) error {
	nodes, err := t.cfg.Nodes(ctx)
	if err != nil {
		return fmt.Errorf("sshtunnel: list nodes: %w", err)
	}
	live := make(map[string]bool, len(nodes))
	for i := range nodes {
		live[nodes[i].Name] = true
	}
	var gone []*tunnel
	t.mu.Lock()
	t.nodes = nodes
	for name, tun := range t.tunnels {
		if !live[name] {
			delete(t.tunnels, name)
			gone = append(gone, tun)
		}
	}
	t.mu.Unlock()
	for _, tun := range gone {
		t.log.Info("ssh tunneler: node deleted, closing tunnel", "node", tun.name)
		tun.remove()
	}
	return nil
}

// DialContext opens a direct-tcpip channel to addr (IP:port) through the SSH
// connection of the node owning that IP (a node address or pod CIDR).
func (t *Tunneler) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("sshtunnel: network %q not supported", network)
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("sshtunnel: %w", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("sshtunnel: port in %q: %w", addr, err)
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil, fmt.Errorf("sshtunnel: %q is not an IP address", addr)
	}
	node, ok := t.nodeFor(ip, port)
	if !ok {
		// The cache may be stale (a node that just joined).
		if err := t.resync(ctx); err != nil {
			return nil, err
		}
		if node, ok = t.nodeFor(ip, port); !ok {
			return nil, fmt.Errorf("sshtunnel: no node owns %s", host)
		}
	}
	client, err := t.client(ctx, node)
	if err != nil {
		return nil, err
	}
	c, err := client.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sshtunnel: node %q: open channel to %s: %w", node.Name, addr, err)
	}
	return c, nil
}

// nodeFor maps an address to the node owning it: a node address (when
// several nodes share an IP, the one whose kubelet listens on port wins),
// else a pod CIDR containing it.
func (t *Tunneler) nodeFor(ip net.IP, port int) (corev1.Node, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var byIP *corev1.Node
	for i := range t.nodes {
		n := &t.nodes[i]
		for _, a := range n.Status.Addresses {
			if a2 := net.ParseIP(a.Address); a2 != nil && a2.Equal(ip) {
				if int(n.Status.DaemonEndpoints.KubeletEndpoint.Port) == port {
					return *n, true
				}
				if byIP == nil {
					byIP = n
				}
			}
		}
	}
	if byIP != nil {
		return *byIP, true
	}
	for i := range t.nodes {
		n := &t.nodes[i]
		cidrs := n.Spec.PodCIDRs
		if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
			cidrs = []string{n.Spec.PodCIDR}
		}
		for _, c := range cidrs {
			if _, nw, err := net.ParseCIDR(c); err == nil && nw.Contains(ip) {
				return *n, true
			}
		}
	}
	return corev1.Node{}, false
}

// sshAddr is where the hub reaches a node's SSH server.
func (t *Tunneler) sshAddr(n *corev1.Node) (string, error) {
	port := t.cfg.Port
	if p := n.Annotations[PortAnnotation]; p != "" {
		v, err := strconv.Atoi(p)
		if err != nil || v < 1 || v > 65535 {
			return "", fmt.Errorf("sshtunnel: node %q: bad %s annotation %q", n.Name, PortAnnotation, p)
		}
		port = v
	}
	for _, typ := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if a.Type == typ && net.ParseIP(a.Address) != nil {
				return net.JoinHostPort(a.Address, strconv.Itoa(port)), nil
			}
		}
	}
	return "", fmt.Errorf("sshtunnel: node %q has no IP address", n.Name)
}

// client returns the node's SSH connection, connecting if needed (one
// connect in flight per node; failures back off exponentially).
func (t *Tunneler) client(ctx context.Context, node corev1.Node) (*ssh.Client, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, errors.New("sshtunnel: tunneler stopped")
	}
	tun := t.tunnels[node.Name]
	if tun == nil {
		tun = &tunnel{name: node.Name}
		t.tunnels[node.Name] = tun
	}
	t.mu.Unlock()
	for {
		tun.mu.Lock()
		switch {
		case tun.removed:
			tun.mu.Unlock()
			return nil, fmt.Errorf("sshtunnel: node %q removed", node.Name)
		case tun.client != nil:
			c := tun.client
			tun.mu.Unlock()
			return c, nil
		case tun.dialing != nil:
			wait := tun.dialing
			tun.mu.Unlock()
			select {
			case <-wait:
				tun.mu.Lock()
				c, err := tun.client, tun.lastErr
				tun.mu.Unlock()
				if c != nil {
					return c, nil
				}
				if err != nil {
					return nil, err
				}
				continue
			case <-ctx.Done():
				return nil, fmt.Errorf("sshtunnel: node %q: %w", node.Name, ctx.Err())
			}
		case time.Now().Before(tun.retryAt):
			err := tun.lastErr
			tun.mu.Unlock()
			return nil, fmt.Errorf("%w (retrying after backoff)", err)
		}
		done := make(chan struct{})
		tun.dialing = done
		tun.mu.Unlock()

		c, err := t.connect(ctx, &node)
		tun.mu.Lock()
		tun.dialing = nil
		if err != nil {
			tun.lastErr = err
			if tun.backoff == 0 {
				tun.backoff = 500 * time.Millisecond
			} else if tun.backoff *= 2; tun.backoff > t.cfg.MaxBackoff {
				tun.backoff = t.cfg.MaxBackoff
			}
			tun.retryAt = time.Now().Add(tun.backoff)
		} else if tun.removed {
			c.Close()
			err = fmt.Errorf("sshtunnel: node %q removed", node.Name)
		} else {
			tun.client, tun.lastErr, tun.backoff, tun.retryAt = c, nil, 0, time.Time{}
			go t.watch(tun, c)
		}
		tun.mu.Unlock()
		close(done)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
}

// watch sends keepalives on c and forgets it when it dies.
func (t *Tunneler) watch(tun *tunnel, c *ssh.Client) {
	dead := make(chan struct{})
	go func() {
		err := c.Wait()
		t.log.Info("ssh tunneler: connection closed", "node", tun.name, "err", err)
		close(dead)
	}()
	tick := time.NewTicker(t.cfg.KeepaliveInterval)
	defer tick.Stop()
	for {
		select {
		case <-dead:
			tun.drop(c)
			return
		case <-t.life.Done():
			c.Close()
			<-dead
			tun.drop(c)
			return
		case <-tick.C:
			reply := make(chan error, 1)
			go func() {
				_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
				reply <- err
			}()
			timer := time.NewTimer(t.cfg.KeepaliveInterval)
			select {
			case err := <-reply:
				timer.Stop()
				if err != nil {
					c.Close()
				}
			case <-timer.C:
				t.log.Warn("ssh tunneler: keepalive timed out", "node", tun.name)
				c.Close()
			case <-dead:
				timer.Stop()
			}
		}
	}
}

// drop forgets c if it is still the node's connection.
func (tun *tunnel) drop(c *ssh.Client) {
	tun.mu.Lock()
	if tun.client == c {
		tun.client = nil
	}
	tun.mu.Unlock()
}

// remove closes the tunnel for good.
func (tun *tunnel) remove() {
	tun.mu.Lock()
	tun.removed = true
	c := tun.client
	tun.client = nil
	tun.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// connect dials and handshakes with the node's SSH server.
func (t *Tunneler) connect(ctx context.Context, node *corev1.Node) (*ssh.Client, error) {
	addr, err := t.sshAddr(node)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, t.cfg.DialTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sshtunnel: node %q: dial %s: %w", node.Name, addr, err)
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	stopAfter := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stopAfter()
	conf := &ssh.ClientConfig{
		User:            t.cfg.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(t.cfg.Signer)},
		HostKeyCallback: t.hostKeyCallback(ctx, node.Name),
		Timeout:         t.cfg.DialTimeout,
	}
	// AES-GCM first: hardware-accelerated on the machines we run on.
	conf.Ciphers = []string{"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-ctr"}
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, conf)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("sshtunnel: node %q: ssh handshake with %s: %w", node.Name, addr, err)
	}
	if !stopAfter() {
		sc.Close()
		return nil, fmt.Errorf("sshtunnel: node %q: %w", node.Name, ctx.Err())
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(sc, chans, reqs), nil
}

// HostKeyMismatchError says a node presented a key other than the trusted one.
type HostKeyMismatchError struct {
	Node, Got, Want string
}

func (e *HostKeyMismatchError) Error() string {
	return fmt.Sprintf("sshtunnel: node %q presented SSH host key %s but its trusted key is %s: refusing to connect (possible impersonation; if the node's key was rotated, the node must publish it in the %s annotation)", e.Node, e.Got, e.Want, HostKeyAnnotation)
}

// hostKeyCallback verifies the node's host key: known_hosts first, else the
// Node annotation, read fresh for each new connection (follows rotation).
func (t *Tunneler) hostKeyCallback(ctx context.Context, name string) ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		if t.cfg.InsecureSkipHostKeyCheck {
			return nil
		}
		if t.knownHost != nil {
			err := t.knownHost(hostname, remote, key)
			var ke *knownhosts.KeyError
			switch {
			case err == nil:
				return nil
			case errors.As(err, &ke) && len(ke.Want) > 0:
				want := ssh.FingerprintSHA256(ke.Want[0].Key)
				return &HostKeyMismatchError{Node: name, Got: ssh.FingerprintSHA256(key), Want: want + " (known_hosts " + ke.Want[0].Filename + ":" + strconv.Itoa(ke.Want[0].Line) + ")"}
			case !errors.As(err, &ke):
				return fmt.Errorf("sshtunnel: node %q: known_hosts: %w", name, err)
			}
			// Not in known_hosts: fall back to the annotation.
		}
		// New connections are rare (one per node): verify against a fresh
		// read of the Node, so a rotated (or revoked) key applies at once.
		if err := t.resync(ctx); err != nil {
			return fmt.Errorf("sshtunnel: node %q: cannot verify host key: %w", name, err)
		}
		want, err := t.publishedKey(name)
		if err != nil {
			return err
		}
		if !bytes.Equal(want.Marshal(), key.Marshal()) {
			return &HostKeyMismatchError{Node: name, Got: ssh.FingerprintSHA256(key), Want: ssh.FingerprintSHA256(want)}
		}
		return nil
	}
}

func (t *Tunneler) publishedKey(name string) (ssh.PublicKey, error) {
	t.mu.Lock()
	var ann string
	found := false
	for i := range t.nodes {
		if t.nodes[i].Name == name {
			ann, found = t.nodes[i].Annotations[HostKeyAnnotation], true
			break
		}
	}
	t.mu.Unlock()
	if !found {
		return nil, fmt.Errorf("sshtunnel: node %q not found", name)
	}
	if ann == "" {
		return nil, fmt.Errorf("sshtunnel: node %q publishes no SSH host key (annotation %s) and has no known_hosts entry: refusing to connect", name, HostKeyAnnotation)
	}
	k, err := ParseAuthorizedKey(ann)
	if err != nil {
		return nil, fmt.Errorf("sshtunnel: node %q: annotation %s: %w", name, HostKeyAnnotation, err)
	}
	return k, nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/tether-dev/tether/internal/egress"
	"github.com/tether-dev/tether/internal/hub"
	"github.com/tether-dev/tether/internal/pki"
	"github.com/tether-dev/tether/internal/storage"
	"github.com/tether-dev/tether/internal/tcplb"
)

// haFlags are `tether up --hubs N --etcd-members M`.
type haFlags struct{ hubs, members int }

func addHAFlags(fs *pflag.FlagSet) *haFlags {
	f := &haFlags{}
	fs.IntVar(&f.hubs, "hubs", 1, "hub replicas (each on its own loopback address), behind a TCP load balancer")
	fs.IntVar(&f.members, "etcd-members", 1, "members of the etcd cluster the hubs share (mutual TLS, each on its own loopback address)")
	return f
}

func (f *haFlags) enabled() bool { return f.hubs > 1 || f.members > 1 }

// haLayout is where the replicated cluster lives: 127.A.B.x with A.B chosen
// once per data dir, so a resumed cluster keeps its addresses.
type haLayout struct {
	prefix string // "127.A.B"
	port   int
	hubs   []net.IP
	etcd   []net.IP
	lb     net.IP
}

func newHALayout(dir string, hubs, members, port int) (*haLayout, error) {
	path := filepath.Join(dir, "ha.prefix")
	prefix := ""
	if b, err := os.ReadFile(path); err == nil {
		prefix = strings.TrimSpace(string(b))
	} else {
		pid := os.Getpid()
		prefix = fmt.Sprintf("127.%d.%d", 64+(pid>>8)%128, pid%256)
		if err := os.WriteFile(path, []byte(prefix+"\n"), 0o600); err != nil {
			return nil, err
		}
	}
	ip := func(last int) (net.IP, error) {
		v := net.ParseIP(prefix + "." + strconv.Itoa(last))
		if v == nil || !v.IsLoopback() {
			return nil, fmt.Errorf("%s: %q is not a loopback /24 prefix", path, prefix)
		}
		return v.To4(), nil
	}
	l := &haLayout{prefix: prefix, port: port}
	var err error
	for i := range hubs {
		v, e := ip(1 + i)
		l.hubs, err = append(l.hubs, v), errors.Join(err, e)
	}
	for i := range members {
		v, e := ip(101 + i)
		l.etcd, err = append(l.etcd, v), errors.Join(err, e)
	}
	l.lb, _ = ip(200)
	return l, err
}

// run starts the etcd cluster, the hub replicas, the load balancer and the
// nodes, and blocks until ctx ends.
func (f *haFlags) run(ctx context.Context, out io.Writer, cfg hub.Config, nodes int, verbose bool) error {
	switch {
	case f.hubs < 1 || f.hubs > 9:
		return errors.New("--hubs must be between 1 and 9")
	case f.members < 1 || f.members > 9:
		return errors.New("--etcd-members must be between 1 and 9")
	case nodes < 0:
		return errors.New("--nodes must be >= 0")
	case len(cfg.EtcdServers) > 0:
		return errors.New("--etcd-members starts its own etcd cluster; leave out --etcd-servers (or run `tether server --etcd-servers` replicas yourself)")
	case f.hubs > 1 && (cfg.Egress.Mode == egress.ModeSSH || cfg.Egress.SelectorConfigFile != ""):
		return errors.New("--hubs > 1 supports --egress=direct or konnectivity (each replica would have its own SSH key)")
	case cfg.CACertFile != "" || cfg.ServingCertFile != "" || cfg.ServiceAccountKeyFile != "":
		return errors.New("--hubs/--etcd-members generate the shared PKI under --data-dir; operator-provided keys are for `tether server`")
	}
	if f.members%2 == 0 {
		fmt.Fprintf(out, "• note: %d etcd members tolerate no more failures than %d\n", f.members, f.members-1)
	}
	start := time.Now()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return err
	}
	logFile, err := openLog(cfg.DataDir)
	if err != nil {
		return err
	}
	defer logFile.Close()
	log := newLoggerTo(logFile, verbose)
	fmt.Fprintf(out, "• data dir %s (log: %s)\n", cfg.DataDir, logFile.Name())
	lay, err := newHALayout(cfg.DataDir, f.hubs, f.members, cfg.SecurePort)
	if err != nil {
		return err
	}

	// One PKI for every replica: same CA, same service-account key, one
	// serving certificate naming every replica and the load balancer.
	sans := []string{lay.lb.String(), hub.ServiceIP(cfg.ServiceClusterIPRange).String()}
	for _, ip := range lay.hubs {
		sans = append(sans, ip.String())
	}
	shared, err := pki.EnsureCluster(pki.Options{Dir: filepath.Join(cfg.DataDir, "pki"), ServingHosts: append(sans, cfg.ExtraSANs...)})
	if err != nil {
		return err
	}
	chain := filepath.Join(cfg.DataDir, "pki", "apiserver-chain.crt")
	leaf, err := os.ReadFile(shared.ServingCertFile)
	if err != nil {
		return err
	}
	if err := os.WriteFile(chain, append(append(leaf, '\n'), shared.CA.CertPEM...), 0o644); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	errc := make(chan error, f.hubs+f.members+nodes+2)
	goRun := func(name string, run func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}

	// etcd: every member must start before any is ready (quorum).
	fmt.Fprintf(out, "• starting %d etcd member(s) (mutual TLS, one `tether etcd` process each) on %s.%d…\n", f.members, lay.prefix, 101)
	cluster, err := storage.NewCluster(storage.ClusterConfig{Dir: filepath.Join(cfg.DataDir, "etcd"), IPs: lay.etcd, Logger: log})
	if err != nil {
		return err
	}
	// Each member is a `tether etcd` child process (kill -9 of one is a
	// real crash; it is restarted and rejoins). etcd outlives the hubs:
	// its context ends after theirs.
	self, err := os.Executable()
	if err != nil {
		return err
	}
	etcdCtx, stopEtcd := context.WithCancel(context.Background())
	var etcdWG sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		stopEtcd()
		etcdWG.Wait()
	}()
	etcdReady := make(chan struct{}, f.members)
	for i := range f.members {
		etcdWG.Add(1)
		go func() {
			defer etcdWG.Done()
			if err := cluster.RunProcess(etcdCtx, self, i, logFile, func() { etcdReady <- struct{}{} }); err != nil {
				errc <- fmt.Errorf("etcd member %d: %w", i+1, err)
			}
		}()
	}
	for range f.members {
		select {
		case <-etcdReady:
		case err := <-errc:
			return err
		case <-ctx.Done():
			return nil
		}
	}
	fmt.Fprintf(out, "• etcd ready: %s\n", strings.Join(cluster.ClientURLs(), ","))

	token, err := upToken(cfg.DataDir)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "• starting %d hub replica(s)…\n", f.hubs)
	var hubs []*hub.Hub
	var servers, backends []string
	for i, ip := range lay.hubs {
		c := cfg
		c.DataDir = filepath.Join(cfg.DataDir, "hubs", fmt.Sprintf("hub-%d", i+1))
		c.BindAddress, c.AdvertiseAddress = ip, ip
		c.EtcdServers = cluster.ClientURLs()
		c.EtcdCAFile, c.EtcdCertFile, c.EtcdKeyFile = cluster.CAFile, cluster.CertFile, cluster.KeyFile
		c.CACertFile, c.CAKeyFile = shared.CACertFile, filepath.Join(cfg.DataDir, "pki", "ca.key")
		c.ServingCertFile, c.ServingKeyFile = chain, shared.ServingKeyFile
		c.ServiceAccountKeyFile = shared.ServiceAccountKeyFile
		c.BootstrapTokens = nil
		if i == 0 && nodes > 0 {
			c.BootstrapTokens = append(append([]string(nil), cfg.BootstrapTokens...), token)
		}
		c.Logger = log.With("hub", i+1)
		h, err := hub.New(c)
		if err != nil {
			return err
		}
		hubs = append(hubs, h)
		goRun(fmt.Sprintf("hub %d", i+1), h.Run)
		addr := net.JoinHostPort(ip.String(), strconv.Itoa(cfg.SecurePort))
		servers, backends = append(servers, "https://"+addr), append(backends, addr)
	}
	for i, h := range hubs {
		select {
		case <-h.Ready():
			fmt.Fprintf(out, "• hub %d ready at %s\n", i+1, servers[i])
		case err := <-errc:
			return err
		case <-ctx.Done():
			return nil
		}
	}

	// The load balancer: one address for kubectl.
	ln, err := net.Listen("tcp", net.JoinHostPort(lay.lb.String(), strconv.Itoa(cfg.SecurePort)))
	if err != nil {
		return fmt.Errorf("load balancer: %w", err)
	}
	lb, err := tcplb.New(tcplb.Config{Listener: ln, Backends: backends, Logger: log.With("component", "lb")})
	if err != nil {
		ln.Close()
		return err
	}
	goRun("load balancer", lb.Run)
	lbURL := "https://" + ln.Addr().String()
	kubeconfig := filepath.Join(cfg.DataDir, "admin.kubeconfig")
	if err := pki.WriteKubeconfig(kubeconfig, pki.Kubeconfig{Server: lbURL, CAPEM: shared.CA.CertPEM, UserName: "tether-admin",
		CertPEM: shared.AdminCertPEM, KeyPEM: shared.AdminKeyPEM}); err != nil {
		return err
	}
	fmt.Fprintf(out, "• load balancer %s → %s\n", lbURL, strings.Join(backends, ", "))

	// Nodes get every replica's address and fail over between them.
	ncfg := cfg
	ncfg.BindAddress, ncfg.AdvertiseAddress, ncfg.Logger = lay.hubs[0], lay.hubs[0], log
	agents, err := startNodes(ctx, out, ncfg, servers, token, nodes, errc)
	defer func() {
		cancel()
		for _, a := range agents {
			<-a
		}
	}()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "• cluster ready in %s\n", time.Since(start).Round(time.Millisecond))
	printHAStatus(ctx, out, kubeconfig, lbURL, servers, cluster.ClientURLs())
	fmt.Fprintf(out, "\nCluster is up. In another shell:\n\n  export KUBECONFIG=%s\n  kubectl get nodes\n\nCtrl-C stops the cluster; the same command with --data-dir %s resumes it.\n", kubeconfig, cfg.DataDir)
	ready := filepath.Join(cfg.DataDir, "up.ready")
	if err := os.WriteFile(ready, []byte(lbURL+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(ready)
	select {
	case <-ctx.Done():
		err = nil
	case err = <-errc:
	}
	fmt.Fprintln(out, "• cluster stopping")
	return err
}

// printHAStatus lists the replicas, the etcd members and the nodes.
func printHAStatus(ctx context.Context, out io.Writer, kubeconfig, lbURL string, servers, etcd []string) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer w.Flush()
	fmt.Fprintf(w, "\nLB\t%s\tkubeconfig=%s\n", lbURL, kubeconfig)
	for _, s := range servers {
		fmt.Fprintf(w, "HUB\t%s\n", s)
	}
	for _, e := range etcd {
		fmt.Fprintf(w, "ETCD\t%s\n", e)
	}
	printNodes(ctx, w, kubeconfig)
}

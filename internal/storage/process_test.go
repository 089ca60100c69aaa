package storage

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// memberChildEnv makes the test binary act as `tether etcd` (the child
// StartProcess runs), so Process is tested with a real child process.
const memberChildEnv = "TETHER_STORAGE_TEST_MEMBER_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(memberChildEnv) == "1" {
		os.Exit(memberChild())
	}
	os.Exit(m.Run())
}

func memberChild() int {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	dir := fs.String("cluster-dir", "", "")
	member := fs.Int("member", 0, "")
	if len(os.Args) < 2 || os.Args[1] != "etcd" || fs.Parse(os.Args[2:]) != nil {
		fmt.Fprintln(os.Stderr, "usage: etcd --cluster-dir DIR --member N")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	c, err := OpenCluster(*dir, nil)
	if err == nil {
		err = c.RunMember(ctx, *member-1)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func TestOpenClusterErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenCluster(dir, nil); err == nil {
		t.Fatal("a dir without cluster.json opened")
	}
	for _, bad := range []string{`{`, `{"ips":["no-ip"],"clientPort":1,"peerPort":2}`, `{"ips":[],"clientPort":1,"peerPort":2}`, `{"ips":["127.0.0.1"],"clientPort":0,"peerPort":70000}`} {
		if err := os.WriteFile(filepath.Join(dir, layoutFile), []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenCluster(dir, nil); err == nil {
			t.Errorf("layout %s accepted", bad)
		}
	}
}

// TestMemberProcessCrash: a one-member cluster as a child process is
// SIGKILLed and restarted from its data dir with its data; SIGTERM stops it
// cleanly.
func TestMemberProcessCrash(t *testing.T) {
	dir := t.TempDir()
	made, err := NewCluster(ClusterConfig{Dir: dir, IPs: runIPs(4)[3:]})
	if err != nil {
		t.Fatal(err)
	}
	c, err := OpenCluster(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, want := c.Member(0), made.Member(0)
	m.Logger, want.Logger = nil, nil
	if c.Members() != 1 || c.ClientURLs()[0] != made.ClientURLs()[0] || m != want {
		t.Fatalf("opened cluster differs: %v vs %v", c.ClientURLs(), made.ClientURLs())
	}
	t.Setenv(memberChildEnv, "1")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "child.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	start := func() *Process {
		t.Helper()
		p, err := c.StartProcess(self, 0, logf)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Kill)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := p.WaitReady(ctx); err != nil {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("%v\n%s", err, b)
		}
		return p
	}
	tc, err := (&transport.TLSInfo{CertFile: c.CertFile, KeyFile: c.KeyFile, TrustedCAFile: c.CAFile}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.ClientURLs(), TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	// do retries op for up to 30s: the client reconnects after a restart.
	do := func(op func(ctx context.Context) error) error {
		deadline := time.Now().Add(30 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			err := op(ctx)
			cancel()
			if err == nil || time.Now().After(deadline) {
				return err
			}
			time.Sleep(100 * time.Millisecond) // poll interval
		}
	}

	p := start()
	if err := do(func(ctx context.Context) error { _, err := cli.Put(ctx, "/acked", "v"); return err }); err != nil {
		t.Fatal(err)
	}
	p.Kill()
	if _, err := os.Stat(c.readyFile(0)); err != nil {
		t.Fatalf("SIGKILL should leave the ready file behind (no cleanup ran): %v", err)
	}
	if p.Err() == nil {
		t.Fatal("a SIGKILLed member reported a clean exit")
	}
	p = start() // WaitReady must not trust the stale file
	if err := do(func(ctx context.Context) error {
		resp, err := cli.Get(ctx, "/acked")
		if err == nil && len(resp.Kvs) != 1 {
			err = errors.New("acknowledged key lost")
		}
		return err
	}); err != nil {
		t.Fatalf("after SIGKILL and restart: %v", err)
	}
	if err := p.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if p.Err() != nil {
		t.Fatalf("SIGTERM: member exited with %v", p.Err())
	}
	if _, err := os.Stat(c.readyFile(0)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ready file after a clean stop: %v", err)
	}
	if _, err := c.StartProcess(self, 1, nil); err == nil {
		t.Fatal("member 2 of a one-member cluster started")
	}
}

// TestRunProcessRestarts: RunProcess restarts a member killed from outside
// (as a user's `kill -9` would) and stops it when its context ends.
func TestRunProcessRestarts(t *testing.T) {
	dir := t.TempDir()
	c, err := NewCluster(ClusterConfig{Dir: dir, IPs: runIPs(5)[4:]})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(memberChildEnv, "1")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() { done <- c.RunProcess(ctx, self, 0, nil, func() { ready <- struct{}{} }) }()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("RunProcess ended: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("member not ready within 60s")
	}
	pidOf := func() int {
		b, err := os.ReadFile(c.readyFile(0))
		if err != nil {
			return 0
		}
		var pid int
		fmt.Sscan(string(b), &pid)
		return pid
	}
	first := pidOf()
	if first == 0 {
		t.Fatal("no pid in the ready file")
	}
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for pid := pidOf(); pid == 0 || pid == first; pid = pidOf() {
		if time.Now().After(deadline) {
			t.Fatal("member not restarted within 60s of SIGKILL")
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	second := pidOf()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("stop: %v", err)
	}
	done <- nil // for the deferred receive
	if err := syscall.Kill(second, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("member pid %d still there after RunProcess returned: %v", second, err)
	}
}

// FuzzParseLayout: any cluster.json is a config with members and valid
// ports, or an error; never a panic.
func FuzzParseLayout(f *testing.F) {
	f.Add([]byte(`{"ips":["127.0.0.1","::1"],"clientPort":2379,"peerPort":2380}`))
	f.Add([]byte(`{"ips":["x"],"clientPort":2379,"peerPort":2380}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := parseLayout(b, "cluster.json")
		if err != nil {
			return
		}
		if len(cfg.IPs) == 0 || cfg.ClientPort < 1 || cfg.ClientPort > 65535 || cfg.PeerPort < 1 || cfg.PeerPort > 65535 {
			t.Fatalf("accepted %q as %+v", b, cfg)
		}
		for _, ip := range cfg.IPs {
			if ip == nil {
				t.Fatalf("nil address from %q", b)
			}
		}
	})
}

package storage

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// runIPs returns n loopback addresses unique to this process.
func runIPs(n int) []net.IP {
	pid := os.Getpid()
	var ips []net.IP
	for i := range n {
		ips = append(ips, net.IPv4(127, byte(100+pid>>16%100), byte(pid>>8), byte(pid%200+i+1)).To4())
	}
	return ips
}

func TestClusterSurvivesOneMember(t *testing.T) {
	c, err := NewCluster(ClusterConfig{Dir: t.TempDir(), IPs: runIPs(3)})
	if err != nil {
		t.Fatal(err)
	}
	type member struct {
		cancel context.CancelFunc
		done   chan error
	}
	start := func(i int) member {
		e, err := New(c.Member(i))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- e.Run(ctx) }()
		return member{cancel, done}
	}
	var ms []member
	for i := range 3 {
		ms = append(ms, start(i))
	}
	t.Cleanup(func() {
		for _, m := range ms {
			m.cancel()
			<-m.done
		}
	})
	tc, err := (&transport.TLSInfo{CertFile: c.CertFile, KeyFile: c.KeyFile, TrustedCAFile: c.CAFile}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.ClientURLs(), TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	put := func(k string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var err error
		for ctx.Err() == nil { // bounded by ctx
			pctx, pc := context.WithTimeout(ctx, 3*time.Second)
			_, err = cli.Put(pctx, k, "v")
			pc()
			if err == nil {
				return nil
			}
		}
		return err
	}
	if err := put("/before"); err != nil {
		t.Fatal(err)
	}
	// Stop one member: the other two keep a quorum.
	ms[0].cancel()
	<-ms[0].done
	for i := range 5 {
		if err := put(fmt.Sprintf("/during/%d", i)); err != nil {
			t.Fatalf("write with one member down: %v", err)
		}
	}
	// Heal: the member rejoins from its data dir.
	ms[0] = start(0)
	one, err := clientv3.New(clientv3.Config{Endpoints: c.ClientURLs()[:1], TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		resp, err := one.Get(ctx, "/during/4")
		cancel()
		if err == nil && len(resp.Kvs) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted member did not catch up: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
	// Without a client certificate the cluster refuses the connection.
	noCert, err := (&transport.TLSInfo{TrustedCAFile: c.CAFile}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", c.ClientURLs()[1][len("https://"):], noCert)
	if err == nil {
		err = conn.Handshake()
		if err == nil {
			_, err = conn.Read(make([]byte, 1))
		}
		conn.Close()
	}
	if err == nil {
		t.Fatal("etcd accepted a client without a certificate")
	}
}

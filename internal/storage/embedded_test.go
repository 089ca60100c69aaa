package storage

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func startMember(t *testing.T, dir string) (*Embedded, context.CancelFunc, chan error) {
	t.Helper()
	e, err := New(Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	select {
	case <-e.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("run: %v", err)
	}
	return e, cancel, done
}

func TestEmbeddedPersistsAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	for i, want := range []string{"", "v1"} {
		e, cancel, done := startMember(t, dir)
		cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ctx, c2 := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := cli.Get(ctx, "/k")
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if len(resp.Kvs) == 1 {
			got = string(resp.Kvs[0].Value)
		}
		if got != want {
			t.Fatalf("run %d: got %q want %q", i, got, want)
		}
		if _, err := cli.Put(ctx, "/k", "v1"); err != nil {
			t.Fatal(err)
		}
		c2()
		cli.Close()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func TestNewRejectsMissingDir(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("want error")
	}
}

package servicenet

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func echoServer(t *testing.T, tag string) (string, int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = c.Write([]byte(tag + ":"))
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return "127.0.0.1", int32(ln.Addr().(*net.TCPAddr).Port)
}

func TestProxyLoopbackVIP(t *testing.T) {
	// A loopback VIP is local without touching the machine's networking.
	vip := fmt.Sprintf("127.%d.%d.%d", 100+rand.IntN(100), rand.IntN(250), 1+rand.IntN(250))
	ip, port := echoServer(t, "a")
	client := fake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "svc", Namespace: "default"},
			Spec: corev1.ServiceSpec{ClusterIP: vip, Ports: []corev1.ServicePort{{Name: "https", Port: 8443, Protocol: corev1.ProtocolTCP}}}},
		&corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: "svc", Namespace: "default"},
			Subsets: []corev1.EndpointSubset{{Addresses: []corev1.EndpointAddress{{IP: ip}}, Ports: []corev1.EndpointPort{{Name: "https", Port: port}}}}},
	)
	p, err := New(Config{Client: client, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !p.Serving("default", "svc") {
		if time.Now().After(deadline) {
			t.Fatal("service not served")
		}
		select {
		case <-p.Changed():
		case <-time.After(time.Second):
		}
	}
	addr, ok := p.Addr("default", "svc")
	if !ok || addr != net.JoinHostPort(vip, "8443") {
		t.Fatalf("addr %q %v", addr, ok)
	}
	// Several concurrent connections, bytes both ways.
	errc := make(chan error, 5)
	for i := range 5 {
		go func() {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			msg := "hello-" + strconv.Itoa(i)
			if _, err := c.Write([]byte(msg)); err != nil {
				errc <- err
				return
			}
			got := make([]byte, len("a:")+len(msg))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != "a:"+msg {
				errc <- fmt.Errorf("got %q: %v", got, err)
				return
			}
			errc <- nil
		}()
	}
	for range 5 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	// Endpoints removed: the service is no longer served.
	if err := client.CoreV1().Endpoints("default").Delete(ctx, "svc", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for p.Serving("default", "svc") {
		if time.Now().After(deadline) {
			t.Fatal("still served without endpoints")
		}
		select {
		case <-p.Changed():
		case <-time.After(time.Second):
		}
	}
}

package tcplb

import (
	"bufio"
	"context"
	"io"
	"maps"
	"net"
	"strings"
	"testing"
	"time"
)

// echo serves one line back, prefixed with its name.
func echo(t *testing.T, name string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				c.Write([]byte(name + ":" + line))
			}()
		}
	}()
	return ln
}

func ask(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hi\n"))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return line
}

func TestRoundRobinAndFailover(t *testing.T) {
	a, b := echo(t, "a"), echo(t, "b")
	defer b.Close()
	// A backend address with nothing listening.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	lb := runLB(t, a.Addr().String(), deadAddr, b.Addr().String())
	seen := map[string]int{}
	for range 6 {
		seen[ask(t, lb.Addr().String())]++
	}
	if seen["a:hi\n"] == 0 || seen["b:hi\n"] == 0 || len(seen) != 2 {
		t.Fatalf("answers %v: want both live backends and nothing else", seen)
	}
	// Kill a: every connection now lands on b.
	a.Close()
	for range 4 {
		if got := ask(t, lb.Addr().String()); got != "b:hi\n" {
			t.Fatalf("after a died got %q", got)
		}
	}
}

func TestBadConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("empty config accepted")
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	if _, err := New(Config{Listener: ln, Backends: []string{"no-port"}}); err == nil {
		t.Fatal("backend without port accepted")
	}
}

// runLB runs a balancer over backends on a loopback port until the test ends.
func runLB(t *testing.T, backends ...string) *LB {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lb, err := New(Config{Listener: ln, Backends: backends})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- lb.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return lb
}

// hold answers its name on every connection and keeps it open until the
// client closes it.
func hold(t *testing.T, name string) net.Listener {
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
				c.Write([]byte(name + "\n"))
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln
}

func TestActive(t *testing.T) {
	a, b := hold(t, "a"), hold(t, "b")
	addr := map[string]string{"a": a.Addr().String(), "b": b.Addr().String()}
	lb := runLB(t, addr["a"], addr["b"])
	if got := lb.Active(); len(got) != 0 {
		t.Fatalf("active before any client: %v", got)
	}
	// waitActive polls until Active equals want (the LB counts a
	// connection once its backend answered and forgets it after both
	// directions ended).
	waitActive := func(want map[string]int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := lb.Active()
			if maps.Equal(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("Active() = %v, want %v", got, want)
			}
			time.Sleep(10 * time.Millisecond) // poll interval
		}
	}
	var conns []net.Conn
	want := map[string]int{}
	for range 3 {
		c, err := net.Dial("tcp", lb.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		name, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		want[addr[strings.TrimSpace(name)]]++
		waitActive(want)
	}
	if len(want) != 2 {
		t.Fatalf("three connections went to %v, want both backends", want)
	}
	for _, c := range conns {
		c.Close()
	}
	waitActive(map[string]int{})
}

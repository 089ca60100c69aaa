package tcplb

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// A backend that resets its connection (crashed, path cut) must not look
// like a clean end of stream to the client: the reset is passed on.
func TestBackendResetReachesClient(t *testing.T) {
	be, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	go func() {
		for {
			c, err := be.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 1)
				if _, err := io.ReadFull(c, buf); err != nil { // the client's go-ahead
					c.Close()
					return
				}
				_, _ = c.Write([]byte("partial"))
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}()
		}
	}()
	lb := runLB(t, be.Addr().String())
	c, err := net.Dial("tcp", lb.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read after the backend reset: %v; want ECONNRESET, not a clean EOF", err)
	}
}

package sshtunnel

import (
	"bufio"
	"io"
	"net"
)

// readBufferSize is the read buffer under the SSH transport. x/crypto/ssh
// reads through a 4 KiB bufio.Reader, so a 32 KiB data packet costs two or
// three read system calls; a large buffer below it takes several packets
// per call when they are queued (measured by BenchmarkThroughput).
const readBufferSize = 256 << 10

// bufConn buffers reads from its connection.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func newBufConn(c net.Conn) *bufConn {
	return &bufConn{Conn: c, r: bufio.NewReaderSize(c, readBufferSize)}
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// onlyReader hides a connection's WriterTo, so io.CopyBuffer uses the
// given buffer.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

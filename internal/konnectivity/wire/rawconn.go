package wire

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// Raw connections (tether extension, capability "raw-conns.v1"): instead of
// carrying a tunnelled connection's bytes in DATA packets, the agent opens
// a TLS connection of its own to the server's agent port, with the ALPN
// protocol ALPNRawConn and the same client certificate as its control
// stream, sends a RawHello naming the pending dial, and — once the server
// answers RawOK — both sides copy raw bytes. A clean close is a TLS
// close/FIN; an abnormal end is a TCP reset. Peers that do not negotiate the
// capability, or a hello the server refuses (e.g. a load balancer sent the
// connection to another replica), fall back to conn-streams or the shared
// stream.
const (
	CapRawConns = "raw-conns.v1"
	ALPNRawConn = "tether-konnectivity-raw/1"
	// RawOK and RawRefused are the server's one-byte answer to a RawHello.
	RawOK      byte = 0
	RawRefused byte = 1
)

var rawMagic = [4]byte{'T', 'K', 'R', '1'}

// Limits on RawHello strings.
const (
	maxAgentIDLen  = 253
	maxServerIDLen = 256
)

// RawHello is the first message on a raw connection.
type RawHello struct {
	Random   int64 // the DIAL_REQ's random
	ConnID   int64 // the agent's connect ID for this connection
	AgentID  string
	ServerID string // the server the control stream is connected to
}

// MarshalBinary encodes h: magic, random, connID, then two
// length-prefixed (uint16) strings.
func (h RawHello) MarshalBinary() ([]byte, error) {
	if len(h.AgentID) == 0 || len(h.AgentID) > maxAgentIDLen || len(h.ServerID) > maxServerIDLen {
		return nil, fmt.Errorf("%w: raw hello ids out of range", ErrMalformed)
	}
	b := make([]byte, 0, 4+16+4+len(h.AgentID)+len(h.ServerID))
	b = append(b, rawMagic[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(h.Random))
	b = binary.BigEndian.AppendUint64(b, uint64(h.ConnID))
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.AgentID)))
	b = append(b, h.AgentID...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.ServerID)))
	b = append(b, h.ServerID...)
	return b, nil
}

// ReadRawHello reads and validates one RawHello from r.
func ReadRawHello(r io.Reader) (RawHello, error) {
	var h RawHello
	var fixed [4 + 16 + 2]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return h, fmt.Errorf("%w: raw hello: %v", ErrMalformed, err)
	}
	if [4]byte(fixed[:4]) != rawMagic {
		return h, fmt.Errorf("%w: raw hello: bad magic", ErrMalformed)
	}
	h.Random = int64(binary.BigEndian.Uint64(fixed[4:]))
	h.ConnID = int64(binary.BigEndian.Uint64(fixed[12:]))
	readStr := func(n, max int) (string, error) {
		if n > max {
			return "", fmt.Errorf("%w: raw hello: string of %d bytes", ErrMalformed, n)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return "", fmt.Errorf("%w: raw hello: %v", ErrMalformed, err)
		}
		return string(b), nil
	}
	var err error
	if h.AgentID, err = readStr(int(binary.BigEndian.Uint16(fixed[20:])), maxAgentIDLen); err != nil {
		return h, err
	}
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return h, fmt.Errorf("%w: raw hello: %v", ErrMalformed, err)
	}
	if h.ServerID, err = readStr(int(binary.BigEndian.Uint16(l[:])), maxServerIDLen); err != nil {
		return h, err
	}
	if h.AgentID == "" || h.ConnID == 0 {
		return h, fmt.Errorf("%w: raw hello: empty agent ID or connect ID", ErrMalformed)
	}
	return h, nil
}

// CertKey identifies the verified client certificate of a TLS connection
// (SHA-256 of the leaf); "" when there is none. The server accepts a raw
// connection only from the certificate that authenticated the control stream.
func CertKey(st tls.ConnectionState) string {
	if len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return ""
	}
	sum := sha256.Sum256(st.VerifiedChains[0][0].Raw)
	return hex.EncodeToString(sum[:])
}

// ErrRawRefused is returned by an agent when the server refuses a raw connection.
var ErrRawRefused = errors.New("raw connection refused by server")

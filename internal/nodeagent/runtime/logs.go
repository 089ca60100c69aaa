package runtime

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Log lines are stored in the CRI log format kubelet reads:
// "<RFC3339Nano> <stdout|stderr> <F|P> <content>\n".
const (
	timeFormat   = time.RFC3339Nano
	maxLineBytes = 16 << 10
)

// logSink writes one container instance's output with timestamps and
// rotates it by size (one rotated file, "<file>.1", is kept).
type logSink struct {
	mu      sync.Mutex
	path    string
	f       *os.File
	size    int64
	max     int64
	changed chan struct{} // closed and replaced at every write
	closed  bool
	subs    map[*subscriber]struct{}
}

type subscriber struct {
	out, err io.Writer
	// failed is closed (under the sink's lock) at the first failed write:
	// the attached client is gone.
	failed     chan struct{}
	failedOnce bool
}

func newLogSink(path string, max int64) (*logSink, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open log: %w", err)
	}
	return &logSink{path: path, f: f, size: st.Size(), max: max, changed: make(chan struct{}), subs: map[*subscriber]struct{}{}}, nil
}

// write records one (possibly partial) line of stream.
func (s *logSink) write(stream string, line []byte, partial bool) {
	tag := "F"
	if partial {
		tag = "P"
	}
	var b bytes.Buffer
	b.WriteString(time.Now().UTC().Format(timeFormat))
	b.WriteByte(' ')
	b.WriteString(stream)
	b.WriteByte(' ')
	b.WriteString(tag)
	b.WriteByte(' ')
	b.Write(line)
	b.WriteByte('\n')
	s.mu.Lock()
	defer s.mu.Unlock()
	for sub := range s.subs {
		w := sub.out
		if stream == "stderr" && sub.err != nil {
			w = sub.err
		}
		if w != nil {
			raw := append(append([]byte{}, line...), '\n')
			if partial {
				raw = raw[:len(raw)-1]
			}
			if _, err := w.Write(raw); err != nil && sub.failed != nil && !sub.failedOnce {
				sub.failedOnce = true
				close(sub.failed)
			}
		}
	}
	if s.closed {
		return
	}
	if s.size+int64(b.Len()) > s.max && s.size > 0 {
		s.rotateLocked()
	}
	n, _ := s.f.Write(b.Bytes())
	s.size += int64(n)
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *logSink) rotateLocked() {
	_ = s.f.Close()
	_ = os.Rename(s.path, s.path+".1")
	f, err := os.OpenFile(s.path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		s.closed = true
		return
	}
	s.f, s.size = f, 0
}

func (s *logSink) subscribe(sub *subscriber) func() {
	s.mu.Lock()
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.subs, sub)
		s.mu.Unlock()
	}
}

// wait returns a channel closed at the next write.
func (s *logSink) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *logSink) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		_ = s.f.Close()
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

// pump copies a stream FIFO into sink line by line until r fails.
func pump(r io.Reader, stream string, sink func() *logSink, n *pumpCount) {
	br := bufio.NewReaderSize(countingReader{r, &n.read}, maxLineBytes)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			consumed := int64(len(line))
			partial := line[len(line)-1] != '\n'
			if !partial {
				line = line[:len(line)-1]
			}
			if s := sink(); s != nil {
				s.write(stream, line, partial && errors.Is(err, bufio.ErrBufferFull))
			}
			n.written.Add(consumed)
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

// pumpChunks is pump for a terminal: output is delivered as it is read,
// a trailing part without newline as a partial (P) line, so prompts reach
// attached clients at once. It ends when the terminal is hung up (EIO).
func pumpChunks(r io.Reader, stream string, sink func() *logSink, n *pumpCount, done chan<- struct{}) {
	defer close(done)
	buf := make([]byte, 32<<10)
	for {
		k, err := r.Read(buf)
		n.read.Add(int64(k))
		for chunk := buf[:k]; len(chunk) > 0; {
			line, partial := chunk, true
			if i := bytes.IndexByte(chunk, '\n'); i >= 0 {
				line, partial = chunk[:i], false
				chunk = chunk[i+1:]
			} else {
				chunk = nil
			}
			if s := sink(); s != nil {
				s.write(stream, line, partial)
			}
		}
		n.written.Add(int64(k))
		if err != nil {
			return
		}
	}
}

// pumpCount counts the bytes a pump took from its FIFO and the bytes it
// has handed to the sink, so that an attach can wait until a container's
// last output has been delivered (see container.drainOutput).
type pumpCount struct {
	read, written atomic.Int64
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// LogOptions select what ReadLogs returns (kubelet's containerLogs query).
type LogOptions struct {
	Follow     bool
	TailLines  *int64
	LimitBytes *int64
	SinceTime  *time.Time
	Timestamps bool
	Previous   bool
}

type logLine struct {
	ts      time.Time
	stream  string
	partial bool
	content []byte
}

func parseLogLine(b []byte) (logLine, bool) {
	b = bytes.TrimSuffix(b, []byte{'\n'})
	parts := bytes.SplitN(b, []byte{' '}, 4)
	if len(parts) != 4 {
		return logLine{}, false
	}
	ts, err := time.Parse(timeFormat, string(parts[0]))
	if err != nil {
		return logLine{}, false
	}
	return logLine{ts: ts, stream: string(parts[1]), partial: string(parts[2]) == "P", content: parts[3]}, true
}

// limitedWriter stops after n bytes.
type limitedWriter struct {
	w io.Writer
	n int64
}

var errLimit = errors.New("limit reached")

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errLimit
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
		n, err := l.w.Write(p)
		l.n -= int64(n)
		if err == nil {
			err = errLimit
		}
		return n, err
	}
	n, err := l.w.Write(p)
	l.n -= int64(n)
	return n, err
}

// readLogs writes the lines of files (oldest first) to w per opts; with
// follow it then waits on sink for more until ended is closed and the file
// is drained, or ctx ends.
func readLogs(ctx context.Context, files []string, opts LogOptions, w io.Writer, sink *logSink, ended <-chan struct{}) error {
	flusher, _ := w.(interface{ Flush() })
	flushOut := func() {
		if flusher != nil {
			flusher.Flush()
		}
	}
	if opts.LimitBytes != nil {
		w = &limitedWriter{w: w, n: *opts.LimitBytes}
	}
	emit := func(l logLine) error {
		if opts.SinceTime != nil && l.ts.Before(*opts.SinceTime) {
			return nil
		}
		var b bytes.Buffer
		if opts.Timestamps {
			b.WriteString(l.ts.Format(timeFormat))
			b.WriteByte(' ')
		}
		b.Write(l.content)
		if !l.partial {
			b.WriteByte('\n')
		}
		_, err := w.Write(b.Bytes())
		return err
	}
	var lines []logLine
	for _, f := range files[:max(0, len(files)-1)] {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, raw := range bytes.SplitAfter(data, []byte{'\n'}) {
			if l, ok := parseLogLine(raw); ok {
				lines = append(lines, l)
			}
		}
	}
	if len(files) == 0 {
		return nil
	}
	lastPath := files[len(files)-1]
	last, err := os.Open(lastPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("open log: %w", err)
	}
	defer func() { last.Close() }()
	br := bufio.NewReader(last)
	// reopen follows a rotation: the rest of the old file is read first.
	reopen := func() {
		st, err1 := last.Stat()
		cur, err2 := os.Stat(lastPath)
		if err1 != nil || err2 != nil || os.SameFile(st, cur) {
			return
		}
		f, err := os.Open(lastPath)
		if err != nil {
			return
		}
		last.Close()
		last, br = f, bufio.NewReader(f)
	}
	var pending []byte
	readAvailable := func() {
		for {
			chunk, err := br.ReadBytes('\n')
			pending = append(pending, chunk...)
			if err != nil {
				return
			}
			if l, ok := parseLogLine(pending); ok {
				lines = append(lines, l)
			}
			pending = nil
		}
	}
	var changed <-chan struct{}
	if sink != nil {
		changed = sink.wait()
	}
	readAvailable()
	if opts.TailLines != nil && int64(len(lines)) > *opts.TailLines {
		lines = lines[int64(len(lines))-*opts.TailLines:]
	}
	flush := func() error {
		for _, l := range lines {
			if err := emit(l); err != nil {
				return err
			}
		}
		lines = lines[:0]
		return nil
	}
	if err := flush(); err != nil {
		return ignoreLimit(err)
	}
	if !opts.Follow || sink == nil {
		return nil
	}
	flushOut()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ended:
			readAvailable()
			return ignoreLimit(flush())
		case <-changed:
		}
		changed = sink.wait()
		readAvailable()
		if len(pending) == 0 {
			reopen()
			readAvailable()
		}
		if err := flush(); err != nil {
			return ignoreLimit(err)
		}
		flushOut()
	}
}

func ignoreLimit(err error) error {
	if errors.Is(err, errLimit) {
		return nil
	}
	return err
}

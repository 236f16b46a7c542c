package pptppeer

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Option adjusts a Client (Dial) or a Server (StartServer). Each option
// says which side it is for; the other side ignores it.
type Option func(*options)

type options struct {
	splitParts int
	splitPause time.Duration
	sendWEN    bool
	coalesce   bool
	localPort  uint16
}

func buildOptions(opts []Option) options {
	o := options{splitParts: 1}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// DefaultFirstCallID is the server's first Call ID; later calls count up.
const DefaultFirstCallID = 0x5000

// SplitWrites (client and server) sends every control message in parts
// writes of about equal size, pause apart, each pushed out on its own, so
// that a router sees messages cut across TCP segments.
func SplitWrites(parts int, pause time.Duration) Option {
	return func(o *options) {
		o.splitParts = max(parts, 1)
		o.splitPause = pause
	}
}

// SendWANErrorNotify (server) makes the server follow every OCRP and its
// Set-Link-Info with a WAN-Error-Notify for the call.
func SendWANErrorNotify() Option { return func(o *options) { o.sendWEN = true } }

// CoalesceCallReply (server) sends the OCRP and the messages that follow it
// (Set-Link-Info, WAN-Error-Notify) in one write, so that they share a
// segment.
func CoalesceCallReply() Option { return func(o *options) { o.coalesce = true } }

// LocalPort (client) fixes the TCP source port of the control connection.
func LocalPort(port uint16) Option { return func(o *options) { o.localPort = port } }

// ctrlConn is one end of a control connection: it writes messages as told
// and reads every incoming message into an ordered record, from which
// waiters take the ones they are looking for.
type ctrlConn struct {
	c       *net.TCPConn
	opts    options
	timeout time.Duration // bounds pushing a write out
	handle  func(Message) // called by the reader for every message, in order

	wmu sync.Mutex // one writer at a time: a message's parts stay together

	mu       sync.Mutex
	received []Message
	taken    []bool
	changed  chan struct{} // closed and replaced when received or readErr changes
	readErr  error         // why the reader stopped (io.EOF: peer closed)
	done     chan struct{} // closed when the reader has stopped
}

func newCtrlConn(c *net.TCPConn, opts options, timeout time.Duration, handle func(Message)) (*ctrlConn, error) {
	// One segment per write needs Nagle off; Go sets it by default, but
	// the tests depend on it, so it is not left to a default.
	if err := c.SetNoDelay(true); err != nil {
		return nil, fmt.Errorf("pptppeer: TCP_NODELAY: %w", err)
	}
	return &ctrlConn{c: c, opts: opts, timeout: timeout, handle: handle, changed: make(chan struct{}), done: make(chan struct{})}, nil
}

// start runs the reader; the caller must have set handle's dependencies.
func (cc *ctrlConn) start(wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(cc.done)
		for {
			m, err := ReadMessage(cc.c)
			if err != nil {
				cc.mu.Lock()
				cc.readErr = err
				cc.notifyLocked()
				cc.mu.Unlock()
				return
			}
			cc.mu.Lock()
			cc.received = append(cc.received, m)
			cc.taken = append(cc.taken, false)
			cc.notifyLocked()
			cc.mu.Unlock()
			if cc.handle != nil {
				cc.handle(m)
			}
		}
	}()
}

func (cc *ctrlConn) notifyLocked() {
	close(cc.changed)
	cc.changed = make(chan struct{})
}

// Received returns every message read so far, in order.
func (cc *ctrlConn) Received() []Message {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return append([]Message(nil), cc.received...)
}

// wait returns the first message not yet taken by another wait that
// matches, and marks it taken. It fails at the timeout or when the
// connection has ended without one.
func (cc *ctrlConn) wait(what string, match func(Message) bool, timeout time.Duration) (Message, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		cc.mu.Lock()
		for i, m := range cc.received {
			if !cc.taken[i] && match(m) {
				cc.taken[i] = true
				cc.mu.Unlock()
				return m, nil
			}
		}
		readErr, changed := cc.readErr, cc.changed
		cc.mu.Unlock()
		if readErr != nil {
			return Message{}, fmt.Errorf("pptppeer: control connection %s ended (%v) before %s; received: %s", cc.describe(), readErr, what, cc.receivedText())
		}
		select {
		case <-changed:
		case <-timer.C:
			return Message{}, fmt.Errorf("pptppeer: no %s on %s within %v; received: %s", what, cc.describe(), timeout, cc.receivedText())
		}
	}
}

func (cc *ctrlConn) describe() string {
	return fmt.Sprintf("%s->%s", cc.c.LocalAddr(), cc.c.RemoteAddr())
}

func (cc *ctrlConn) receivedText() string {
	ms := cc.Received()
	if len(ms) == 0 {
		return "nothing"
	}
	parts := make([]string, len(ms))
	for i, m := range ms {
		parts[i] = m.String()
	}
	return strings.Join(parts, " | ")
}

// send writes the messages with one write (several messages then share a
// segment), or, with SplitWrites, each message in parts. Each write is
// pushed out before the next one starts.
func (cc *ctrlConn) send(msgs ...Message) error {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	if cc.opts.splitParts > 1 {
		for _, m := range msgs {
			if err := cc.writeSplitLocked(m.Raw, cc.opts.splitParts, cc.opts.splitPause); err != nil {
				return err
			}
		}
		return nil
	}
	var b []byte
	for _, m := range msgs {
		b = append(b, m.Raw...)
	}
	return cc.writeLocked(b)
}

// sendEach writes every message with its own write (or split, with
// SplitWrites), so that each starts a segment.
func (cc *ctrlConn) sendEach(msgs ...Message) error {
	for _, m := range msgs {
		if err := cc.send(m); err != nil {
			return err
		}
	}
	return nil
}

// sendSplit writes one message in parts writes, pause apart.
func (cc *ctrlConn) sendSplit(m Message, parts int, pause time.Duration) error {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	return cc.writeSplitLocked(m.Raw, parts, pause)
}

func (cc *ctrlConn) writeSplitLocked(b []byte, parts int, pause time.Duration) error {
	parts = min(max(parts, 1), len(b))
	for i := range parts {
		if i > 0 && pause > 0 {
			time.Sleep(pause)
		}
		if err := cc.writeLocked(b[i*len(b)/parts : (i+1)*len(b)/parts]); err != nil {
			return err
		}
	}
	return nil
}

// writeLocked writes b and waits until the kernel has sent all of it. With
// Nagle off a write normally leaves as its own segment, but Linux's TCP
// autocorking may hold a small write back while an earlier one is still
// queued and then send both together; waiting until nothing is left unsent
// makes "one write, one segment" hold.
func (cc *ctrlConn) writeLocked(b []byte) error {
	if err := cc.c.SetWriteDeadline(time.Now().Add(cc.timeout)); err != nil {
		return err
	}
	if _, err := cc.c.Write(b); err != nil {
		return fmt.Errorf("pptppeer: write on %s: %w", cc.describe(), err)
	}
	return cc.waitSent()
}

func (cc *ctrlConn) waitSent() error {
	raw, err := cc.c.SyscallConn()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(cc.timeout)
	for {
		var unsent int
		var ierr error
		if err := raw.Control(func(fd uintptr) {
			unsent, ierr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQNSD)
		}); err != nil {
			return err
		}
		if ierr != nil {
			return fmt.Errorf("pptppeer: SIOCOUTQNSD on %s: %w", cc.describe(), ierr)
		}
		if unsent == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pptppeer: %d bytes still unsent on %s after %v", unsent, cc.describe(), cc.timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// close closes the connection and waits for the reader.
func (cc *ctrlConn) close() error {
	err := cc.c.Close()
	<-cc.done
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// ended reports whether the reader has stopped, and why.
func (cc *ctrlConn) ended() (bool, error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.readErr != nil, cc.readErr
}

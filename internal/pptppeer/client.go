package pptppeer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// Client is a scripted PNS: one control connection to a server, its calls,
// and a raw GRE socket they share. Every method that waits gives up after
// the timeout given to Dial, with an error saying what was received.
type Client struct {
	ns      *lab.NS
	local   netip.Addr
	server  netip.Addr
	timeout time.Duration
	cc      *ctrlConn
	gre     *GREConn
	wg      sync.WaitGroup

	mu      sync.Mutex
	calls   map[uint16]*Call
	strays  []GREPacket
	greErrs []error
	echoID  uint32
	serial  uint16
	closed  bool
}

// Call is one call of a Client.
type Call struct {
	c        *Client
	ID       uint16 // the client's own Call ID
	PeerID   uint16 // the server's Call ID, as it reaches the client
	Incoming bool   // placed by the server (ICRQ)

	mu      sync.Mutex
	box     []GREPacket // delivered, not yet taken by ReceiveGRE
	got     []GREPacket // every packet delivered
	arrived chan struct{}
	seq     uint32 // last sequence number sent
	rcvSeq  uint32 // last sequence number received
	unacked bool   // rcvSeq not yet acknowledged
	cdn     Message
}

// Dial connects from local (in ns) to server:1723 and starts the control
// connection (SCCRQ, SCCRP with result 1). Options: SplitWrites, LocalPort.
func Dial(ns *lab.NS, local, server netip.Addr, timeout time.Duration, opts ...Option) (*Client, error) {
	o := buildOptions(opts)
	gre, err := ListenGRE(ns, local)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	laddr := &net.TCPAddr{IP: net.IP(local.AsSlice()), Port: int(o.localPort)}
	conn, err := ns.DialFrom(ctx, laddr, "tcp4", netip.AddrPortFrom(server, Port).String())
	if err != nil {
		gre.Close()
		return nil, fmt.Errorf("pptppeer: connect %s -> %s:%d in %s: %w", local, server, Port, ns.Name, err)
	}
	c := &Client{ns: ns, local: local, server: server, timeout: timeout, gre: gre, calls: map[uint16]*Call{}}
	cc, err := newCtrlConn(conn.(*net.TCPConn), o, timeout, c.handle)
	if err != nil {
		conn.Close()
		gre.Close()
		return nil, err
	}
	c.cc = cc
	cc.start(&c.wg)
	c.wg.Add(1)
	go c.receiveGRE()

	if err := c.cc.send(NewSCCRQ()); err != nil {
		c.Abort()
		return nil, err
	}
	m, err := c.WaitMessage(TypeSCCRP)
	if err != nil {
		c.Abort()
		return nil, err
	}
	if r, _ := m.Field("result"); r != uint32(ResultOK) {
		c.Abort()
		return nil, fmt.Errorf("pptppeer: SCCRP result %d, want %d: %s", r, ResultOK, m)
	}
	return c, nil
}

// handle answers what a PNS must answer unasked, in the reader goroutine.
func (c *Client) handle(m Message) {
	if m.Type == TypeEchoRQ {
		ident, _ := m.Field("ident")
		_ = c.cc.send(NewEchoReply(ident, ResultOK))
	}
}

// LocalAddr is the control connection's local address and port.
func (c *Client) LocalAddr() netip.AddrPort { return c.cc.c.LocalAddr().(*net.TCPAddr).AddrPort() }

// Received returns every control message received, in order.
func (c *Client) Received() []Message { return c.cc.Received() }

// Send writes the messages in one write, so that several messages share a
// segment (with SplitWrites, each message is split instead).
func (c *Client) Send(msgs ...Message) error { return c.cc.send(msgs...) }

// SendSplit writes one message in parts writes, pause apart, each pushed
// out on its own.
func (c *Client) SendSplit(m Message, parts int, pause time.Duration) error {
	return c.cc.sendSplit(m, parts, pause)
}

// WaitMessage waits for the next received message of type t that no other
// wait has taken.
func (c *Client) WaitMessage(t uint16) (Message, error) {
	return c.cc.wait(TypeName(t), func(m Message) bool { return m.Type == t }, c.timeout)
}

// WaitFor waits for the first received message, not yet taken by another
// wait, that match accepts; what names it in the error.
func (c *Client) WaitFor(what string, match func(Message) bool) (Message, error) {
	return c.cc.wait(what, match, c.timeout)
}

// Echo sends an Echo-Request and waits for the Echo-Reply with its
// identifier.
func (c *Client) Echo() error {
	c.mu.Lock()
	c.echoID++
	id := c.echoID
	c.mu.Unlock()
	if err := c.cc.send(NewEchoRequest(id)); err != nil {
		return err
	}
	m, err := c.WaitFor(fmt.Sprintf("Echo-Reply %d", id), func(m Message) bool {
		ident, _ := m.Field("ident")
		return m.Type == TypeEchoRP && ident == id
	})
	if err != nil {
		return err
	}
	if r, _ := m.Field("result"); r != uint32(ResultOK) {
		return fmt.Errorf("pptppeer: Echo-Reply result %d, want %d: %s", r, ResultOK, m)
	}
	return nil
}

func (c *Client) register(id uint16, incoming bool) (*Call, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, dup := c.calls[id]; dup {
		return nil, fmt.Errorf("pptppeer: the client already has a call %#04x", id)
	}
	call := &Call{c: c, ID: id, Incoming: incoming, arrived: make(chan struct{}, 1)}
	c.calls[id] = call
	return call, nil
}

func (c *Client) unregister(id uint16) {
	c.mu.Lock()
	delete(c.calls, id)
	c.mu.Unlock()
}

// Call places an outgoing call: OCRQ with Call ID callID, then the OCRP
// whose Peer's Call ID is callID (result 1). The call's PeerID is the OCRP's
// Call ID.
func (c *Client) Call(callID uint16) (*Call, error) {
	// Registered before the OCRQ goes out, so GRE that overtakes the OCRP
	// is not counted as stray.
	call, err := c.register(callID, false)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.serial++
	serial := c.serial
	c.mu.Unlock()
	if err := c.cc.send(NewOCRQ(callID, serial)); err != nil {
		c.unregister(callID)
		return nil, err
	}
	m, err := c.WaitFor(fmt.Sprintf("OCRP for call %#04x", callID), func(m Message) bool {
		peer, ok := m.PeerCallID()
		return m.Type == TypeOCRP && ok && peer == callID
	})
	if err != nil {
		c.unregister(callID)
		return nil, err
	}
	if r, _ := m.Field("result"); r != uint32(ResultOK) {
		c.unregister(callID)
		return nil, fmt.Errorf("pptppeer: OCRP result %d, want %d: %s", r, ResultOK, m)
	}
	call.PeerID, _ = m.CallID()
	return call, nil
}

// AcceptIncoming accepts the next incoming call: it waits for an ICRQ,
// answers with an ICRP (Call ID callID, Peer's Call ID the ICRQ's Call ID)
// and waits for the ICCN naming callID.
func (c *Client) AcceptIncoming(callID uint16) (*Call, error) {
	icrq, err := c.WaitMessage(TypeICRQ)
	if err != nil {
		return nil, err
	}
	call, err := c.register(callID, true)
	if err != nil {
		return nil, err
	}
	call.PeerID, _ = icrq.CallID()
	if err := c.cc.send(NewICRP(callID, call.PeerID, ResultOK)); err != nil {
		c.unregister(callID)
		return nil, err
	}
	if _, err := c.WaitFor(fmt.Sprintf("ICCN for call %#04x", callID), func(m Message) bool {
		peer, ok := m.PeerCallID()
		return m.Type == TypeICCN && ok && peer == callID
	}); err != nil {
		c.unregister(callID)
		return nil, err
	}
	return call, nil
}

// receiveGRE hands every GRE packet to the call whose own Call ID is its
// key; others are strays.
func (c *Client) receiveGRE() {
	defer c.wg.Done()
	for {
		p, err := c.gre.Receive(time.Time{})
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			c.mu.Lock()
			c.greErrs = append(c.greErrs, err)
			c.mu.Unlock()
			if errors.Is(err, ErrMalformedGRE) {
				continue
			}
			return // the socket is broken; GREErrors says why
		}
		c.mu.Lock()
		call := c.calls[p.CallID]
		if call == nil {
			c.strays = append(c.strays, p)
		}
		c.mu.Unlock()
		if call != nil {
			call.deliver(p)
		}
	}
}

// Strays returns the well-formed GRE packets whose key was no current
// call's Call ID. Raw sockets see every GRE packet to their address, so
// another client on the same address shows up here too.
func (c *Client) Strays() []GREPacket {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]GREPacket(nil), c.strays...)
}

// GREErrors returns the malformed GRE packets received, as errors.
func (c *Client) GREErrors() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.greErrs...)
}

// Close ends the control connection properly (StopCCRQ, StopCCRP), then
// closes everything. Resources are released even when the exchange fails.
func (c *Client) Close() error {
	var err error
	if serr := c.cc.send(NewStopCCRQ(StopReasonNone)); serr != nil {
		err = serr
	} else if m, werr := c.WaitMessage(TypeStopCCRP); werr != nil {
		err = werr
	} else if r, _ := m.Field("result"); r != uint32(ResultOK) {
		err = fmt.Errorf("pptppeer: StopCCRP result %d, want %d: %s", r, ResultOK, m)
	}
	return errors.Join(err, c.Abort())
}

// Abort closes the connection and the GRE socket without any message.
func (c *Client) Abort() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	err := errors.Join(c.cc.close(), c.gre.Close())
	c.wg.Wait()
	return err
}

func (call *Call) deliver(p GREPacket) {
	call.mu.Lock()
	call.box = append(call.box, p)
	call.got = append(call.got, p)
	if p.HasSeq {
		call.rcvSeq, call.unacked = p.Seq, true
	}
	call.mu.Unlock()
	select {
	case call.arrived <- struct{}{}:
	default:
	}
}

// SendGRE sends payload to the server on this call: keyed with the
// server's Call ID, the next sequence number, and an acknowledgment of the
// last sequence number received if not yet acknowledged (a received
// sequence number 0 cannot be, as ack 0 means none).
func (call *Call) SendGRE(payload []byte) error {
	call.mu.Lock()
	call.seq++
	seq := call.seq
	var ack uint32
	if call.unacked {
		ack, call.unacked = call.rcvSeq, false
	}
	call.mu.Unlock()
	return call.c.gre.Send(call.c.server, call.PeerID, seq, ack, payload)
}

// ReceiveGRE returns the next GRE packet of this call, waiting until
// deadline (zero: the client's timeout from now).
func (call *Call) ReceiveGRE(deadline time.Time) (GREPacket, error) {
	if deadline.IsZero() {
		deadline = time.Now().Add(call.c.timeout)
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		call.mu.Lock()
		if len(call.box) > 0 {
			p := call.box[0]
			call.box = call.box[1:]
			call.mu.Unlock()
			return p, nil
		}
		call.mu.Unlock()
		select {
		case <-call.arrived:
		case <-timer.C:
			return GREPacket{}, fmt.Errorf("pptppeer: no GRE for call %#04x (peer %#04x) by %s; strays so far: %d", call.ID, call.PeerID, deadline.Format("15:04:05.000"), len(call.c.Strays()))
		}
	}
}

// GREReceived returns every GRE packet delivered to this call, in order.
func (call *Call) GREReceived() []GREPacket {
	call.mu.Lock()
	defer call.mu.Unlock()
	return append([]GREPacket(nil), call.got...)
}

// Clear ends the call: CCRQ with the client's Call ID, then the CDN. RFC
// 2637 puts the server's Call ID in the CDN, but the kernel's PPTP NAT
// rewrites it to the client's, so a CDN with either is taken; CDN tells
// which arrived. Later GRE on the call's key counts as stray.
func (call *Call) Clear() error {
	if err := call.c.cc.send(NewCCRQ(call.ID)); err != nil {
		return err
	}
	m, err := call.c.WaitFor(fmt.Sprintf("CDN for call %#04x (server call %#04x)", call.ID, call.PeerID), func(m Message) bool {
		id, ok := m.CallID()
		return m.Type == TypeCDN && ok && (id == call.PeerID || id == call.ID)
	})
	if err != nil {
		return err
	}
	call.mu.Lock()
	call.cdn = m
	call.mu.Unlock()
	call.c.unregister(call.ID)
	return nil
}

// CDN returns the Call-Disconnect-Notify that ended the call (zero before
// Clear).
func (call *Call) CDN() Message {
	call.mu.Lock()
	defer call.mu.Unlock()
	return call.cdn
}

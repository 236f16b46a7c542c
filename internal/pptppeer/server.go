package pptppeer

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// EchoPrefix starts the payload of every GRE packet the server sends back.
const EchoPrefix = "echo:"

// serverWriteTimeout bounds pushing one of the server's writes out.
const serverWriteTimeout = 5 * time.Second

// Server is a scripted PAC: it accepts control connections on port 1723 of
// one address, answers them as a PPTP server would, and echoes the GRE of
// its calls. It records everything it receives.
//
// Answers: SCCRQ→SCCRP, Echo-Request→Echo-Reply, OCRQ→OCRP followed by a
// Set-Link-Info and (with SendWANErrorNotify) a WAN-Error-Notify carrying
// the client's Call ID, CCRQ→CDN carrying the server's own Call ID (RFC
// 2637 §2.13), StopCCRQ→StopCCRP and then the connection is closed.
// Set-Link-Info is a PNS message in RFC 2637; the server sends one anyway
// because NATs, the kernel's PPTP helper among them, translate it in this
// direction too, and a router must get it right.
type Server struct {
	ns   *lab.NS
	addr netip.Addr
	opts options
	ln   *net.TCPListener
	gre  *GREConn
	wg   sync.WaitGroup

	mu      sync.Mutex
	conns   []*serverConn
	nextID  uint16
	serial  uint16
	greRecv []GREPacket
	greSent []GREPacket
	errs    []error
	closed  bool
}

// ServerCall is one call as the server knows it.
type ServerCall struct {
	ID       uint16 // the server's own Call ID
	PeerID   uint16 // the client's Call ID, as it reaches the server
	Incoming bool   // placed by the server (ICRQ), not requested by the client (OCRQ)
	Cleared  bool   // ended by a CCRQ
}

// ServerConn is a snapshot of one control connection the server accepted.
type ServerConn struct {
	Remote   netip.AddrPort
	Received []Message // every message received, in order
	Calls    []ServerCall
	Ended    bool // the connection is closed
}

type serverConn struct {
	s      *Server
	cc     *ctrlConn
	remote netip.AddrPort
	calls  []*serverCall // guarded by s.mu
}

type serverCall struct {
	ServerCall
	seq uint32 // last GRE sequence number sent
}

// StartServer starts a server in ns listening on addr:1723, with a raw GRE
// socket on addr. Options: SendWANErrorNotify, CoalesceCallReply,
// FirstCallID, SplitWrites.
func StartServer(ns *lab.NS, addr netip.Addr, opts ...Option) (*Server, error) {
	o := buildOptions(opts)
	ln, err := ns.Listen("tcp4", netip.AddrPortFrom(addr, Port).String())
	if err != nil {
		return nil, fmt.Errorf("pptppeer: listen on %s:%d in %s: %w", addr, Port, ns.Name, err)
	}
	gre, err := ListenGRE(ns, addr)
	if err != nil {
		ln.Close()
		return nil, err
	}
	s := &Server{ns: ns, addr: addr, opts: o, ln: ln.(*net.TCPListener), gre: gre, nextID: DefaultFirstCallID}
	s.wg.Add(2)
	go s.accept()
	go s.serveGRE()
	return s, nil
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptTCP()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.addErr(fmt.Errorf("accept: %w", err))
			}
			return
		}
		sc := &serverConn{s: s, remote: c.RemoteAddr().(*net.TCPAddr).AddrPort()}
		cc, err := newCtrlConn(c, s.opts, serverWriteTimeout, sc.handle)
		if err != nil {
			c.Close()
			s.addErr(err)
			continue
		}
		sc.cc = cc
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns = append(s.conns, sc)
		cc.start(&s.wg)
		s.mu.Unlock()
	}
}

func (s *Server) addErr(err error) {
	s.mu.Lock()
	s.errs = append(s.errs, err)
	s.mu.Unlock()
}

// allocLocked returns the next Call ID; 0 is skipped, as it cannot be told
// from "none" in several places.
func (s *Server) allocLocked() uint16 {
	id := s.nextID
	s.nextID++
	if s.nextID == 0 {
		s.nextID = 1
	}
	return id
}

// handle answers one message of the connection, in the reader goroutine.
func (sc *serverConn) handle(m Message) {
	s := sc.s
	var err error
	switch m.Type {
	case TypeSCCRQ:
		err = sc.cc.send(NewSCCRP(ResultOK))
	case TypeEchoRQ:
		ident, _ := m.Field("ident")
		err = sc.cc.send(NewEchoReply(ident, ResultOK))
	case TypeOCRQ:
		peer, _ := m.CallID()
		s.mu.Lock()
		call := &serverCall{ServerCall: ServerCall{ID: s.allocLocked(), PeerID: peer}}
		sc.calls = append(sc.calls, call)
		s.mu.Unlock()
		msgs := []Message{NewOCRP(call.ID, peer, ResultOK), NewSLI(peer)}
		if s.opts.sendWEN {
			msgs = append(msgs, NewWEN(peer))
		}
		if s.opts.coalesce {
			err = sc.cc.send(msgs...)
		} else {
			err = sc.cc.sendEach(msgs...)
		}
	case TypeCCRQ:
		peer, _ := m.CallID()
		s.mu.Lock()
		var call *serverCall
		for _, c := range sc.calls {
			if !c.Cleared && c.PeerID == peer {
				call = c
				break
			}
		}
		if call != nil {
			call.Cleared = true
		}
		s.mu.Unlock()
		if call == nil {
			// No CDN: the client's wait for it then fails and says so,
			// and Errors names the Call ID that arrived.
			err = fmt.Errorf("CCRQ from %s for Call ID %#04x, which is no active call of that connection", sc.remote, peer)
			break
		}
		err = sc.cc.send(NewCDN(call.ID, ResultCDNRequest))
	case TypeStopCCRQ:
		err = sc.cc.send(NewStopCCRP(ResultOK))
		// The StopCCRP is out (send waits for that); the connection ends
		// here, as RFC 2637 has the receiver of a StopCCRQ close it.
		sc.cc.c.Close()
	}
	if err != nil {
		s.addErr(err)
	}
}

// PlaceIncomingCall places an incoming call to the client of connection
// conn (an index into Conns): it sends an ICRQ with a new Call ID of its
// own, waits up to timeout for the ICRP that names that ID as its Peer's
// Call ID, and confirms with an ICCN carrying the client's Call ID.
func (s *Server) PlaceIncomingCall(conn int, timeout time.Duration) (ServerCall, error) {
	s.mu.Lock()
	if conn < 0 || conn >= len(s.conns) {
		n := len(s.conns)
		s.mu.Unlock()
		return ServerCall{}, fmt.Errorf("pptppeer: no control connection %d (the server has %d)", conn, n)
	}
	sc := s.conns[conn]
	call := &serverCall{ServerCall: ServerCall{ID: s.allocLocked(), Incoming: true}}
	s.serial++
	serial := s.serial
	s.mu.Unlock()

	if err := sc.cc.send(NewICRQ(call.ID, serial)); err != nil {
		return ServerCall{}, err
	}
	icrp, err := sc.cc.wait(fmt.Sprintf("ICRP naming server call %#04x", call.ID), func(m Message) bool {
		peer, ok := m.PeerCallID()
		return m.Type == TypeICRP && ok && peer == call.ID
	}, timeout)
	if err != nil {
		return ServerCall{}, err
	}
	peer, _ := icrp.CallID()
	s.mu.Lock()
	call.PeerID = peer
	sc.calls = append(sc.calls, call)
	out := call.ServerCall
	s.mu.Unlock()
	if err := sc.cc.send(NewICCN(peer)); err != nil {
		return ServerCall{}, err
	}
	return out, nil
}

// serveGRE echoes every GRE packet with a payload whose key is one of the
// server's active calls: back to the packet's source, keyed with the
// call's client Call ID, payload EchoPrefix + the original, the call's own
// sequence numbers, acknowledging the received sequence number.
func (s *Server) serveGRE() {
	defer s.wg.Done()
	for {
		p, err := s.gre.Receive(time.Time{})
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			s.addErr(fmt.Errorf("GRE: %w", err))
			if errors.Is(err, ErrMalformedGRE) {
				continue
			}
			return // the socket is broken; Errors says why
		}
		s.mu.Lock()
		s.greRecv = append(s.greRecv, p)
		call := s.activeCallLocked(p.CallID)
		if call == nil || len(p.Payload) == 0 {
			s.mu.Unlock()
			continue
		}
		call.seq++
		reply := GREPacket{From: p.From, CallID: call.PeerID, Seq: call.seq, HasSeq: true, Payload: append([]byte(EchoPrefix), p.Payload...)}
		if p.HasSeq && p.Seq != 0 {
			reply.Ack, reply.HasAck = p.Seq, true
		}
		s.mu.Unlock()
		if err := s.gre.Send(reply.From, reply.CallID, reply.Seq, reply.Ack, reply.Payload); err != nil {
			s.addErr(err)
			continue
		}
		reply.At = time.Now()
		s.mu.Lock()
		s.greSent = append(s.greSent, reply)
		s.mu.Unlock()
	}
}

// activeCallLocked finds the uncleared call with the server's Call ID id.
func (s *Server) activeCallLocked(id uint16) *serverCall {
	for _, sc := range s.conns {
		for _, c := range sc.calls {
			if c.ID == id && !c.Cleared {
				return c
			}
		}
	}
	return nil
}

// Conns returns a snapshot of every control connection, in accept order.
func (s *Server) Conns() []ServerConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ServerConn, 0, len(s.conns))
	for _, sc := range s.conns {
		c := ServerConn{Remote: sc.remote, Received: sc.cc.Received()}
		c.Ended, _ = sc.cc.ended()
		for _, call := range sc.calls {
			c.Calls = append(c.Calls, call.ServerCall)
		}
		out = append(out, c)
	}
	return out
}

// WaitConns waits until the server has accepted n control connections.
func (s *Server) WaitConns(n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		s.mu.Lock()
		have := len(s.conns)
		s.mu.Unlock()
		if have >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pptppeer: server on %s has %d control connections after %v, want %d", s.addr, have, timeout, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// GREReceived returns every well-formed GRE packet received, in order,
// whatever its key.
func (s *Server) GREReceived() []GREPacket {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]GREPacket(nil), s.greRecv...)
}

// GRESent returns every GRE packet the server sent, in order; From is the
// destination.
func (s *Server) GRESent() []GREPacket {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]GREPacket(nil), s.greSent...)
}

// Errors returns what went wrong so far: malformed GRE, a CCRQ for an
// unknown call, failed writes.
func (s *Server) Errors() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]error(nil), s.errs...)
}

// Close stops the server: the listener, every connection, the GRE socket;
// it returns once every goroutine has ended.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	conns := append([]*serverConn(nil), s.conns...)
	s.mu.Unlock()
	err := s.ln.Close()
	if gerr := s.gre.Close(); gerr != nil {
		err = errors.Join(err, gerr)
	}
	for _, sc := range conns {
		if cerr := sc.cc.close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}
	s.wg.Wait()
	return err
}

// SendGRE sends payload to the client of the server's call id, unprompted:
// the server speaks first, as after a restart of a router between them.
func (s *Server) SendGRE(id uint16, payload []byte) error {
	s.mu.Lock()
	call := s.activeCallLocked(id)
	var to netip.Addr
	for _, sc := range s.conns {
		for _, c := range sc.calls {
			if c == call {
				to = sc.remote.Addr()
			}
		}
	}
	if call == nil || !to.IsValid() {
		s.mu.Unlock()
		return fmt.Errorf("no active call %d", id)
	}
	call.seq++
	p := GREPacket{From: to, CallID: call.PeerID, Seq: call.seq, HasSeq: true, Payload: payload}
	s.mu.Unlock()
	if err := s.gre.Send(p.From, p.CallID, p.Seq, 0, p.Payload); err != nil {
		return err
	}
	p.At = time.Now()
	s.mu.Lock()
	s.greSent = append(s.greSent, p)
	s.mu.Unlock()
	return nil
}

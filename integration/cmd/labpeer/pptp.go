package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/pptppeer"
)

const (
	// pptpTimeout bounds every wait of the PPTP client: one answer, one
	// echo.
	pptpTimeout = 5 * time.Second
	// greCount is how many GRE packets the client sends on its call, each
	// echoed by the server.
	greCount = 3
	// greTries is how often the client sends one GRE payload before giving
	// up on its echo (GRE is a datagram service).
	greTries = 3
	// firstServerCallID is the server's first own Call ID.
	firstServerCallID = 0x5000
	// holdTimeout bounds how long pptp-hold waits for the server's GRE.
	holdTimeout = 2 * time.Minute
	// serverFirstPrefix starts the payload of the GRE packets the server
	// sends unasked, on SIGUSR1.
	serverFirstPrefix = "labpeer server gre "
)

// parseCallID reads a Call ID in decimal or 0x hex; 0 means "none" in
// several PPTP fields and is refused.
func parseCallID(s string) (uint16, error) {
	v, err := strconv.ParseUint(s, 0, 16)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("call ID %q: want a number in 1..65535 (decimal, or hex with 0x)", s)
	}
	return uint16(v), nil
}

// ctrl is one PPTP control connection: messages are read by a goroutine
// and handed over through msgs, which is closed when the stream ends.
type ctrl struct {
	c    *net.TCPConn
	msgs chan pptppeer.Message
	err  error // why the stream ended; read only after msgs is closed
}

func newCtrl(c *net.TCPConn) *ctrl {
	cc := &ctrl{c: c, msgs: make(chan pptppeer.Message, 16)}
	go func() {
		defer close(cc.msgs)
		for {
			m, err := pptppeer.ReadMessage(c)
			if err != nil {
				cc.err = err
				return
			}
			cc.msgs <- m
		}
	}()
	return cc
}

func (cc *ctrl) send(m pptppeer.Message) error {
	if err := cc.c.SetWriteDeadline(time.Now().Add(pptpTimeout)); err != nil {
		return err
	}
	if _, err := cc.c.Write(m.Raw); err != nil {
		return fmt.Errorf("sending %s: %w", m.Name(), err)
	}
	return nil
}

// wait returns the next message match accepts, answering Echo-Requests and
// skipping other messages (a server may send Set-Link-Info or
// WAN-Error-Notify at any time).
func (cc *ctrl) wait(what string, match func(pptppeer.Message) bool) (pptppeer.Message, error) {
	timer := time.NewTimer(pptpTimeout)
	defer timer.Stop()
	var skipped []string
	for {
		select {
		case m, ok := <-cc.msgs:
			if !ok {
				return pptppeer.Message{}, fmt.Errorf("control connection ended (%v) while waiting for %s; skipped %v", cc.err, what, skipped)
			}
			if m.Type == pptppeer.TypeEchoRQ {
				ident, _ := m.Field("ident")
				if err := cc.send(pptppeer.NewEchoReply(ident, pptppeer.ResultOK)); err != nil {
					return pptppeer.Message{}, err
				}
				continue
			}
			if match(m) {
				return m, nil
			}
			skipped = append(skipped, m.Summary())
		case <-timer.C:
			return pptppeer.Message{}, fmt.Errorf("no %s within %v; skipped %v", what, pptpTimeout, skipped)
		}
	}
}

// result checks a reply's result code.
func result(m pptppeer.Message) error {
	if r, _ := m.Field("result"); r != uint32(pptppeer.ResultOK) {
		return fmt.Errorf("%s result %d, want %d: %s", m.Name(), r, pptppeer.ResultOK, m.Summary())
	}
	return nil
}

// pptpClient makes one call to server:1723 as a PNS: Start-Control-
// Connection, Outgoing-Call with Call ID callID, greCount GRE packets each
// echoed by the server on the client's Call ID, Call-Clear-Request answered
// by Call-Disconnect-Notify, Stop-Control-Connection, close.
//
// With hold (pptp-hold), the call stays up after the first greCount
// packets: the client prints a line saying it waits, and sends nothing
// until a GRE packet that the server sent unasked (serverFirstPrefix)
// arrives on the call, for at most holdTimeout; then greCount more packets
// each way, and the call is cleared as above. Across a NAT restart this is
// the server speaking first on the call.
func pptpClient(server string, callID uint16, hold bool, w io.Writer) error {
	srv, err := netip.ParseAddr(server)
	if err != nil || !srv.Is4() {
		return fmt.Errorf("server %q: want an IPv4 address", server)
	}
	conn, err := net.DialTimeout("tcp4", netip.AddrPortFrom(srv, pptppeer.Port).String(), pptpTimeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	cc := newCtrl(conn.(*net.TCPConn))
	local := conn.LocalAddr().(*net.TCPAddr)
	// The raw GRE socket sees every GRE packet to the local address.
	gre, err := net.ListenIP("ip4:47", &net.IPAddr{IP: local.IP})
	if err != nil {
		return fmt.Errorf("raw GRE socket on %s: %w", local.IP, err)
	}
	defer gre.Close()

	if err := cc.send(pptppeer.NewSCCRQ()); err != nil {
		return err
	}
	m, err := cc.wait("SCCRP", func(m pptppeer.Message) bool { return m.Type == pptppeer.TypeSCCRP })
	if err != nil {
		return err
	}
	if err := result(m); err != nil {
		return err
	}
	if err := cc.send(pptppeer.NewOCRQ(callID, 1)); err != nil {
		return err
	}
	m, err = cc.wait(fmt.Sprintf("OCRP for call %#04x", callID), func(m pptppeer.Message) bool {
		peer, ok := m.PeerCallID()
		return m.Type == pptppeer.TypeOCRP && ok && peer == callID
	})
	if err != nil {
		return err
	}
	if err := result(m); err != nil {
		return err
	}
	serverID, _ := m.CallID()

	var seq, lastRcvd uint32
	// exchange sends the packets numbered from..to, each until its echo
	// arrives.
	exchange := func(from, to int) error {
		for i := from; i <= to; i++ {
			payload := fmt.Sprintf("labpeer gre %d", i)
			echo := pptppeer.EchoPrefix + payload
			var p pptppeer.GREPacket
			for try := 1; ; try++ {
				seq++
				b, err := pptppeer.MarshalGRE(serverID, seq, lastRcvd, []byte(payload))
				if err != nil {
					return err
				}
				if _, err := gre.WriteToIP(b, &net.IPAddr{IP: srv.AsSlice()}); err != nil {
					return fmt.Errorf("sending GRE to %s: %w", srv, err)
				}
				p, err = receiveGRE(gre, srv, callID, fmt.Sprintf("echo %q", echo),
					func(b []byte) bool { return string(b) == echo }, time.Now().Add(pptpTimeout/greTries))
				if err == nil {
					break
				}
				if try == greTries {
					return fmt.Errorf("GRE packet %d of call %#04x (server call %#04x): %w", i, callID, serverID, err)
				}
			}
			lastRcvd = p.Seq
		}
		return nil
	}
	if err := exchange(1, greCount); err != nil {
		return err
	}
	held := ""
	if hold {
		fmt.Fprintf(w, "pptp-hold: call %#04x to %s (server call %#04x) up, %d GRE packets each way echoed; waiting for the server's GRE\n",
			callID, srv, serverID, greCount)
		p, err := receiveGRE(gre, srv, callID, "GRE sent first by the server",
			func(b []byte) bool { return strings.HasPrefix(string(b), serverFirstPrefix) }, time.Now().Add(holdTimeout))
		if err != nil {
			return fmt.Errorf("call %#04x (server call %#04x): %w", callID, serverID, err)
		}
		lastRcvd = p.Seq
		fmt.Fprintf(w, "pptp-hold: call %#04x: the server's GRE %q received\n", callID, p.Payload)
		if err := exchange(greCount+1, 2*greCount); err != nil {
			return err
		}
		held = fmt.Sprintf(", the server's GRE received first, %d more each way echoed", greCount)
	}

	if err := cc.send(pptppeer.NewCCRQ(callID)); err != nil {
		return err
	}
	// RFC 2637 puts the server's own Call ID in the CDN; a NAT that
	// rewrites it delivers the client's instead. Either ends the call.
	if _, err := cc.wait("CDN", func(m pptppeer.Message) bool {
		id, ok := m.CallID()
		return m.Type == pptppeer.TypeCDN && ok && (id == serverID || id == callID)
	}); err != nil {
		return err
	}
	if err := cc.send(pptppeer.NewStopCCRQ(pptppeer.StopReasonNone)); err != nil {
		return err
	}
	m, err = cc.wait("StopCCRP", func(m pptppeer.Message) bool { return m.Type == pptppeer.TypeStopCCRP })
	if err != nil {
		return err
	}
	if err := result(m); err != nil {
		return err
	}
	name := "pptp-client"
	if hold {
		name = "pptp-hold"
	}
	fmt.Fprintf(w, "%s: call %#04x to %s (server call %#04x): %d GRE packets each way echoed%s, call cleared, control connection stopped\n",
		name, callID, srv, serverID, greCount, held)
	return nil
}

// receiveGRE waits until deadline for a GRE packet from server, keyed with
// callID, whose payload match accepts (what names it in the error); other
// GRE is skipped and named in the error.
func receiveGRE(gre *net.IPConn, server netip.Addr, callID uint16, what string, match func([]byte) bool, deadline time.Time) (pptppeer.GREPacket, error) {
	if err := gre.SetReadDeadline(deadline); err != nil {
		return pptppeer.GREPacket{}, err
	}
	buf := make([]byte, 65536)
	var skipped []string
	for {
		n, from, err := gre.ReadFromIP(buf)
		if err != nil {
			return pptppeer.GREPacket{}, fmt.Errorf("no %s: %w; skipped %v", what, err, skipped)
		}
		src, _ := netip.AddrFromSlice(from.IP)
		p, err := pptppeer.ParseGRE(buf[:n])
		p.From = src.Unmap()
		switch {
		case err != nil:
			skipped = append(skipped, fmt.Sprintf("from %s: %v", p.From, err))
		case p.From != server || p.CallID != callID || !match(p.Payload):
			skipped = append(skipped, p.String())
		default:
			return p, nil
		}
	}
}

// pptpSrv is a PPTP server (PAC): it answers control connections and
// echoes the GRE of their calls.
type pptpSrv struct {
	out *printer
	gre *net.IPConn

	mu     sync.Mutex
	nextID uint16
	calls  map[uint16]*srvCall // by the server's Call ID
	conns  map[*net.TCPConn]bool
	closed bool // shut down: no new connections are served
}

// srvCall is one call as the server knows it.
type srvCall struct {
	id, peer uint16 // the server's Call ID; the client's, as it arrives here
	remote   string // the control connection's client address
	greFrom  netip.Addr
	seq      uint32 // last GRE sequence number sent
	in, out  int
	first    int // GRE packets sent unasked (SIGUSR1)
	cleared  bool
}

// pptpServer serves control connections on addr:1723 and GRE on addr until
// ctx ends. On SIGUSR1 it sends one GRE packet unasked on every active call
// (sendFirst).
func pptpServer(ctx context.Context, addr string, w io.Writer) error {
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return fmt.Errorf("address %q: want an IPv4 address", addr)
	}
	l, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, pptppeer.Port)))
	if err != nil {
		return err
	}
	defer l.Close()
	gre, err := net.ListenIP("ip4:47", &net.IPAddr{IP: a.AsSlice()})
	if err != nil {
		return fmt.Errorf("raw GRE socket on %s: %w", a, err)
	}
	defer gre.Close()
	s := &pptpSrv{out: &printer{w: w}, gre: gre, nextID: firstServerCallID, calls: map[uint16]*srvCall{}, conns: map[*net.TCPConn]bool{}}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.serveGRE()
	}()
	// shutdown ends every goroutine: the listener, the GRE socket and
	// every control connection are closed.
	shutdown := func() {
		l.Close()
		gre.Close()
		s.mu.Lock()
		s.closed = true
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	}
	stop := context.AfterFunc(ctx, shutdown)
	defer stop()
	// Registered before the "listening" line: a SIGUSR1 after it never
	// takes the default action (ending the process).
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	usr1Done := make(chan struct{})
	defer close(usr1Done)
	go func() {
		for {
			select {
			case <-usr1:
				s.sendFirst()
			case <-usr1Done:
				return
			}
		}
	}()
	s.out.printf("pptp-server listening on %s:%d", a, pptppeer.Port)
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			shutdown()
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		s.mu.Lock()
		if s.closed {
			// Accepted while shutting down: nobody would close it.
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[c] = true
		s.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

// serveConn answers one control connection until the client stops it or
// it ends.
func (s *pptpSrv) serveConn(c *net.TCPConn) {
	remote := c.RemoteAddr().String()
	s.out.printf("pptp control connection from %s", remote)
	send := func(m pptppeer.Message) bool {
		if err := c.SetWriteDeadline(time.Now().Add(pptpTimeout)); err == nil {
			_, err = c.Write(m.Raw)
			if err == nil {
				return true
			}
		}
		s.out.printf("pptp %s to %s failed", m.Name(), remote)
		return false
	}
	for {
		m, err := pptppeer.ReadMessage(c)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.out.printf("pptp control connection from %s: %v", remote, err)
			}
			return
		}
		switch m.Type {
		case pptppeer.TypeSCCRQ:
			send(pptppeer.NewSCCRP(pptppeer.ResultOK))
		case pptppeer.TypeEchoRQ:
			ident, _ := m.Field("ident")
			send(pptppeer.NewEchoReply(ident, pptppeer.ResultOK))
		case pptppeer.TypeOCRQ:
			peer, _ := m.CallID()
			s.mu.Lock()
			call := &srvCall{id: s.allocLocked(), peer: peer, remote: remote}
			s.calls[call.id] = call
			s.mu.Unlock()
			s.out.printf("pptp call %#04x for client call %#04x from %s", call.id, peer, remote)
			send(pptppeer.NewOCRP(call.id, peer, pptppeer.ResultOK))
		case pptppeer.TypeCCRQ:
			peer, _ := m.CallID()
			s.mu.Lock()
			var call *srvCall
			for _, cl := range s.calls {
				if cl.remote == remote && cl.peer == peer && !cl.cleared {
					call = cl
				}
			}
			var line string
			if call != nil {
				call.cleared = true
				line = fmt.Sprintf("pptp call %#04x cleared: client call %#04x from %s, GRE from %s: %d in, %d echoed",
					call.id, call.peer, remote, call.greFrom, call.in, call.out)
				if call.first > 0 {
					line += fmt.Sprintf(", %d sent first", call.first)
				}
			}
			s.mu.Unlock()
			if call == nil {
				s.out.printf("pptp CCRQ from %s for client call %#04x, which has no active call", remote, peer)
				continue
			}
			s.out.printf("%s", line)
			send(pptppeer.NewCDN(call.id, pptppeer.ResultCDNRequest))
		case pptppeer.TypeStopCCRQ:
			send(pptppeer.NewStopCCRP(pptppeer.ResultOK))
			s.out.printf("pptp control connection from %s stopped", remote)
			return
		default:
			s.out.printf("pptp %s from %s not answered", m.Summary(), remote)
		}
	}
}

// allocLocked returns the next Call ID of the server, never 0.
func (s *pptpSrv) allocLocked() uint16 {
	id := s.nextID
	s.nextID++
	if s.nextID == 0 {
		s.nextID = 1
	}
	return id
}

// sendFirst sends one GRE packet unasked on every active call whose GRE
// has arrived (which gives the client's address): keyed with the client's
// Call ID, payload serverFirstPrefix and a count, acknowledging nothing.
// A pptp-hold client waits for it.
func (s *pptpSrv) sendFirst() {
	type packet struct {
		id uint16
		to netip.Addr
		b  []byte
	}
	var packets []packet
	s.mu.Lock()
	for _, call := range s.calls {
		if call.cleared || !call.greFrom.IsValid() {
			continue
		}
		call.seq++
		call.first++
		b, err := pptppeer.MarshalGRE(call.peer, call.seq, 0, fmt.Appendf(nil, "%s%d", serverFirstPrefix, call.first))
		if err == nil {
			packets = append(packets, packet{call.id, call.greFrom, b})
		}
	}
	s.mu.Unlock()
	if len(packets) == 0 {
		s.out.printf("pptp SIGUSR1: no active call with GRE to send on")
	}
	for _, p := range packets {
		if _, err := s.gre.WriteToIP(p.b, &net.IPAddr{IP: p.to.AsSlice()}); err != nil {
			s.out.printf("pptp call %#04x: GRE to %s sent first: %v", p.id, p.to, err)
			continue
		}
		s.out.printf("pptp call %#04x: GRE sent first to %s", p.id, p.to)
	}
}

// serveGRE echoes every GRE packet with a payload on an active call: back
// to its source, keyed with the client's Call ID, payload EchoPrefix + the
// original, acknowledging the packet's sequence number.
func (s *pptpSrv) serveGRE() {
	buf := make([]byte, 65536)
	for {
		n, from, err := s.gre.ReadFromIP(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.out.printf("pptp GRE socket: %v", err)
			}
			return
		}
		src, _ := netip.AddrFromSlice(from.IP)
		src = src.Unmap()
		p, err := pptppeer.ParseGRE(buf[:n])
		if err != nil {
			s.out.printf("pptp GRE from %s: %v", src, err)
			continue
		}
		s.mu.Lock()
		call := s.calls[p.CallID]
		if call == nil || call.cleared || len(p.Payload) == 0 {
			s.mu.Unlock()
			if len(p.Payload) > 0 {
				s.out.printf("pptp GRE from %s for call %#04x, which is not active", src, p.CallID)
			}
			continue
		}
		call.in++
		call.greFrom = src
		call.seq++
		seq, peer := call.seq, call.peer
		s.mu.Unlock()
		var ack uint32
		if p.HasSeq {
			ack = p.Seq // 0 would mean "no acknowledgment": nothing to acknowledge then
		}
		b, err := pptppeer.MarshalGRE(peer, seq, ack, append([]byte(pptppeer.EchoPrefix), p.Payload...))
		if err == nil {
			_, err = s.gre.WriteToIP(b, &net.IPAddr{IP: src.AsSlice()})
		}
		if err != nil {
			s.out.printf("pptp GRE echo to %s: %v", src, err)
			continue
		}
		s.mu.Lock()
		call.out++
		s.mu.Unlock()
	}
}

package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/vpnmasq/vpnmasq/admin"
	"github.com/vpnmasq/vpnmasq/internal/lab"
	"github.com/vpnmasq/vpnmasq/internal/pptppeer"
)

// The VPN part of the demo: what vpnmasq exists for. IKE from UDP port
// 500 of two LAN hosts to one gateway, raw ESP of three LAN hosts to one
// gateway, and two PPTP clients using the same Call ID towards one server.
// The peers are the project's own (a minimal IKE responder below, the lab's
// ESP gateway, the scripted PPTP peers), so the demo needs no IPsec or PPTP
// software.

// Addresses and identifiers of the VPN part.
var (
	demoLAN3Addr = netip.MustParseAddr("192.168.77.12")
	// demoIKEGateway is the IKE responder on the WAN host.
	demoIKEGateway = netip.AddrPortFrom(lab.WANAddr, 500)
	// demoESPGatewaySPI is the first inbound SPI the ESP gateway allocates.
	demoESPGatewaySPI = uint32(0xc0de0001)
)

// demoPPTPCallID is the Call ID both PPTP clients choose: only the
// router's masquerading of Call IDs tells their calls apart at the server.
const demoPPTPCallID = 7

// Rounds of each exchange and how long one waits for its answer.
const (
	demoVPNRounds   = 3
	demoVPNWait     = 5 * time.Second
	demoRetransmit  = 150 * time.Millisecond
	demoIKEResponse = 0x20 // IKEv2 header flag: this message is a response
	demoIKEInit     = 0x08 // IKEv2 header flag: sent by the original initiator
	demoIKESAInit   = 34   // IKEv2 exchange type IKE_SA_INIT
	demoIKEHdrLen   = 28
)

// demoVPNHost is one LAN host of the VPN part.
type demoVPNHost struct {
	name string
	ns   *lab.NS
	addr netip.Addr
}

// vpnPeers are the VPN peers still open after the checks: their sessions
// stay in the router's tables until the NAT table is printed.
type vpnPeers struct {
	closers []func() error
}

func (p *vpnPeers) add(f func() error) { p.closers = append(p.closers, f) }

// close closes the peers, newest first.
func (p *vpnPeers) close() error {
	var errs []error
	for _, f := range slices.Backward(p.closers) {
		errs = append(errs, f())
	}
	return errors.Join(errs...)
}

// vpnResult is the outcome of one VPN check.
type vpnResult struct {
	what, from, to string
	note           string // what was seen, when it worked
	err            error
}

// vpn runs the passthrough checks, prints one line each, then the
// router's VPN table. The returned peers are to be closed after the NAT
// table is printed.
func (d *demo) vpn(ctx context.Context, l *lab.Lab, lan3 *lab.NS, socket string) (*vpnPeers, []error) {
	results, peers, failures := vpnChecks(ctx, l, lan3)
	d.vpnResults = results
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VPN\tFROM\tTO\tRESULT\tNOTE")
	for _, r := range results {
		result, note := "ok", r.note
		if r.err != nil {
			result, note = "FAIL", r.err.Error()
			failures = append(failures, fmt.Errorf("%s from %s to %s: %w", r.what, r.from, r.to, r.err))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.what, r.from, r.to, result, note)
	}
	tw.Flush()
	d.printf("\n")

	if ctx.Err() == nil {
		if err := d.vpnTable(socket); err != nil {
			failures = append(failures, err)
		}
	}
	return peers, failures
}

// vpnChecks runs IKE, ESP and PPTP from the LAN hosts to the peers on the
// WAN host through whatever routes the lab, and returns one result per
// check, the peers still open, and what kept a check from starting.
func vpnChecks(ctx context.Context, l *lab.Lab, lan3 *lab.NS) ([]vpnResult, *vpnPeers, []error) {
	peers := &vpnPeers{}
	hosts := []demoVPNHost{{"lan1", l.LAN1, lab.LAN1Addr}, {"lan2", l.LAN2, lab.LAN2Addr}, {"lan3", lan3, demoLAN3Addr}}
	var results []vpnResult
	var failures []error
	setup := func(err error) bool {
		if err != nil {
			failures = append(failures, err)
			return false
		}
		return true
	}

	// IKE: both hosts from their port 500 at once.
	ike, err := startIKEResponder(l.WAN, demoIKEGateway)
	if setup(err) {
		peers.add(ike.close)
		notes, errs := parallel(hosts[:2], func(i int, h demoVPNHost) (string, error) {
			return ike.exchange(h, 0x1111111100000000*uint64(i+1)+0x0001)
		})
		for i, h := range hosts[:2] {
			results = append(results, vpnResult{"ike", fmt.Sprintf("%s %s:500", h.name, h.addr), demoIKEGateway.String(), notes[i], errs[i]})
		}
	}

	// ESP: three hosts at once, each retransmitting until answered, as a
	// tunnel keeps sending.
	if ctx.Err() == nil {
		gw, err := lab.ServeESPGateway(l.WAN, demoESPGatewaySPI)
		if setup(err) {
			peers.add(gw.Close)
			notes, errs := parallel(hosts, func(i int, h demoVPNHost) (string, error) {
				return espExchange(h, gw, uint32(i+1)*0x10000001)
			})
			for i, h := range hosts {
				results = append(results, vpnResult{"esp", fmt.Sprintf("%s %s", h.name, h.addr), lab.WANAddr.String(), notes[i], errs[i]})
			}
		}
	}

	// PPTP: two clients, the same Call ID, GRE both ways.
	if ctx.Err() == nil {
		srv, err := pptppeer.StartServer(l.WAN, lab.WANAddr)
		if setup(err) {
			peers.add(srv.Close)
			for _, h := range hosts[:2] {
				note, err := pptpExchange(h, srv, peers)
				results = append(results, vpnResult{"pptp", fmt.Sprintf("%s %s", h.name, h.addr), fmt.Sprintf("%s:%d", lab.WANAddr, pptppeer.Port), note, err})
			}
		}
	}
	return results, peers, failures
}

// parallel runs f for every host at once and returns the notes and errors
// in host order.
func parallel(hosts []demoVPNHost, f func(int, demoVPNHost) (string, error)) ([]string, []error) {
	notes := make([]string, len(hosts))
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Go(func() { notes[i], errs[i] = f(i, h) })
	}
	wg.Wait()
	return notes, errs
}

// ikeResponder answers every IKE_SA_INIT request with a response carrying
// the request's initiator SPI and a responder SPI of its own, and records
// where each initiator SPI came from. It does no cryptography: a NAT reads
// only the IKE header.
type ikeResponder struct {
	conn net.PacketConn
	done chan struct{}

	mu   sync.Mutex // guards from and rspi: the serving goroutine writes while checks read
	from map[uint64]netip.AddrPort
	rspi map[uint64]uint64
}

func startIKEResponder(ns *lab.NS, addr netip.AddrPort) (*ikeResponder, error) {
	c, err := ns.ListenPacket("udp4", addr.String())
	if err != nil {
		return nil, fmt.Errorf("IKE responder on %s: %w", addr, err)
	}
	r := &ikeResponder{conn: c, done: make(chan struct{}), from: map[uint64]netip.AddrPort{}, rspi: map[uint64]uint64{}}
	go r.serve()
	return r, nil
}

func (r *ikeResponder) serve() {
	defer close(r.done)
	buf := make([]byte, 2048)
	for {
		n, from, err := r.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		ispi, _, flags, ok := parseDemoIKE(buf[:n])
		if !ok || flags&demoIKEResponse != 0 {
			continue
		}
		r.mu.Lock()
		if _, seen := r.from[ispi]; !seen {
			r.from[ispi] = from.(*net.UDPAddr).AddrPort()
			r.rspi[ispi] = 0x5250000000000000 | uint64(len(r.rspi)+1)
		}
		rspi := r.rspi[ispi]
		r.mu.Unlock()
		_, _ = r.conn.WriteTo(demoIKEMessage(ispi, rspi, demoIKEResponse), from)
	}
}

func (r *ikeResponder) close() error {
	err := r.conn.Close()
	<-r.done
	return err
}

// demoIKEMessage is a bare IKEv2 IKE_SA_INIT header with no payloads.
func demoIKEMessage(ispi, rspi uint64, flags byte) []byte {
	b := make([]byte, demoIKEHdrLen)
	binary.BigEndian.PutUint64(b[0:8], ispi)
	binary.BigEndian.PutUint64(b[8:16], rspi)
	b[17] = 0x20 // version 2.0
	b[18] = demoIKESAInit
	b[19] = flags
	binary.BigEndian.PutUint32(b[24:28], demoIKEHdrLen)
	return b
}

func parseDemoIKE(b []byte) (ispi, rspi uint64, flags byte, ok bool) {
	if len(b) < demoIKEHdrLen || b[17] != 0x20 || b[18] != demoIKESAInit {
		return 0, 0, 0, false
	}
	return binary.BigEndian.Uint64(b[0:8]), binary.BigEndian.Uint64(b[8:16]), b[19], true
}

// exchange sends an IKE_SA_INIT request with initiator SPI ispi from the
// host's UDP port 500 until the answer comes, then checks that the
// gateway saw it from the router's WAN port 500 and that every message
// the host received carries its own SPI.
func (r *ikeResponder) exchange(h demoVPNHost, ispi uint64) (string, error) {
	c, err := h.ns.ListenPacket("udp4", netip.AddrPortFrom(h.addr, 500).String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	dst := net.UDPAddrFromAddrPort(demoIKEGateway)
	deadline := time.Now().Add(demoVPNWait)
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		if _, err := c.WriteTo(demoIKEMessage(ispi, 0, demoIKEInit), dst); err != nil {
			return "", err
		}
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, _, err := c.ReadFrom(buf)
		if isTimeout(err) {
			continue
		}
		if err != nil {
			return "", err
		}
		got, rspi, flags, ok := parseDemoIKE(buf[:n])
		switch {
		case !ok:
			return "", fmt.Errorf("received %d bytes that are no IKE_SA_INIT", n)
		case got != ispi:
			return "", fmt.Errorf("received the answer for initiator SPI %016x, its own is %016x", got, ispi)
		case flags&demoIKEResponse == 0 || rspi == 0:
			return "", fmt.Errorf("the answer for SPI %016x is no response (flags %#02x, responder SPI %016x)", ispi, flags, rspi)
		}
		r.mu.Lock()
		from := r.from[ispi]
		r.mu.Unlock()
		if from != netip.AddrPortFrom(lab.RouterWANAddr, 500) {
			return "", fmt.Errorf("the gateway saw SPI %016x from %s, not from %s:500", ispi, from, lab.RouterWANAddr)
		}
		return fmt.Sprintf("left from %s, answer found its host by SPI %016x/%016x", from, ispi, rspi), nil
	}
	return "", fmt.Errorf("no answer to initiator SPI %016x within %v", ispi, demoVPNWait)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// espExchange runs demoVPNRounds rounds of ESP on outbound SPI out from
// the host: each round's packet is resent until the gateway's answer to it
// arrives. Every packet the host receives must be the gateway's answer to
// one of its own, on the SPI the gateway chose for out.
func espExchange(h demoVPNHost, gw *lab.ESPGateway, out uint32) (string, error) {
	c, err := h.ns.ListenESP(h.addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	seq := uint32(0)
	var in uint32
	deadline := time.Now().Add(demoVPNWait)
	for round := 1; round <= demoVPNRounds; round++ {
		marker := fmt.Sprintf("esp from %s round %d", h.name, round)
		answered := false
		for !answered {
			if time.Now().After(deadline) {
				return "", fmt.Errorf("no answer to round %d on outbound SPI %08x within %v", round, out, demoVPNWait)
			}
			seq++
			if err := c.Send(lab.WANAddr, out, seq, []byte(marker)); err != nil {
				return "", err
			}
			resend := time.Now().Add(demoRetransmit)
			for {
				p, err := c.Receive(resend)
				if isTimeout(err) {
					break
				}
				if err != nil {
					return "", err
				}
				want, _ := gw.InboundSPI(out)
				reply, ok := strings.CutPrefix(string(p.Payload), lab.ESPReplyPrefix)
				switch {
				case p.Peer != lab.WANAddr:
					return "", fmt.Errorf("received ESP from %s (SPI %08x)", p.Peer, p.SPI)
				case !ok || !strings.HasPrefix(reply, "esp from "+h.name+" "):
					return "", fmt.Errorf("received another host's ESP on SPI %08x: %q", p.SPI, p.Payload)
				case p.SPI != want:
					return "", fmt.Errorf("its answer came on SPI %08x, the gateway's SPI for it is %08x", p.SPI, want)
				}
				in = p.SPI
				if reply == marker {
					answered = true
					break
				}
			}
		}
	}
	seen := map[netip.Addr]bool{}
	for _, p := range gw.Received() {
		if p.SPI == out {
			seen[p.Peer] = true
		}
	}
	if len(seen) != 1 || !seen[lab.RouterWANAddr] {
		return "", fmt.Errorf("the gateway saw SPI %08x from %v, not only from %s", out, slices.Collect(maps.Keys(seen)), lab.RouterWANAddr)
	}
	return fmt.Sprintf("out SPI %08x, answers on SPI %08x reached only this host, %d rounds", out, in, demoVPNRounds), nil
}

// pptpExchange opens a control connection from the host, places a call
// with demoPPTPCallID and sends GRE both ways: every GRE packet the client
// receives must be the server's echo of its own. The client stays open
// (peers closes it) so that the call is in the VPN table.
func pptpExchange(h demoVPNHost, srv *pptppeer.Server, peers *vpnPeers) (string, error) {
	c, err := pptppeer.Dial(h.ns, h.addr, lab.WANAddr, demoVPNWait)
	if err != nil {
		return "", err
	}
	peers.add(c.Close)
	call, err := c.Call(demoPPTPCallID)
	if err != nil {
		return "", err
	}
	for i := range demoVPNRounds {
		payload := fmt.Sprintf("%s call %d packet %d", h.name, call.ID, i)
		if err := call.SendGRE([]byte(payload)); err != nil {
			return "", err
		}
		p, err := call.ReceiveGRE(time.Now().Add(demoVPNWait))
		if err != nil {
			return "", err
		}
		if string(p.Payload) != pptppeer.EchoPrefix+payload {
			return "", fmt.Errorf("received GRE %q, not the echo of its own %q", p.Payload, payload)
		}
	}
	if s := c.Strays(); len(s) > 0 {
		return "", fmt.Errorf("received GRE for calls it does not have: %v", s)
	}
	local := c.LocalAddr()
	for _, sc := range srv.Conns() {
		for _, scall := range sc.Calls {
			if scall.ID == call.PeerID {
				return fmt.Sprintf("Call ID %d, the server saw %d from %s; %d GRE each way", call.ID, scall.PeerID, sc.Remote, demoVPNRounds), nil
			}
		}
	}
	return "", fmt.Errorf("the server has no call %d for the client at %s", call.PeerID, local)
}

// vpnTable asks the router for its VPN state over the admin socket and
// prints it. It fails unless the table shows what the checks created:
// two IKE sessions on WAN port 500, three ESP pairs, two PPTP calls with
// the same Call ID masqueraded to different ones.
func (d *demo) vpnTable(socket string) error {
	body, err := fetch(context.Background(), socket, "/api/v1/vpn", 5*time.Second)
	if err != nil {
		return fmt.Errorf("the router's VPN table: %w", err)
	}
	var v admin.VPN
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("the router's VPN table: %w", err)
	}
	d.printf("VPN table (GET /api/v1/vpn on %s)\n", socket)
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "IKE sessions: %d\n", len(v.IKE))
	fmt.Fprintln(tw, "  LAN\tWAN PORT\tREMOTE\tINITIATOR SPI\tRESPONDER SPI")
	for _, s := range v.IKE {
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\n", s.LANHost, s.WANPort, s.Remote, s.InitiatorSPI, s.ResponderSPI)
	}
	fmt.Fprintf(tw, "ESP pairs: %d\n", len(v.ESP))
	fmt.Fprintln(tw, "  LAN\tREMOTE\tOUT SPI\tIN SPI\tSTATE\tOUT PKTS\tIN PKTS\tLOST OUT/IN")
	for _, p := range v.ESP {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%d\t%d\t%d/%d\n", p.LANHost, p.Remote, p.OutSPI, p.InSPI, p.State, p.Out.Packets, p.In.Packets, p.Out.Lost, p.In.Lost)
	}
	var calls []admin.PPTPCall
	for _, c := range v.PPTP {
		calls = append(calls, c.Calls...)
	}
	fmt.Fprintf(tw, "PPTP calls: %d\n", len(calls))
	fmt.Fprintln(tw, "  CLIENT\tSERVER\tCALL ID\tMASQ CALL ID\tSERVER CALL ID\tSTATE\tGRE OUT\tGRE IN")
	for _, c := range v.PPTP {
		for _, call := range c.Calls {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%d\t%s\t%d\t%d\n", c.Client, c.Server, call.CallID, call.MasqCallID, call.PeerCallID, call.State, call.GREOut, call.GREIn)
		}
	}
	tw.Flush()
	d.printf("\n")

	var problems []string
	ike500 := 0
	for _, s := range v.IKE {
		if s.WANPort == 500 {
			ike500++
		}
	}
	if ike500 != 2 {
		problems = append(problems, fmt.Sprintf("%d IKE sessions on WAN port 500, want 2", ike500))
	}
	if len(v.ESP) != 3 {
		problems = append(problems, fmt.Sprintf("%d ESP pairs, want 3", len(v.ESP)))
	}
	masq := map[uint16]bool{}
	for _, c := range calls {
		if c.CallID == demoPPTPCallID {
			masq[c.MasqCallID] = true
		}
	}
	if len(calls) != 2 || len(masq) != 2 {
		problems = append(problems, fmt.Sprintf("%d PPTP calls with %d different masqueraded Call IDs for Call ID %d, want 2 and 2", len(calls), len(masq), demoPPTPCallID))
	}
	if len(problems) > 0 {
		return fmt.Errorf("the router's VPN table: %s", strings.Join(problems, "; "))
	}
	return nil
}

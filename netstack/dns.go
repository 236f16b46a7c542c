package netstack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

const (
	dnsPort = 53

	// upstreamUDPSize is the EDNS buffer size offered to upstreams and the
	// largest UDP answer given to clients: the DNS flag day 2020 value,
	// which avoids IP fragmentation on common paths.
	upstreamUDPSize = 1232

	// maxUDPInFlight bounds concurrent UDP queries; beyond it queries are
	// dropped (the client retries) instead of piling up goroutines while
	// the upstreams are slow.
	maxUDPInFlight = 256
	// maxTCPConns bounds concurrent DNS-over-TCP connections.
	maxTCPConns = 64
	// tcpIdleTimeout closes a DNS-over-TCP connection that sends nothing
	// (RFC 7766 section 6.2.3 suggests seconds, not minutes).
	tcpIdleTimeout = 10 * time.Second
)

// DNSStats counts the DNS forwarder's work.
type DNSStats struct {
	UDPQueries uint64 // datagrams received on UDP port 53
	TCPQueries uint64 // messages received on TCP port 53
	CacheHits  uint64
	// CacheMisses counts queries that went upstream.
	CacheMisses uint64
	// UpstreamQueries counts exchanges with an upstream (a retry over TCP
	// is one more); UpstreamErrors counts those that gave no usable answer.
	UpstreamQueries uint64
	UpstreamErrors  uint64
	// UpstreamIgnored counts UDP datagrams the forwarder read while waiting
	// for an upstream's answer and ignored because they were not that
	// answer (another ID, not a response, another question, unparsable):
	// forgeries or late answers to earlier queries.
	UpstreamIgnored uint64
	// UpstreamFailures counts client queries no upstream answered; each got
	// SERVFAIL.
	UpstreamFailures uint64
	// OwnedPortRetries counts upstream sockets closed and opened again
	// because the kernel gave them a local port the router owns.
	OwnedPortRetries uint64
	Answered         uint64 // replies sent to clients
	Malformed        uint64 // queries that could not be parsed or were not queries
	Dropped          uint64 // queries or connections refused because too many were in flight
	CacheEntries     uint64 // answers cached now
}

type dnsServer struct {
	s         *Stack
	upstreams atomic.Pointer[[]netip.AddrPort] // replaced by SetDNSUpstreams
	timeout   time.Duration
	cache     *dnsCache

	udp *gonet.UDPConn
	tcp *gonet.TCPListener

	udpSlots chan struct{}
	tcpSlots chan struct{}

	mu      sync.Mutex // guards closing and conns: Close against new TCP connections
	closing bool
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup

	udpQueries, tcpQueries, cacheHits, cacheMisses    atomic.Uint64
	upstreamQueries, upstreamErrors, upstreamFailures atomic.Uint64
	upstreamIgnored                                   atomic.Uint64
	ownedPortRetries                                  atomic.Uint64
	ownedPortWarned                                   atomic.Bool
	answered, malformed, dropped                      atomic.Uint64
}

func (s *Stack) startDNS() (*dnsServer, error) {
	local := tcpip.FullAddress{NIC: nicID, Addr: s.addr, Port: dnsPort}
	uc, err := gonet.DialUDP(s.stack, &local, nil, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("netstack: DNS on UDP port 53: %w", err)
	}
	tl, err := gonet.ListenTCP(s.stack, local, ipv4.ProtocolNumber)
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("netstack: DNS on TCP port 53: %w", err)
	}
	d := &dnsServer{
		s:        s,
		timeout:  s.cfg.DNSTimeout,
		cache:    newDNSCache(s.cfg.DNSCacheSize, s.cfg.Now),
		udp:      uc,
		tcp:      tl,
		udpSlots: make(chan struct{}, maxUDPInFlight),
		tcpSlots: make(chan struct{}, maxTCPConns),
		conns:    make(map[net.Conn]struct{}),
	}
	d.setUpstreams(s.cfg.DNSUpstreams)
	d.wg.Add(2)
	go d.serveUDP()
	go d.serveTCP()
	return d, nil
}

// DNSStats returns the DNS forwarder's counters; all zero without upstreams.
func (s *Stack) DNSStats() DNSStats {
	d := s.dns
	if d == nil {
		return DNSStats{}
	}
	return DNSStats{
		UDPQueries:       d.udpQueries.Load(),
		TCPQueries:       d.tcpQueries.Load(),
		CacheHits:        d.cacheHits.Load(),
		CacheMisses:      d.cacheMisses.Load(),
		UpstreamQueries:  d.upstreamQueries.Load(),
		UpstreamErrors:   d.upstreamErrors.Load(),
		UpstreamIgnored:  d.upstreamIgnored.Load(),
		UpstreamFailures: d.upstreamFailures.Load(),
		OwnedPortRetries: d.ownedPortRetries.Load(),
		Answered:         d.answered.Load(),
		Malformed:        d.malformed.Load(),
		Dropped:          d.dropped.Load(),
		CacheEntries:     uint64(d.cache.len()),
	}
}

// close stops serving and waits for every query in flight; the Stack's
// context is already cancelled, so upstream exchanges end at once.
func (d *dnsServer) close() {
	d.mu.Lock()
	d.closing = true
	conns := make([]net.Conn, 0, len(d.conns))
	for c := range d.conns {
		conns = append(conns, c)
	}
	d.mu.Unlock()
	d.udp.Close()
	d.tcp.Shutdown() // wakes Accept
	d.tcp.Close()
	for _, c := range conns {
		c.Close()
	}
	d.wg.Wait()
}

func (d *dnsServer) isClosing() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closing
}

func (d *dnsServer) serveUDP() {
	defer d.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, from, err := d.udp.ReadFrom(buf)
		if err != nil {
			if !d.isClosing() {
				d.s.log.Error().Err(err).Msg("DNS over UDP stopped")
			}
			return
		}
		d.udpQueries.Add(1)
		select {
		case d.udpSlots <- struct{}{}:
		default:
			d.dropped.Add(1)
			continue
		}
		q := append([]byte(nil), buf[:n]...)
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			defer func() { <-d.udpSlots }()
			reply := d.answer(q, false)
			if reply == nil {
				return
			}
			if _, err := d.udp.WriteTo(reply, from); err != nil {
				d.s.log.Debug().Err(err).Stringer("client", from).Msg("DNS reply not sent")
				return
			}
			d.answered.Add(1)
		}()
	}
}

func (d *dnsServer) serveTCP() {
	defer d.wg.Done()
	for {
		c, err := d.tcp.Accept()
		if err != nil {
			if !d.isClosing() {
				d.s.log.Error().Err(err).Msg("DNS over TCP stopped")
			}
			return
		}
		select {
		case d.tcpSlots <- struct{}{}:
		default:
			d.dropped.Add(1)
			c.Close()
			continue
		}
		d.mu.Lock()
		if d.closing {
			d.mu.Unlock()
			c.Close()
			<-d.tcpSlots
			return
		}
		d.conns[c] = struct{}{}
		d.wg.Add(1)
		d.mu.Unlock()
		go func() {
			defer d.wg.Done()
			defer func() { <-d.tcpSlots }()
			d.serveConn(c)
			d.mu.Lock()
			delete(d.conns, c)
			d.mu.Unlock()
			c.Close()
		}()
	}
}

// serveConn answers the queries on one TCP connection in order (RFC 1035
// section 4.2.2 framing: a two-byte length before each message).
func (d *dnsServer) serveConn(c net.Conn) {
	var lenBuf [2]byte
	for {
		if err := c.SetReadDeadline(time.Now().Add(tcpIdleTimeout)); err != nil {
			return
		}
		if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
			return
		}
		msg := make([]byte, binary.BigEndian.Uint16(lenBuf[:]))
		if _, err := io.ReadFull(c, msg); err != nil {
			return
		}
		d.tcpQueries.Add(1)
		reply := d.answer(msg, true)
		if reply == nil {
			return // not DNS: no point reading on
		}
		out := make([]byte, 2+len(reply))
		binary.BigEndian.PutUint16(out, uint16(len(reply)))
		copy(out[2:], reply)
		if err := c.SetWriteDeadline(time.Now().Add(tcpIdleTimeout)); err != nil {
			return
		}
		if _, err := c.Write(out); err != nil {
			return
		}
		d.answered.Add(1)
	}
}

// answer turns one query message into the packed reply, or nil when there
// is nothing to reply.
func (d *dnsServer) answer(raw []byte, overTCP bool) []byte {
	reply := d.handle(raw, overTCP)
	if reply == nil {
		return nil
	}
	maxSize := dns.MaxMsgSize
	if !overTCP {
		maxSize = dns.MinMsgSize
		if opt := reply.IsEdns0(); opt != nil {
			maxSize = int(opt.UDPSize()) // the client's size, bounded in handle
		}
	}
	reply.Truncate(maxSize)
	reply.Compress = true
	out, err := reply.Pack()
	if err != nil {
		d.s.log.Debug().Err(err).Msg("DNS reply cannot be packed")
		fail := new(dns.Msg)
		fail.MsgHdr = dns.MsgHdr{Id: reply.Id, Response: true, Opcode: reply.Opcode, Rcode: dns.RcodeServerFailure}
		fail.Question = reply.Question
		if out, err = fail.Pack(); err != nil {
			return nil
		}
	}
	return out
}

// handle answers one query: from the cache, else from the first upstream
// that answers, else SERVFAIL. The reply carries the client's ID, question
// (with its letter case) and EDNS presence.
func (d *dnsServer) handle(raw []byte, overTCP bool) *dns.Msg {
	req := new(dns.Msg)
	if err := req.Unpack(raw); err != nil {
		d.malformed.Add(1)
		return formErr(raw)
	}
	if req.Response {
		// Never answer answers: two forwarders must not ping-pong.
		d.malformed.Add(1)
		return nil
	}
	if req.Opcode != dns.OpcodeQuery {
		d.malformed.Add(1)
		return refuse(req, dns.RcodeNotImplemented)
	}
	if len(req.Question) != 1 {
		d.malformed.Add(1)
		return refuse(req, dns.RcodeFormatError)
	}
	q := req.Question[0]
	switch q.Qtype {
	case dns.TypeAXFR, dns.TypeIXFR:
		// Zone transfers are multi-message streams, not forwarded.
		return refuse(req, dns.RcodeRefused)
	}

	k := keyOf(q)
	resp := d.cache.get(k)
	if resp != nil {
		d.cacheHits.Add(1)
	} else {
		d.cacheMisses.Add(1)
		var err error
		resp, err = d.forward(q, overTCP)
		if err != nil {
			d.upstreamFailures.Add(1)
			d.s.log.Debug().Err(err).Str("name", q.Name).Str("type", dns.TypeToString[q.Qtype]).Msg("DNS query failed upstream")
			return refuse(req, dns.RcodeServerFailure)
		}
		d.cache.put(k, resp)
	}

	reply := resp
	reply.Id = req.Id
	reply.Response = true
	reply.Opcode = dns.OpcodeQuery
	reply.RecursionDesired = req.RecursionDesired
	reply.CheckingDisabled = req.CheckingDisabled
	reply.Question = req.Question
	reply.Extra = withoutOPT(reply.Extra)
	if opt := req.IsEdns0(); opt != nil {
		reply.SetEdns0(clampUDPSize(opt.UDPSize()), false)
	}
	return reply
}

func clampUDPSize(size uint16) uint16 {
	return min(max(size, dns.MinMsgSize), upstreamUDPSize)
}

// refuse is a reply without answers and with the given rcode.
func refuse(req *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(req, rcode)
	if len(req.Question) > 1 {
		m.Question = nil
	}
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(clampUDPSize(opt.UDPSize()), false)
	}
	return m
}

// formErr answers a message that does not parse but whose header says it
// is a query; anything else gets no reply.
func formErr(raw []byte) *dns.Msg {
	var h [12]byte
	if len(raw) < len(h) {
		return nil
	}
	copy(h[:], raw)
	flags := binary.BigEndian.Uint16(h[2:])
	if flags&(1<<15) != 0 { // QR: a response
		return nil
	}
	m := new(dns.Msg)
	m.Id = binary.BigEndian.Uint16(h[:])
	m.Response = true
	m.Opcode = int(flags>>11) & 0xf
	m.Rcode = dns.RcodeFormatError
	return m
}

var errNoAnswer = errors.New("no usable answer")

// forward asks the upstreams in order and returns the first usable answer.
// A client that came over TCP most likely retried after a truncated answer,
// so its upstream query goes over TCP first. An answer that stays truncated
// is used only if no upstream gives a complete one.
func (d *dnsServer) forward(q dns.Question, overTCP bool) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.Id = dns.Id() // fresh and random: the client's ID is not ours to reuse upstream
	m.RecursionDesired = true
	m.Question = []dns.Question{q}
	m.SetEdns0(upstreamUDPSize, false)

	var truncated *dns.Msg
	upstreams := *d.upstreams.Load()
	errs := make([]error, 0, len(upstreams))
	for _, up := range upstreams {
		r, err := d.ask(m, up, overTCP)
		if err != nil {
			errs = append(errs, fmt.Errorf("%v: %w", up, err))
			continue
		}
		if r.Truncated {
			if truncated == nil {
				truncated = r
			}
			errs = append(errs, fmt.Errorf("%v: answer truncated over TCP too", up))
			continue
		}
		return r, nil
	}
	if truncated != nil {
		return truncated, nil
	}
	return nil, errors.Join(errs...)
}

// ask queries one upstream; over UDP unless tcpFirst, and over TCP when
// the UDP answer is truncated.
func (d *dnsServer) ask(m *dns.Msg, up netip.AddrPort, tcpFirst bool) (*dns.Msg, error) {
	if tcpFirst {
		r, err := d.exchange(m, up, "tcp")
		if err == nil {
			return r, nil
		}
		// Some upstreams only serve UDP; it may still fit.
		d.s.log.Debug().Err(err).Stringer("upstream", up).Msg("DNS upstream over TCP failed, trying UDP")
	}
	r, err := d.exchange(m, up, "udp")
	if err != nil {
		return nil, err
	}
	if r.Truncated && !tcpFirst {
		if full, err := d.exchange(m, up, "tcp"); err == nil {
			return full, nil
		}
	}
	return r, nil
}

// exchange is one query to one upstream over the host's own sockets; the
// answer must match the question and carry a final rcode.
func (d *dnsServer) exchange(m *dns.Msg, up netip.AddrPort, network string) (*dns.Msg, error) {
	d.upstreamQueries.Add(1)
	ctx, cancel := context.WithTimeout(d.s.ctx, d.timeout)
	defer cancel()
	var r *dns.Msg
	var err error
	if network == "udp" {
		r, err = d.exchangeUDP(ctx, m, up)
	} else {
		c := &dns.Client{Net: network, Timeout: d.timeout, UDPSize: upstreamUDPSize}
		r, err = d.exchangeContext(ctx, c, m, up)
		if err == nil {
			err = checkMatch(m, r)
		}
	}
	if err == nil {
		err = checkRcode(r)
	}
	if err != nil {
		d.upstreamErrors.Add(1)
		d.s.log.Debug().Err(err).Stringer("upstream", up).Str("net", network).Msg("DNS upstream gave no answer")
		return nil, err
	}
	return r, nil
}

// udpAnswerBufs hold upstream UDP answers while they are parsed.
var udpAnswerBufs = sync.Pool{New: func() any { b := make([]byte, dns.MaxMsgSize); return &b }}

// exchangeUDP sends m to up over UDP and waits, until ctx ends, for the
// answer to it. The socket is connected, so the kernel drops datagrams
// from any other address or port; a datagram from up that is not the answer
// (another ID, another question, not a response, unparsable) is ignored and
// counted, and the wait goes on: an off-path attacker who guesses the ID but
// not the question, or sends first, does not make the forwarder give up on
// the genuine answer (and answer SERVFAIL or try the next upstream).
func (d *dnsServer) exchangeUDP(ctx context.Context, m *dns.Msg, up netip.AddrPort) (*dns.Msg, error) {
	out, err := m.Pack()
	if err != nil {
		return nil, err
	}
	co, err := d.dial(ctx, "udp", up)
	if err != nil {
		return nil, err
	}
	defer co.Close()
	stop := context.AfterFunc(ctx, func() { co.Close() })
	defer stop()
	if deadline, ok := ctx.Deadline(); ok {
		co.SetDeadline(deadline)
	}
	if _, err := co.Write(out); err != nil {
		return nil, err
	}
	bp := udpAnswerBufs.Get().(*[]byte)
	defer udpAnswerBufs.Put(bp)
	buf := *bp
	for {
		n, err := co.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf[:n]); err != nil {
			d.ignored(up, err)
			continue
		}
		if r.Id != m.Id {
			d.ignored(up, fmt.Errorf("answer ID %#x, query ID %#x", r.Id, m.Id))
			continue
		}
		if err := checkMatch(m, r); err != nil {
			d.ignored(up, err)
			continue
		}
		return r, nil
	}
}

func (d *dnsServer) ignored(up netip.AddrPort, why error) {
	d.upstreamIgnored.Add(1)
	d.s.log.Debug().Err(why).Stringer("upstream", up).Msg("DNS datagram from upstream ignored, still waiting for the answer")
}

// exchangeContext is dns.Client.ExchangeContext over a socket of d.dial,
// except that cancelling ctx (Close) ends a wait for the answer at once,
// not at the deadline.
func (d *dnsServer) exchangeContext(ctx context.Context, c *dns.Client, m *dns.Msg, up netip.AddrPort) (*dns.Msg, error) {
	conn, err := d.dial(ctx, c.Net, up)
	if err != nil {
		return nil, err
	}
	co := &dns.Conn{Conn: conn, UDPSize: c.UDPSize}
	defer co.Close()
	stop := context.AfterFunc(ctx, func() { co.Close() })
	defer stop()
	r, _, err := c.ExchangeWithConnContext(ctx, m, co)
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return r, err
}

// checkMatch reports whether r answers m: a response to a query, with m's
// one question (names compared without regard to letter case).
func checkMatch(m, r *dns.Msg) error {
	if !r.Response || r.Opcode != dns.OpcodeQuery {
		return errors.New("not an answer")
	}
	if len(r.Question) != 1 {
		return fmt.Errorf("answer has %d questions", len(r.Question))
	}
	q, a := m.Question[0], r.Question[0]
	if !strings.EqualFold(q.Name, a.Name) || q.Qtype != a.Qtype || q.Qclass != a.Qclass {
		return fmt.Errorf("answer is for another question (%s)", a.String())
	}
	return nil
}

// checkRcode accepts the final rcodes of a matching answer.
func checkRcode(r *dns.Msg) error {
	switch r.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return nil
	default:
		// SERVFAIL, REFUSED and the like: another upstream may do better.
		return fmt.Errorf("%w: %s", errNoAnswer, dns.RcodeToString[r.Rcode])
	}
}

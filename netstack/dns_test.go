package netstack

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func dnsStack(t *testing.T, clock *fakeClock, upstreams ...netip.AddrPort) (*Stack, *capture) {
	t.Helper()
	cfg := Config{DNSUpstreams: upstreams, DNSTimeout: 500 * time.Millisecond}
	if clock != nil {
		cfg.Now = clock.Now
	}
	return newTestStack(t, cfg)
}

func onlyA(t *testing.T, r *dns.Msg) *dns.A {
	t.Helper()
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("reply rcode %s with %d answers, want one A record:\n%v", dns.RcodeToString[r.Rcode], len(r.Answer), r)
	}
	a, ok := r.Answer[0].(*dns.A)
	if !ok {
		t.Fatalf("answer %v is not an A record", r.Answer[0])
	}
	return a
}

func TestDNSOverUDPForwardsAndCaches(t *testing.T) {
	up := startUpstream(t, answerA("198.18.7.7", 300))
	clock := newFakeClock()
	s, c := dnsStack(t, clock, up.addr)

	t.Run("a query is answered from the upstream with the client's ID", func(t *testing.T) {
		r := exchangeUDP(t, s, c, 40001, query(t, 0x1234, "www.example.", dns.TypeA, false))
		if r.Id != 0x1234 || !r.Response {
			t.Fatalf("reply ID %#x response %v, want 0x1234 and a response", r.Id, r.Response)
		}
		a := onlyA(t, r)
		if a.A.String() != "198.18.7.7" || a.Hdr.Ttl != 300 {
			t.Fatalf("answer %v, want 198.18.7.7 with TTL 300", a)
		}
		if len(r.Question) != 1 || r.Question[0].Name != "www.example." {
			t.Fatalf("reply question %v, want the client's", r.Question)
		}
		if up.total() != 1 {
			t.Fatalf("upstream got %d queries, want 1", up.total())
		}
	})

	t.Run("the same question again is a cache hit with its own ID", func(t *testing.T) {
		r := exchangeUDP(t, s, c, 40002, query(t, 0x5678, "www.example.", dns.TypeA, false))
		if r.Id != 0x5678 {
			t.Fatalf("reply ID %#x, want 0x5678", r.Id)
		}
		onlyA(t, r)
		if up.total() != 1 {
			t.Fatalf("upstream got %d queries, want still 1", up.total())
		}
		// Answered counts a reply once it is written, which may be just
		// after the packet went out.
		eventually(t, "2 answered", func() bool { return s.DNSStats().Answered == 2 })
		if st := s.DNSStats(); st.CacheHits != 1 || st.UDPQueries != 2 || st.CacheEntries != 1 {
			t.Fatalf("stats %+v, want 1 hit, 2 UDP queries, 1 entry", st)
		}
	})

	t.Run("a cached answer's TTL shrinks by the time it spent in the cache", func(t *testing.T) {
		clock.advance(100*time.Second + 500*time.Millisecond)
		a := onlyA(t, exchangeUDP(t, s, c, 40003, query(t, 1, "www.example.", dns.TypeA, false)))
		if a.Hdr.Ttl != 200 {
			t.Fatalf("TTL %d after 100.5 s, want 200", a.Hdr.Ttl)
		}
		if up.total() != 1 {
			t.Fatalf("upstream got %d queries, want still 1", up.total())
		}
	})

	t.Run("the name is matched without case and the reply keeps the client's spelling", func(t *testing.T) {
		r := exchangeUDP(t, s, c, 40004, query(t, 2, "WwW.ExAmPlE.", dns.TypeA, false))
		onlyA(t, r)
		if r.Question[0].Name != "WwW.ExAmPlE." {
			t.Fatalf("reply question %q, want the client's spelling", r.Question[0].Name)
		}
		if up.total() != 1 {
			t.Fatalf("upstream got %d queries, want still 1 (a cache hit)", up.total())
		}
	})

	t.Run("another type of the same name is a different question", func(t *testing.T) {
		exchangeUDP(t, s, c, 40005, query(t, 3, "www.example.", dns.TypeAAAA, false))
		if up.total() != 2 {
			t.Fatalf("upstream got %d queries, want 2", up.total())
		}
	})

	t.Run("after the TTL the answer is asked for again", func(t *testing.T) {
		clock.advance(200 * time.Second) // 300.5 s after it was stored
		a := onlyA(t, exchangeUDP(t, s, c, 40006, query(t, 4, "www.example.", dns.TypeA, false)))
		if a.Hdr.Ttl != 300 {
			t.Fatalf("TTL %d of a fresh answer, want 300", a.Hdr.Ttl)
		}
		if up.total() != 3 {
			t.Fatalf("upstream got %d queries, want 3", up.total())
		}
	})

	t.Run("the reply goes out as one datagram per query, nothing more", func(t *testing.T) {
		c.none(t, 100*time.Millisecond)
	})
}

func TestDNSNegativeCaching(t *testing.T) {
	tests := []struct {
		name              string
		respond           func(q *dns.Msg, network string) *dns.Msg
		rcode             int
		stillCachedAfter  time.Duration
		expiredAfter      time.Duration
		wantSOATTLOnCache uint32
	}{
		{
			name:    "NXDOMAIN is cached for the SOA minimum",
			respond: negative(dns.RcodeNameError, 3600, 60), rcode: dns.RcodeNameError,
			stillCachedAfter: 59 * time.Second, expiredAfter: 2 * time.Second, wantSOATTLOnCache: 3600 - 59,
		},
		{
			name:    "NODATA is cached for the SOA minimum",
			respond: negative(dns.RcodeSuccess, 3600, 90), rcode: dns.RcodeSuccess,
			stillCachedAfter: 89 * time.Second, expiredAfter: 2 * time.Second, wantSOATTLOnCache: 3600 - 89,
		},
		{
			name:    "a negative answer is cached at most 5 minutes",
			respond: negative(dns.RcodeNameError, 86400, 86400), rcode: dns.RcodeNameError,
			stillCachedAfter: 299 * time.Second, expiredAfter: 2 * time.Second, wantSOATTLOnCache: 86400 - 299,
		},
		{
			name:    "a negative answer is cached no longer than its SOA record lives",
			respond: negative(dns.RcodeNameError, 30, 600), rcode: dns.RcodeNameError,
			stillCachedAfter: 29 * time.Second, expiredAfter: 2 * time.Second, wantSOATTLOnCache: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startUpstream(t, tt.respond)
			clock := newFakeClock()
			s, c := dnsStack(t, clock, up.addr)
			ask := func(id uint16) *dns.Msg {
				r := exchangeUDP(t, s, c, 40000+id, query(t, id, "nothing.example.", dns.TypeA, false))
				if r.Id != id || r.Rcode != tt.rcode || len(r.Answer) != 0 {
					t.Fatalf("reply ID %d rcode %s with %d answers, want ID %d, %s, no answers", r.Id, dns.RcodeToString[r.Rcode], len(r.Answer), id, dns.RcodeToString[tt.rcode])
				}
				return r
			}
			ask(1)
			clock.advance(tt.stillCachedAfter)
			r := ask(2)
			if up.total() != 1 {
				t.Fatalf("upstream got %d queries, want 1 (a cache hit)", up.total())
			}
			if len(r.Ns) != 1 || r.Ns[0].Header().Ttl != tt.wantSOATTLOnCache {
				t.Fatalf("cached authority %v, want the SOA with TTL %d", r.Ns, tt.wantSOATTLOnCache)
			}
			clock.advance(tt.expiredAfter)
			ask(3)
			if up.total() != 2 {
				t.Fatalf("upstream got %d queries, want 2 (the entry expired)", up.total())
			}
		})
	}
}

func TestDNSUpstreamFailures(t *testing.T) {
	servfail := func(q *dns.Msg, _ string) *dns.Msg {
		r := new(dns.Msg)
		r.SetRcode(q, dns.RcodeServerFailure)
		return r
	}

	t.Run("a query gets SERVFAIL when the upstream is down, and SERVFAIL is not cached", func(t *testing.T) {
		s, c := dnsStack(t, nil, deadUpstream(t))
		for id := uint16(1); id <= 2; id++ {
			r := exchangeUDP(t, s, c, 41000+id, query(t, id, "www.example.", dns.TypeA, false))
			if r.Id != id || r.Rcode != dns.RcodeServerFailure {
				t.Fatalf("reply ID %d rcode %s, want ID %d SERVFAIL", r.Id, dns.RcodeToString[r.Rcode], id)
			}
		}
		if st := s.DNSStats(); st.UpstreamFailures != 2 || st.CacheHits != 0 || st.CacheEntries != 0 {
			t.Fatalf("stats %+v, want 2 upstream failures and nothing cached", st)
		}
	})

	t.Run("a silent upstream gets SERVFAIL after the timeout", func(t *testing.T) {
		silent := startUpstream(t, func(*dns.Msg, string) *dns.Msg { return nil })
		s, c := dnsStack(t, nil, silent.addr)
		start := time.Now()
		r := exchangeUDP(t, s, c, 41010, query(t, 10, "www.example.", dns.TypeA, false))
		if r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
		}
		if took := time.Since(start); took < 400*time.Millisecond {
			t.Fatalf("SERVFAIL after %v, before the 500 ms timeout", took)
		}
	})

	t.Run("the upstreams are asked in order and the first that answers wins", func(t *testing.T) {
		bad := startUpstream(t, servfail)
		good := startUpstream(t, answerA("198.18.1.1", 60))
		unused := startUpstream(t, answerA("198.18.2.2", 60))
		s, c := dnsStack(t, nil, deadUpstream(t), bad.addr, good.addr, unused.addr)
		a := onlyA(t, exchangeUDP(t, s, c, 41020, query(t, 20, "www.example.", dns.TypeA, false)))
		if a.A.String() != "198.18.1.1" {
			t.Fatalf("answer %v, want the third upstream's 198.18.1.1", a)
		}
		if bad.total() != 1 || good.total() != 1 || unused.total() != 0 {
			t.Fatalf("queries: servfailing %d, good %d, unused %d; want 1, 1, 0", bad.total(), good.total(), unused.total())
		}
		if st := s.DNSStats(); st.UpstreamErrors != 2 || st.UpstreamFailures != 0 {
			t.Fatalf("stats %+v, want 2 upstream errors, no failure", st)
		}
	})

	t.Run("SERVFAIL from every upstream is passed on as SERVFAIL and not cached", func(t *testing.T) {
		bad := startUpstream(t, servfail)
		s, c := dnsStack(t, nil, bad.addr)
		for id := uint16(30); id < 32; id++ {
			r := exchangeUDP(t, s, c, 41000+id, query(t, id, "www.example.", dns.TypeA, false))
			if r.Rcode != dns.RcodeServerFailure {
				t.Fatalf("rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
			}
		}
		if bad.total() != 2 {
			t.Fatalf("upstream got %d queries, want 2 (nothing cached)", bad.total())
		}
	})

	t.Run("an answer to another question is not used", func(t *testing.T) {
		liar := startUpstream(t, func(q *dns.Msg, _ string) *dns.Msg {
			r := new(dns.Msg)
			r.SetReply(q)
			r.Question[0].Name = "evil.example."
			r.Answer = append(r.Answer, mustRR("evil.example. 300 IN A 198.18.6.6"))
			return r
		})
		s, c := dnsStack(t, nil, liar.addr)
		r := exchangeUDP(t, s, c, 41040, query(t, 40, "www.example.", dns.TypeA, false))
		if r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
			t.Fatalf("reply %v, want SERVFAIL without answers", r)
		}
	})
}

func TestDNSTruncation(t *testing.T) {
	many := func(n int) func(q *dns.Msg, network string) *dns.Msg {
		return func(q *dns.Msg, network string) *dns.Msg {
			r := new(dns.Msg)
			r.SetReply(q)
			for i := range n {
				r.Answer = append(r.Answer, mustRR(fmt.Sprintf("%s 300 IN A 198.18.%d.%d", q.Question[0].Name, i/250, i%250+1)))
			}
			return r
		}
	}

	t.Run("a truncated UDP answer from the upstream is fetched again over TCP", func(t *testing.T) {
		up := startUpstream(t, func(q *dns.Msg, network string) *dns.Msg {
			r := many(3)(q, network)
			if network == "udp" {
				r.Answer = r.Answer[:1]
				r.Truncated = true
			}
			return r
		})
		s, c := dnsStack(t, nil, up.addr)
		r := exchangeUDP(t, s, c, 42001, query(t, 1, "big.example.", dns.TypeA, true))
		if r.Truncated || len(r.Answer) != 3 {
			t.Fatalf("reply truncated %v with %d answers, want the full 3 from TCP", r.Truncated, len(r.Answer))
		}
		if up.count("udp") != 1 || up.count("tcp") != 1 {
			t.Fatalf("upstream queries: %d UDP, %d TCP; want 1 and 1", up.count("udp"), up.count("tcp"))
		}
		exchangeUDP(t, s, c, 42002, query(t, 2, "big.example.", dns.TypeA, true))
		if up.total() != 2 {
			t.Fatalf("upstream got %d queries, want 2 (the full answer is cached)", up.total())
		}
	})

	t.Run("an answer still truncated over TCP is passed on but not cached", func(t *testing.T) {
		up := startUpstream(t, func(q *dns.Msg, network string) *dns.Msg {
			r := many(1)(q, network)
			r.Truncated = true
			return r
		})
		s, c := dnsStack(t, nil, up.addr)
		for id := uint16(3); id < 5; id++ {
			r := exchangeUDP(t, s, c, 42000+id, query(t, id, "big.example.", dns.TypeA, true))
			if !r.Truncated || r.Rcode != dns.RcodeSuccess {
				t.Fatalf("reply truncated %v rcode %s, want the truncated answer", r.Truncated, dns.RcodeToString[r.Rcode])
			}
		}
		if up.total() != 4 {
			t.Fatalf("upstream got %d queries, want 4 (UDP and TCP twice, nothing cached)", up.total())
		}
	})

	tests := []struct {
		name    string
		edns    bool
		maxSize int
	}{
		{"an answer too big for a client without EDNS is truncated to 512 bytes with TC set", false, 512},
		{"an answer too big for an EDNS client is truncated to 1232 bytes with TC set", true, upstreamUDPSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := startUpstream(t, many(200))
			s, c := dnsStack(t, nil, up.addr)
			r := exchangeUDP(t, s, c, 42010, query(t, 10, "huge.example.", dns.TypeA, tt.edns))
			if !r.Truncated || len(r.Answer) == 0 || len(r.Answer) >= 200 {
				t.Fatalf("reply truncated %v with %d answers, want TC and part of them", r.Truncated, len(r.Answer))
			}
			r.Compress = true // as it was on the wire
			if n := r.Len(); n > tt.maxSize {
				t.Fatalf("reply is %d bytes, more than %d", n, tt.maxSize)
			}
			if got := r.IsEdns0() != nil; got != tt.edns {
				t.Fatalf("reply has EDNS %v, want %v like the query", got, tt.edns)
			}
		})
	}
}

func TestDNSRejectsWhatIsNotAQuery(t *testing.T) {
	up := startUpstream(t, answerA("198.18.7.7", 300))
	s, c := dnsStack(t, nil, up.addr)
	pack := func(m *dns.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			t.Fatalf("pack: %v", err)
		}
		return b
	}
	twoQuestions := new(dns.Msg)
	twoQuestions.Id = 7
	twoQuestions.Question = []dns.Question{{Name: "a.example.", Qtype: dns.TypeA, Qclass: dns.ClassINET}, {Name: "b.example.", Qtype: dns.TypeA, Qclass: dns.ClassINET}}
	noQuestion := new(dns.Msg)
	noQuestion.Id = 8
	notify := new(dns.Msg)
	notify.SetNotify("example.")
	notify.Id = 9
	axfr := new(dns.Msg)
	axfr.SetAxfr("example.")
	axfr.Id = 10
	garbage := append(pack(noQuestion)[:12:12], 0xff, 0xff, 0xff)
	garbage[0], garbage[1], garbage[5] = 0, 11, 1 // ID 11, one question that does not parse

	tests := []struct {
		name  string
		msg   []byte
		id    uint16
		rcode int
	}{
		{"two questions get FORMERR", pack(twoQuestions), 7, dns.RcodeFormatError},
		{"no question gets FORMERR", pack(noQuestion), 8, dns.RcodeFormatError},
		{"an opcode other than QUERY gets NOTIMP", pack(notify), 9, dns.RcodeNotImplemented},
		{"a zone transfer gets REFUSED", pack(axfr), 10, dns.RcodeRefused},
		{"a message that does not parse gets FORMERR", garbage, 11, dns.RcodeFormatError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := exchangeUDP(t, s, c, 43000+tt.id, tt.msg)
			if r.Id != tt.id || r.Rcode != tt.rcode || len(r.Answer) != 0 {
				t.Fatalf("reply ID %d rcode %s with %d answers, want ID %d %s", r.Id, dns.RcodeToString[r.Rcode], len(r.Answer), tt.id, dns.RcodeToString[tt.rcode])
			}
		})
	}

	silent := []struct {
		name string
		msg  []byte
	}{
		{"a response is not answered", func() []byte {
			m := new(dns.Msg)
			m.SetQuestion("a.example.", dns.TypeA)
			m.Response = true
			return pack(m)
		}()},
		{"a message shorter than a DNS header is not answered", []byte{1, 2, 3}},
		{"an empty datagram is not answered", nil},
	}
	for _, tt := range silent {
		t.Run(tt.name, func(t *testing.T) {
			s.Deliver(udpPacket(netip.AddrPortFrom(lanHost, 43100), netip.AddrPortFrom(serviceAddr, 53), tt.msg))
			c.none(t, 150*time.Millisecond)
		})
	}
	if up.total() != 0 {
		t.Fatalf("upstream got %d queries for messages that are not forwardable", up.total())
	}
	if st := s.DNSStats(); st.Malformed < 6 {
		t.Fatalf("malformed %d, want at least 6", st.Malformed)
	}
}

func TestDNSConcurrentQueries(t *testing.T) {
	var served atomic.Int32
	up := startUpstream(t, func(q *dns.Msg, network string) *dns.Msg {
		served.Add(1)
		return answerA("198.18.9.9", 300)(q, network)
	})
	s, c := dnsStack(t, nil, up.addr)
	const n = 50
	for i := range n {
		s.Deliver(udpPacket(netip.AddrPortFrom(lanHost, uint16(44000+i)), netip.AddrPortFrom(serviceAddr, 53),
			query(t, uint16(i), fmt.Sprintf("host%d.example.", i), dns.TypeA, false)))
	}
	seen := map[uint16]bool{}
	for range n {
		r := new(dns.Msg)
		p := checkIPv4(t, c.next(t))
		if err := r.Unpack(p.Payload()[8:]); err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
		want := fmt.Sprintf("host%d.example.", r.Id)
		if r.Question[0].Name != want || onlyA(t, r) == nil {
			t.Fatalf("reply ID %d for %q, want the answer for %q", r.Id, r.Question[0].Name, want)
		}
		seen[r.Id] = true
	}
	if len(seen) != n || served.Load() != n {
		t.Fatalf("%d distinct replies, upstream served %d; want %d each", len(seen), served.Load(), n)
	}
}

func TestCloseDuringUpstreamQuery(t *testing.T) {
	asked := make(chan struct{}, 1)
	silent := startUpstream(t, func(*dns.Msg, string) *dns.Msg {
		select {
		case asked <- struct{}{}:
		default:
		}
		return nil
	})
	s, c := newTestStack(t, Config{DNSUpstreams: []netip.AddrPort{silent.addr, silent.addr}, DNSTimeout: time.Minute})
	s.Deliver(udpPacket(netip.AddrPortFrom(lanHost, 45000), netip.AddrPortFrom(serviceAddr, 53), query(t, 1, "slow.example.", dns.TypeA, false)))
	select {
	case <-asked:
	case <-time.After(waitFor):
		t.Fatal("the query did not reach the upstream")
	}
	start := time.Now()
	s.Close()
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Close took %v with a query waiting on a 1-minute upstream timeout", took)
	}
	c.none(t, 50*time.Millisecond)
}

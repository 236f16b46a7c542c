package netstack

import (
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func reply(rcode int, rrs ...string) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion("www.example.", dns.TypeA)
	m.Response = true
	m.Rcode = rcode
	for _, s := range rrs {
		rr := mustRR(s)
		if rr.Header().Rrtype == dns.TypeSOA {
			m.Ns = append(m.Ns, rr)
		} else {
			m.Answer = append(m.Answer, rr)
		}
	}
	return m
}

func TestCacheTTL(t *testing.T) {
	truncated := reply(dns.RcodeSuccess, "www.example. 300 IN A 198.18.0.1")
	truncated.Truncated = true
	withGlue := reply(dns.RcodeSuccess, "www.example. 300 IN A 198.18.0.1")
	withGlue.Extra = append(withGlue.Extra, mustRR("ns.example. 40 IN A 198.18.0.2"))
	withGlue.SetEdns0(1232, false) // the OPT "TTL" holds flags, not a lifetime
	tests := []struct {
		name   string
		msg    *dns.Msg
		want   time.Duration
		cached bool
	}{
		{"a positive answer lives as long as its shortest-lived record",
			reply(dns.RcodeSuccess, "www.example. 300 IN CNAME web.example.", "web.example. 120 IN A 198.18.0.1"), 120 * time.Second, true},
		{"a record in the additional section bounds it too, EDNS does not",
			withGlue, 40 * time.Second, true},
		{"a positive answer is kept at most a day",
			reply(dns.RcodeSuccess, "www.example. 2147483647 IN A 198.18.0.1"), 24 * time.Hour, true},
		{"NXDOMAIN lives for the SOA minimum",
			reply(dns.RcodeNameError, "example. 3600 IN SOA ns.example. admin.example. 1 7200 3600 1209600 60"), 60 * time.Second, true},
		{"NODATA lives for the SOA minimum",
			reply(dns.RcodeSuccess, "example. 3600 IN SOA ns.example. admin.example. 1 7200 3600 1209600 90"), 90 * time.Second, true},
		{"a negative answer lives no longer than the SOA record",
			reply(dns.RcodeNameError, "example. 20 IN SOA ns.example. admin.example. 1 7200 3600 1209600 90"), 20 * time.Second, true},
		{"a negative answer is capped at 5 minutes",
			reply(dns.RcodeNameError, "example. 86400 IN SOA ns.example. admin.example. 1 7200 3600 1209600 86400"), 5 * time.Minute, true},
		{"NXDOMAIN without a SOA is not cached", reply(dns.RcodeNameError), 0, false},
		{"NODATA without a SOA is not cached", reply(dns.RcodeSuccess), 0, false},
		{"SERVFAIL is not cached", reply(dns.RcodeServerFailure), 0, false},
		{"SERVFAIL with a SOA is not cached either",
			reply(dns.RcodeServerFailure, "example. 3600 IN SOA ns.example. admin.example. 1 7200 3600 1209600 60"), 0, false},
		{"REFUSED is not cached", reply(dns.RcodeRefused), 0, false},
		{"a truncated answer is not cached", truncated, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, cached := cacheTTL(tt.msg)
			if cached != tt.cached || got != tt.want {
				t.Fatalf("cacheTTL = %v, %v; want %v, %v", got, cached, tt.want, tt.cached)
			}
		})
	}
}

func TestCache(t *testing.T) {
	key := func(name string) cacheKey {
		return keyOf(dns.Question{Name: name, Qtype: dns.TypeA, Qclass: dns.ClassINET})
	}
	answer := func(name string, ttl uint32) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.Response = true
		m.Answer = append(m.Answer, mustRR(fmt.Sprintf("%s %d IN A 198.18.0.1", name, ttl)))
		m.Extra = append(m.Extra, mustRR(fmt.Sprintf("ns.example. %d IN A 198.18.0.2", ttl+100)))
		return m
	}

	t.Run("a hit has every TTL lowered by the whole seconds spent in the cache", func(t *testing.T) {
		clock := newFakeClock()
		c := newDNSCache(10, clock.Now)
		c.put(key("a.example."), answer("a.example.", 60))
		clock.advance(10*time.Second + 900*time.Millisecond)
		m := c.get(key("a.example."))
		if m == nil {
			t.Fatal("miss")
		}
		if m.Answer[0].Header().Ttl != 50 || m.Extra[0].Header().Ttl != 150 {
			t.Fatalf("TTLs %d and %d, want 50 and 150", m.Answer[0].Header().Ttl, m.Extra[0].Header().Ttl)
		}
	})
	t.Run("a hit is a copy: changing it does not change the cache", func(t *testing.T) {
		clock := newFakeClock()
		c := newDNSCache(10, clock.Now)
		c.put(key("a.example."), answer("a.example.", 60))
		c.get(key("a.example.")).Answer[0].Header().Ttl = 1
		if got := c.get(key("a.example.")).Answer[0].Header().Ttl; got != 60 {
			t.Fatalf("TTL %d after a caller changed its copy, want 60", got)
		}
	})
	t.Run("an entry expires after its TTL", func(t *testing.T) {
		clock := newFakeClock()
		c := newDNSCache(10, clock.Now)
		c.put(key("a.example."), answer("a.example.", 60))
		clock.advance(59 * time.Second)
		if c.get(key("a.example.")) == nil {
			t.Fatal("miss before the TTL ran out")
		}
		clock.advance(time.Second)
		if c.get(key("a.example.")) != nil {
			t.Fatal("hit after the TTL ran out")
		}
		if c.len() != 0 {
			t.Fatalf("%d entries, want the expired one gone", c.len())
		}
	})
	t.Run("an answer with TTL 0 is not cached", func(t *testing.T) {
		c := newDNSCache(10, newFakeClock().Now)
		c.put(key("a.example."), answer("a.example.", 0))
		if c.len() != 0 {
			t.Fatal("a TTL-0 answer was cached")
		}
	})
	t.Run("a full cache evicts the entry stored longest ago", func(t *testing.T) {
		clock := newFakeClock()
		c := newDNSCache(2, clock.Now)
		c.put(key("a.example."), answer("a.example.", 300))
		c.put(key("b.example."), answer("b.example.", 300))
		c.get(key("a.example.")) // a hit does not make an entry younger
		c.put(key("c.example."), answer("c.example.", 300))
		if c.get(key("a.example.")) != nil {
			t.Fatal("the oldest entry survived")
		}
		if c.get(key("b.example.")) == nil || c.get(key("c.example.")) == nil {
			t.Fatal("a younger entry was evicted")
		}
		if c.len() != 2 {
			t.Fatalf("%d entries, want 2", c.len())
		}
	})
	t.Run("storing a question again replaces its answer and makes it youngest", func(t *testing.T) {
		clock := newFakeClock()
		c := newDNSCache(2, clock.Now)
		c.put(key("a.example."), answer("a.example.", 300))
		c.put(key("b.example."), answer("b.example.", 300))
		c.put(key("a.example."), answer("a.example.", 100))
		c.put(key("c.example."), answer("c.example.", 300))
		m := c.get(key("a.example."))
		if m == nil || m.Answer[0].Header().Ttl != 100 {
			t.Fatalf("a.example. = %v, want the newer answer", m)
		}
		if c.get(key("b.example.")) != nil {
			t.Fatal("b.example. survived though it was the oldest")
		}
	})
	t.Run("the key ignores the name's case but not type or class", func(t *testing.T) {
		q := dns.Question{Name: "WWW.Example.", Qtype: dns.TypeA, Qclass: dns.ClassINET}
		if keyOf(q) != key("www.example.") {
			t.Fatal("names differing in case have different keys")
		}
		q.Qtype = dns.TypeAAAA
		if keyOf(q) == key("www.example.") {
			t.Fatal("A and AAAA share a key")
		}
		q.Qtype, q.Qclass = dns.TypeA, dns.ClassCHAOS
		if keyOf(q) == key("www.example.") {
			t.Fatal("IN and CH share a key")
		}
	})
	t.Run("the OPT record is not stored", func(t *testing.T) {
		c := newDNSCache(10, newFakeClock().Now)
		m := answer("a.example.", 60)
		m.SetEdns0(1232, true)
		c.put(key("a.example."), m)
		if got := c.get(key("a.example.")); got.IsEdns0() != nil {
			t.Fatal("the cached answer carries the upstream's OPT record")
		}
		if m.IsEdns0() == nil {
			t.Fatal("put changed the caller's message")
		}
	})
}

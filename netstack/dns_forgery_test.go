package netstack

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// forgingUpstream is a fake upstream on loopback that answers each UDP
// query with forgeries first, then, after a pause, with the genuine answer
// (198.18.7.7) when genuine is set.
func forgingUpstream(t *testing.T, forge func(q *dns.Msg) (r *dns.Msg, otherPort bool), genuine bool) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	other, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close(); other.Close() })
	send := func(conn net.PacketConn, r *dns.Msg, to net.Addr) {
		b, err := r.Pack()
		if err != nil {
			t.Errorf("packing the fake answer: %v", err)
			return
		}
		conn.WriteTo(b, to)
	}
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			r, otherPort := forge(q)
			conn := pc
			if otherPort {
				conn = other
			}
			send(conn, r, from)
			if !genuine {
				continue
			}
			time.Sleep(50 * time.Millisecond)
			a := new(dns.Msg)
			a.SetReply(q)
			a.Answer = []dns.RR{mustRR(q.Question[0].Name + " 300 IN A 198.18.7.7")}
			send(pc, a, from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestDNSIgnoresForgedAnswers(t *testing.T) {
	evil := func(q *dns.Msg, name string) *dns.Msg {
		r := new(dns.Msg)
		r.SetReply(q)
		r.Question = []dns.Question{{Name: name, Qtype: dns.TypeA, Qclass: dns.ClassINET}}
		r.Answer = []dns.RR{mustRR(name + " 300 IN A 6.6.6.6")}
		return r
	}
	cases := []struct {
		name  string
		forge func(q *dns.Msg) (*dns.Msg, bool)
	}{
		{"an answer with the right ID for another question is ignored", func(q *dns.Msg) (*dns.Msg, bool) {
			return evil(q, "evil.example."), false
		}},
		{"an answer with another ID is ignored", func(q *dns.Msg) (*dns.Msg, bool) {
			r := evil(q, q.Question[0].Name)
			r.Id = q.Id + 1
			return r, false
		}},
		{"an answer from another port of the upstream's address is ignored", func(q *dns.Msg) (*dns.Msg, bool) {
			return evil(q, q.Question[0].Name), true
		}},
		{"a query echoed back (not a response) is ignored", func(q *dns.Msg) (*dns.Msg, bool) {
			return q.Copy(), false
		}},
		{"an answer with a SERVFAIL for another question is ignored", func(q *dns.Msg) (*dns.Msg, bool) {
			r := new(dns.Msg)
			r.SetRcode(q, dns.RcodeServerFailure)
			r.Question[0].Name = "other.example."
			return r, false
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name+", and the genuine answer that follows is used", func(t *testing.T) {
			up := forgingUpstream(t, tc.forge, true)
			s, c := dnsStack(t, nil, up)
			r := exchangeUDP(t, s, c, 42000+uint16(i), query(t, 0x4242, "www.example.", dns.TypeA, false))
			if a := onlyA(t, r); a.A.String() != "198.18.7.7" {
				t.Errorf("answer %v, want the genuine 198.18.7.7", a)
			}
			if st := s.DNSStats(); st.UpstreamFailures != 0 {
				t.Errorf("stats %+v: the upstream was given up on", st)
			}
		})
	}
	t.Run("only forgeries and no answer: SERVFAIL once the timeout has passed, not before", func(t *testing.T) {
		up := forgingUpstream(t, func(q *dns.Msg) (*dns.Msg, bool) { return evil(q, "evil.example."), false }, false)
		s, c := dnsStack(t, nil, up)
		start := time.Now()
		r := exchangeUDP(t, s, c, 42100, query(t, 7, "www.example.", dns.TypeA, false))
		if r.Rcode != dns.RcodeServerFailure {
			t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
		}
		if took := time.Since(start); took < 400*time.Millisecond {
			t.Errorf("SERVFAIL after %v, before the 500ms timeout: the forgery ended the wait", took)
		}
		if st := s.DNSStats(); st.UpstreamIgnored == 0 {
			t.Errorf("stats %+v: the forgery was not counted as ignored", st)
		}
	})
}

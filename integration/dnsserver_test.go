package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// TTLs of the test DNS server's answers. They are distinct and small so a
// test can tell whether a caching forwarder passed an answer on fresh (60),
// counted it down, or used the negative-caching TTL (30) from the SOA.
const (
	testDNSAnswerTTL   = 60
	testDNSNegativeTTL = 30
)

// testDNSSOA is the SOA sent in the authority section of NXDOMAIN and
// NODATA answers; resolvers take the negative-caching TTL from it (RFC 2308:
// the lesser of its own TTL and its MINIMUM field).
var testDNSSOA = &dns.SOA{
	Hdr:     dns.RR_Header{Name: ".", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: testDNSNegativeTTL},
	Ns:      "ns.test.",
	Mbox:    "hostmaster.test.",
	Serial:  1,
	Refresh: 3600,
	Retry:   600,
	Expire:  86400,
	Minttl:  testDNSNegativeTTL,
}

// testDNS is an authoritative-only DNS server for tests, listening on UDP
// and TCP port 53 of one address inside a lab namespace. It answers A
// queries for its records and NXDOMAIN for every other name, and counts the
// queries it answered so that tests can tell whether (and how) a forwarder
// asked upstream or answered from its cache.
type testDNS struct {
	Addr netip.Addr

	records map[string]netip.Addr // canonical FQDN (lower case, trailing dot)
	servers []*dns.Server

	mu          sync.Mutex
	byTransport map[string]int // "udp", "tcp"
	byName      map[string]int // canonical FQDN of the question
}

// serveDNS starts a testDNS on addr:53 (UDP and TCP) inside ns, with
// records mapping names (a trailing dot is optional, case does not matter)
// to IPv4 addresses. It is stopped when the test ends.
func serveDNS(t *testing.T, ns *lab.NS, addr netip.Addr, records map[string]string) *testDNS {
	t.Helper()
	recs, err := parseDNSRecords(records)
	if err != nil {
		t.Fatalf("test DNS server records: %v", err)
	}
	if !addr.Is4() {
		t.Fatalf("test DNS server address %s: want an IPv4 address", addr)
	}
	s := &testDNS{
		Addr:        addr,
		records:     recs,
		byTransport: map[string]int{},
		byName:      map[string]int{},
	}
	hostPort := netip.AddrPortFrom(addr, 53).String()
	// The sockets are created inside ns; the servers' goroutines may then
	// run on any thread.
	pc, err := ns.ListenPacket("udp4", hostPort)
	if err != nil {
		t.Fatalf("test DNS server: UDP %s in %s: %v", hostPort, ns.Name, err)
	}
	ln, err := ns.Listen("tcp4", hostPort)
	if err != nil {
		pc.Close()
		t.Fatalf("test DNS server: TCP %s in %s: %v", hostPort, ns.Name, err)
	}
	s.servers = []*dns.Server{
		{PacketConn: pc, Handler: s},
		{Listener: ln, Handler: s},
	}
	var stopped sync.WaitGroup
	errs := make(chan error, len(s.servers))
	for _, srv := range s.servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		stopped.Add(1)
		go func() {
			defer stopped.Done()
			errs <- srv.ActivateAndServe()
		}()
		// Shutdown refuses a server that has not started yet, so the
		// cleanup below could otherwise leak it.
		select {
		case <-started:
		case err := <-errs:
			pc.Close()
			ln.Close()
			t.Fatalf("test DNS server on %s in %s did not start: %v", hostPort, ns.Name, err)
		case <-time.After(5 * time.Second):
			pc.Close()
			ln.Close()
			t.Fatalf("test DNS server on %s in %s not serving after 5s", hostPort, ns.Name)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, srv := range s.servers {
			if err := srv.ShutdownContext(ctx); err != nil {
				t.Errorf("stopping the test DNS server on %s: %v", hostPort, err)
			}
		}
		done := make(chan struct{})
		go func() { stopped.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			t.Errorf("test DNS server on %s still serving 5s after shutdown", hostPort)
		}
	})
	return s
}

// parseDNSRecords checks and canonicalises serveDNS's records.
func parseDNSRecords(records map[string]string) (map[string]netip.Addr, error) {
	out := make(map[string]netip.Addr, len(records))
	for name, value := range records {
		if _, ok := dns.IsDomainName(name); !ok || name == "" || name == "." {
			return nil, fmt.Errorf("%q is not a domain name", name)
		}
		a, err := netip.ParseAddr(value)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("%s: %q is not an IPv4 address", name, value)
		}
		key := dns.CanonicalName(name)
		if prev, dup := out[key]; dup && prev != a {
			return nil, fmt.Errorf("%s given twice, as %s and %s", key, prev, a)
		}
		out[key] = a
	}
	return out, nil
}

// ServeDNS implements dns.Handler.
func (s *testDNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	transport := "udp"
	if _, ok := w.LocalAddr().(*net.TCPAddr); ok {
		transport = "tcp"
	}
	name := ""
	if len(req.Question) > 0 {
		name = dns.CanonicalName(req.Question[0].Name)
	}
	s.mu.Lock()
	s.byTransport[transport]++
	if name != "" {
		s.byName[name]++
	}
	s.mu.Unlock()

	resp := s.answer(req)
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(dns.DefaultMsgSize, false)
	}
	// A client that has gone away is no concern of the server's.
	_ = w.WriteMsg(resp)
}

// answer builds the reply to one query.
func (s *testDNS) answer(req *dns.Msg) *dns.Msg {
	resp := new(dns.Msg)
	switch {
	case req.Opcode != dns.OpcodeQuery:
		return resp.SetRcode(req, dns.RcodeNotImplemented)
	case len(req.Question) != 1:
		return resp.SetRcodeFormatError(req)
	}
	q := req.Question[0]
	resp.SetReply(req)
	resp.Authoritative = true
	addr, known := s.records[dns.CanonicalName(q.Name)]
	switch {
	case q.Qclass != dns.ClassINET:
		resp.Rcode = dns.RcodeRefused
	case !known:
		resp.Rcode = dns.RcodeNameError
		resp.Ns = []dns.RR{dns.Copy(testDNSSOA)}
	case q.Qtype == dns.TypeA:
		resp.Answer = []dns.RR{&dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: testDNSAnswerTTL},
			A:   addr.AsSlice(),
		}}
	default:
		// The name exists but has no record of this type: NODATA.
		resp.Ns = []dns.RR{dns.Copy(testDNSSOA)}
	}
	return resp
}

// Queries returns how many queries arrived over transport ("udp" or "tcp").
func (s *testDNS) Queries(transport string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byTransport[strings.ToLower(transport)]
}

// QueriesFor returns how many queries asked about name (any type, any
// transport; a trailing dot is optional, case does not matter).
func (s *testDNS) QueriesFor(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byName[dns.CanonicalName(name)]
}

// digReply is what one dig run reported.
type digReply struct {
	Status    string   // NOERROR, NXDOMAIN, ...
	Answer    []dns.RR // answer section
	Authority []dns.RR // authority section
	Output    string   // dig's whole output, for failure messages
}

// digIn runs `dig @server name qtype` in ns (one try, +tcp if tcp) and parses
// the status line and the answer and authority sections.
func digIn(t *testing.T, ns *lab.NS, server netip.Addr, name, qtype string, tcp bool) digReply {
	t.Helper()
	args := []string{"dig", "@" + server.String(), name, qtype, "+tries=1", "+time=3", "+nocookie"}
	if tcp {
		args = append(args, "+tcp")
	}
	out, code := runIn(t, ns, 10*time.Second, args...)
	if code != 0 {
		t.Fatalf("%s in %s: exit %d:\n%s", strings.Join(args, " "), ns.Name, code, out)
	}
	res, err := parseDig(out)
	if err != nil {
		t.Fatalf("%s in %s: %v:\n%s", strings.Join(args, " "), ns.Name, err, out)
	}
	return res
}

// parseDig reads dig's default output format.
func parseDig(out string) (digReply, error) {
	res := digReply{Output: out}
	var section *[]dns.RR
	for line := range strings.SplitSeq(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.Contains(line, "->>HEADER<<-"):
			_, rest, ok := strings.Cut(line, "status: ")
			if !ok {
				return res, errors.New("header line without a status")
			}
			res.Status, _, _ = strings.Cut(rest, ",")
		case line == ";; ANSWER SECTION:":
			section = &res.Answer
		case line == ";; AUTHORITY SECTION:":
			section = &res.Authority
		case line == "" || strings.HasPrefix(line, ";"):
			section = nil
		case section != nil:
			rr, err := dns.NewRR(line)
			if err != nil {
				return res, fmt.Errorf("record %q: %w", line, err)
			}
			*section = append(*section, rr)
		}
	}
	if res.Status == "" {
		return res, errors.New("no status in dig's output")
	}
	return res, nil
}

func requireDig(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("dig"); err != nil {
		t.Fatal("dig is required (apt-get install -y --no-install-recommends dnsutils)")
	}
}

// Mistakes in a test's records or in dig's output are reported, not
// glossed over and not a panic.
func TestDNSHelpersRejectMalformedInput(t *testing.T) {
	records := []struct {
		name    string
		records map[string]string
		wantErr string // "" = accepted
	}{
		{"names with and without a trailing dot are accepted", map[string]string{"a.test": "192.0.2.1", "b.test.": "192.0.2.2"}, ""},
		{"an empty name is refused", map[string]string{"": "192.0.2.1"}, "not a domain name"},
		{"the root is refused", map[string]string{".": "192.0.2.1"}, "not a domain name"},
		{"a name with an empty label is refused", map[string]string{"a..test": "192.0.2.1"}, "not a domain name"},
		{"an IPv6 address is refused", map[string]string{"a.test": "2001:db8::1"}, "not an IPv4 address"},
		{"text that is no address is refused", map[string]string{"a.test": "localhost"}, "not an IPv4 address"},
		{"one name with two addresses is refused", map[string]string{"a.test": "192.0.2.1", "A.TEST.": "192.0.2.2"}, "given twice"},
	}
	for _, c := range records {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseDNSRecords(c.records)
			switch {
			case c.wantErr == "" && err != nil:
				t.Errorf("refused: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Errorf("error %v, want one with %q", err, c.wantErr)
			}
		})
	}

	outputs := []struct {
		name    string
		out     string
		wantErr string
	}{
		{"output without a header is an error", ";; connection timed out; no servers could be reached\n", "no status"},
		{"a header without a status is an error", ";; ->>HEADER<<- opcode: QUERY, id: 1\n", "without a status"},
		{"an answer line that is no record is an error", ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n;; ANSWER SECTION:\nwan.test. 60 IN A 300.1.1.1\n", "record"},
		{"a well-formed answer is read", ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n;; ANSWER SECTION:\nwan.test. 60 IN A 192.0.2.1\n", ""},
	}
	for _, c := range outputs {
		t.Run("dig "+c.name, func(t *testing.T) {
			res, err := parseDig(c.out)
			if c.wantErr == "" {
				if err != nil || res.Status != "NOERROR" || len(res.Answer) != 1 {
					t.Errorf("got %+v, %v; want NOERROR with one answer", res, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("error %v, want one with %q", err, c.wantErr)
			}
		})
	}
}

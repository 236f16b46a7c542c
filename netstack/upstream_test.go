package netstack

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"
)

// ephemeralPorts reads the ports the kernel gives sockets in the test's
// network namespace (net.ipv4.ip_local_port_range).
func ephemeralPorts(t *testing.T) (first, last uint16) {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		t.Fatalf("ip_local_port_range %q", b)
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || hi-lo < 100 {
		t.Fatalf("ip_local_port_range %q", b)
	}
	return uint16(lo), uint16(hi)
}

// lockedBuffer collects log lines written from any goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestUpstreamSocketsNeverUseAPortTheRouterOwns(t *testing.T) {
	lo, hi := ephemeralPorts(t)
	mid := lo + (hi-lo)/2

	t.Run("with half the ephemeral ports the router's, every UDP query and TCP retry leaves from another port", func(t *testing.T) {
		owned := func(p uint16) bool { return p >= lo && p <= mid }
		// Truncated over UDP, so that each query is asked again over TCP.
		up := startUpstream(t, func(q *dns.Msg, network string) *dns.Msg {
			r := answerA("198.18.7.7", 300)(q, network)
			r.Truncated = network == "udp"
			return r
		})
		s, c := newTestStack(t, Config{DNSUpstreams: []netip.AddrPort{up.addr}, DNSTimeout: 2 * time.Second, OwnedPort: owned})
		const queries = 30
		for i := range queries {
			name := fmt.Sprintf("host%d.example.", i)
			if a := onlyA(t, exchangeUDP(t, s, c, uint16(41000+i), query(t, uint16(i), name, dns.TypeA, true))); a.A.String() != "198.18.7.7" {
				t.Fatalf("%s: answer %v", name, a)
			}
		}
		ports := up.sourcePorts()
		if up.count("udp") != queries || up.count("tcp") != queries || len(ports) != 2*queries {
			t.Fatalf("upstream saw %d UDP and %d TCP queries from %d ports, want %d each", up.count("udp"), up.count("tcp"), len(ports), queries)
		}
		for _, p := range ports {
			if owned(p) {
				t.Errorf("a query left from port %d, which the router owns (%d-%d)", p, lo, mid)
			}
		}
		// Each socket had an even chance of an owned port: without retries
		// the test proved nothing.
		if st := s.DNSStats(); st.OwnedPortRetries == 0 {
			t.Errorf("no socket was given an owned port in %d: the kernel's choice was not exercised (stats %+v)", 2*queries, st)
		}
		t.Logf("%d queries, %d sockets given a router's port and opened again", 2*queries, s.DNSStats().OwnedPortRetries)
	})

	t.Run("when every port the kernel gives out is the router's, nothing is sent and the client gets SERVFAIL", func(t *testing.T) {
		up := startUpstream(t, answerA("198.18.7.7", 300))
		logs := &lockedBuffer{}
		c := newCapture()
		s, err := New(Config{Address: serviceAddr, Output: c.output, Log: zerolog.New(logs),
			DNSUpstreams: []netip.AddrPort{up.addr}, DNSTimeout: 2 * time.Second,
			OwnedPort: func(uint16) bool { return true }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		start := time.Now()
		for i := range 2 {
			r := exchangeUDP(t, s, c, uint16(42000+i), query(t, uint16(i), fmt.Sprintf("none%d.example.", i), dns.TypeA, false))
			if r.Rcode != dns.RcodeServerFailure {
				t.Fatalf("rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
			}
		}
		if elapsed := time.Since(start); elapsed > time.Second {
			t.Errorf("two refusals took %v: the forwarder waited instead of giving up at once", elapsed)
		}
		if up.total() != 0 {
			t.Errorf("the upstream got %d queries from ports the router owns", up.total())
		}
		if got := s.DNSStats().OwnedPortRetries; got != 2*maxPortTries {
			t.Errorf("%d sockets opened again, want %d per query", got, maxPortTries)
		}
		if n := strings.Count(logs.String(), "no local port outside the router's"); n != 1 {
			t.Errorf("logged %d times, want once:\n%s", n, logs)
		}
	})
}

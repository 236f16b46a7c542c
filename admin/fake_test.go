package admin

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// fakeSource returns a fixed snapshot and counts the calls.
type fakeSource struct {
	snap  Snapshot
	calls atomic.Int64
}

func (f *fakeSource) Snapshot() Snapshot {
	f.calls.Add(1)
	return f.snap
}

var (
	ap   = netip.MustParseAddrPort
	addr = netip.MustParseAddr
)

// lanPrefix is the LAN of the fake router; lanClient is a host on it.
var (
	lanPrefix = netip.MustParsePrefix("192.168.77.0/24")
	lanClient = "192.168.77.10:51000"
)

// fakeSnapshot is a busy router: every table has rows, and the values are
// distinct enough that a test can tell which one it is looking at.
func fakeSnapshot() Snapshot {
	return Snapshot{
		Time:        time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Uptime:      3723.25,
		Version:     "1.2.3",
		WANAddr:     addr("198.18.0.2"),
		WANIf:       "wan0",
		LANPrefixes: []netip.Prefix{lanPrefix, netip.MustParsePrefix("10.1.0.0/16")},
		ServiceAddr: addr("192.0.2.53"),
		Traffic: []Traffic{
			{LANToWAN, "tcp", 100, 150000, 3},
			{WANToLAN, "tcp", 90, 900000, 0},
			{LANToWAN, "udp", 10, 1000, 0},
			{WANToLAN, "udp", 5, 500, 0},
			{LANToWAN, "esp", 7, 700, 0},
		},
		Drops: map[string]uint64{"malformed": 3, "esp_squelched": 2, "unsolicited": 0},
		Mappings: []Mapping{
			{Proto: "udp", LAN: ap("192.168.77.11:5353"), WAN: ap("198.18.0.2:20002"), Remote: ap("198.18.1.2:53"),
				Flows: 1, Age: 5, Idle: 0.5},
			{Proto: "tcp", LAN: ap("192.168.77.10:40000"), WAN: ap("198.18.0.2:20001"), Remote: ap("198.18.1.1:443"),
				Flows: 2, Age: 60, Idle: 1.5},
			{Proto: "tcp", LAN: ap("192.168.77.10:80"), WAN: ap("198.18.0.2:8080"), Remote: ap("198.18.9.9:33000"),
				Flows: 1, Static: true, Age: 120, Idle: 3},
		},
		Ports: []PortUse{{"tcp", 2, 12768}, {"udp", 1, 12768}, {"icmp", 0, 65536}},
		Flows: []FlowCount{{"tcp", "established", 2}, {"udp", "replied", 1}, {"tcp", "syn_sent", 1}},
		Hosts: []HostUsage{
			{Host: addr("192.168.77.10"), Flows: 3, Mappings: 2},
			{Host: addr("192.168.77.20"), Flows: 1, Mappings: 1, ESP: 1, IKE: 1},
			{Host: addr("192.168.77.30"), Flows: 1, Calls: 2, Fragments: 4},
		},
		Limits: []LimitCount{
			{Limit: "max_flows_per_host", Refused: 7},
			{Limit: "max_flows", Evicted: 3},
			{Limit: "host_flow_rate"},
		},
		ICMPErrors: ICMPErrors{Sent: 12, Suppressed: 34},
		WANChanges: WANChanges{Changes: 2, MappingsDropped: 17, FlowsDropped: 23},
		VPN: VPN{
			IKE: []IKESession{{LANHost: ap("192.168.77.20:500"), Remote: ap("198.18.2.1:500"), WANPort: 500,
				InitiatorSPI: "0123456789abcdef", ResponderSPI: "fedcba9876543210", Age: 10, Idle: 2}},
			ESP: []ESPPair{
				{LANHost: addr("192.168.77.20"), Remote: addr("198.18.2.1"), OutSPI: "c0ffee01", InSPI: "beef0002",
					State: ESPEstablished, Age: 9, Idle: 0.25,
					Out: TunnelHealth{Packets: 1000, Bytes: 150000, Sequenced: true, Lost: 0, Late: 2},
					In:  TunnelHealth{Packets: 990, Bytes: 148500, Sequenced: true, Lost: 10, Late: 0}},
				{LANHost: addr("192.168.77.21"), Remote: addr("198.18.2.2"), OutSPI: "12345678",
					State: ESPWaiting, Age: 1},
				{LANHost: addr("192.168.77.22"), Remote: addr("198.18.2.3"), OutSPI: "0badf00d",
					State: ESPSquelched, Age: 40, Idle: 30},
				{LANHost: addr("192.168.77.23"), Remote: addr("198.18.2.4"), OutSPI: "aaaa0001", InSPI: "bbbb0002",
					State: ESPEstablished, Age: 100, Idle: 1},
				{LANHost: addr("192.168.77.24"), Remote: addr("198.18.2.5"), OutSPI: "aaaa0003", InSPI: "bbbb0004",
					State: ESPTentative, Age: 1},
				{LANHost: addr("192.168.77.25"), Remote: addr("198.18.2.6"), InSPI: "bbbb0006",
					State: ESPInboundOnly, Age: 2},
			},
			PPTP: []PPTPConn{
				{Client: ap("192.168.77.30:50000"), Server: ap("198.18.3.1:1723"), State: "open", Calls: []PPTPCall{
					{CallID: 1, MasqCallID: 40001, PeerCallID: 777, State: "established", GREOut: 50, GREIn: 60, Age: 30,
						Out: TunnelHealth{Packets: 50, Sequenced: true}, In: TunnelHealth{Packets: 60}},
					{CallID: 2, MasqCallID: 40002, PeerCallID: 778, State: "setup", Age: 1},
				}},
				{Client: ap("192.168.77.31:50001"), Server: ap("198.18.3.2:1723"), State: "closed"},
			},
			AH: []AHRefusal{{LANHost: addr("192.168.77.40"), Remote: addr("198.18.4.1"), Packets: 12, LastSeen: 7}},
		},
		DNS: DNSStats{UDPQueries: 10, TCPQueries: 2, CacheHits: 4, UpstreamFailures: 1, Answered: 11},
	}
}

// hostile is a value that would run a script if it reached the page
// unescaped.
const hostile = `<script>alert("x")</script>`

// serve runs one request through a handler for the LAN, as lanClient.
func serve(t *testing.T, src Source, method, path string) *httptest.ResponseRecorder {
	t.Helper()
	h := NewHandler(src, Options{Allow: []netip.Prefix{lanPrefix}, Log: zerolog.Nop()})
	req := httptest.NewRequest(method, path, nil)
	req.RemoteAddr = lanClient
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code == http.StatusForbidden || rec.Code == http.StatusUnauthorized {
		t.Fatalf("%s %s: access refused (%d): %s", method, path, rec.Code, rec.Body)
	}
	return rec
}

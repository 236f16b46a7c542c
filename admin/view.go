package admin

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// The status page and `vpnmasq status` show the same tables; both are
// built here, as rows of strings, so the two cannot drift apart.

// view is a Snapshot laid out for people.
type view struct {
	Version     string
	Time        string
	WAN         string // "198.18.0.2 on eth1"
	LANPrefixes string
	ServiceAddr string
	Uptime      string
	Tables      []table
	// Charts are the graphs of the last hour, on the page only; none
	// when the Source keeps no History.
	Charts        []chart
	ChartInterval string
}

// table is one section. ID is the HTML element id, which scripts and tests
// may rely on.
type table struct {
	ID      string
	Title   string
	Columns []column
	Rows    [][]string
	More    int // rows left out
	Hint    string
}

type column struct {
	Name string
	Num  bool // right-aligned on the page
}

// maxPageMappings bounds the page, which a browser reloads every few
// seconds; /api/v1/mappings pages through all of them.
const maxPageMappings = 200

// newView lays out s. It shows the mappings s holds, at most maxMappings
// of them (< 0: no limit), and says how many of s.MappingsTotal it left
// out.
func newView(s Snapshot, maxMappings int) view {
	v := view{
		Version:     orDash(s.Version),
		Time:        s.Time.UTC().Format("2006-01-02 15:04:05 UTC"),
		WAN:         orDash(addrString(s.WANAddr)),
		LANPrefixes: orDash(joinStringers(s.LANPrefixes)),
		ServiceAddr: orDash(addrString(s.ServiceAddr)),
		Uptime:      s.Uptime.String(),
	}
	if s.WANIf != "" {
		v.WAN += " on " + s.WANIf
	}
	if s.Time.IsZero() {
		v.Time = "-"
	}
	v.Tables = []table{
		ikeTable(s.VPN.IKE),
		espTable(s.VPN.ESP),
		pptpTable(s.VPN.PPTP),
		ahTable(s.VPN.AH),
		hostTable(s.Hosts),
		mappingTable(s.Mappings, s.MappingsTotal, maxMappings),
		flowTable(s.Flows),
		portTable(s.Ports),
		trafficTable(s.Traffic),
		dropTable(s.Drops),
		limitTable(s.Limits),
		icmpTable(s.ICMPErrors),
		dnsTable(s.DNS),
	}
	return v
}

func cols(spec ...string) []column {
	c := make([]column, len(spec))
	for i, s := range spec {
		name, num := strings.CutPrefix(s, "#")
		c[i] = column{Name: name, Num: num}
	}
	return c
}

func ikeTable(sessions []IKESession) table {
	t := table{ID: "vpn-ike", Title: "IPsec IKE sessions",
		Columns: cols("LAN host", "Remote", "#WAN port", "Initiator SPI", "Responder SPI", "#Age", "#Idle")}
	for _, s := range sessions {
		t.Rows = append(t.Rows, []string{addrPortString(s.LANHost), addrPortString(s.Remote),
			strconv.Itoa(int(s.WANPort)), orDash(s.InitiatorSPI), orDash(s.ResponderSPI),
			s.Age.String(), s.Idle.String()})
	}
	return t
}

func espTable(pairs []ESPPair) table {
	t := table{ID: "vpn-esp", Title: "IPsec ESP",
		Columns: cols("LAN host", "Remote", "Out SPI", "In SPI", "State", "#Age", "#Idle", "Out: packets, lost, late", "In: packets, lost, late")}
	for _, p := range pairs {
		t.Rows = append(t.Rows, []string{addrString(p.LANHost), addrString(p.Remote),
			orDash(p.OutSPI), orDash(p.InSPI), orDash(p.State), p.Age.String(), p.Idle.String(),
			healthString(p.Out), healthString(p.In)})
	}
	return t
}

// pptpTable has one row per call, each naming its control connection; a
// connection without calls still gets a row so that it shows at all.
func pptpTable(conns []PPTPConn) table {
	t := table{ID: "vpn-pptp", Title: "PPTP calls",
		Columns: cols("Client", "Server", "Control", "#Call ID", "#Masq Call ID", "#Server Call ID",
			"Call state", "#GRE out", "#GRE in", "#Age", "Out: packets, lost, late", "In: packets, lost, late")}
	for _, c := range conns {
		conn := []string{addrPortString(c.Client), addrPortString(c.Server), orDash(c.State)}
		if len(c.Calls) == 0 {
			t.Rows = append(t.Rows, append(conn, "-", "-", "-", "no calls", "-", "-", "-", "-", "-"))
		}
		for _, call := range c.Calls {
			t.Rows = append(t.Rows, append(slices.Clip(conn),
				strconv.Itoa(int(call.CallID)), strconv.Itoa(int(call.MasqCallID)), strconv.Itoa(int(call.PeerCallID)),
				orDash(call.State), strconv.FormatUint(call.GREOut, 10), strconv.FormatUint(call.GREIn, 10),
				call.Age.String(), healthString(call.Out), healthString(call.In)))
		}
	}
	return t
}

func ahTable(refusals []AHRefusal) table {
	t := table{ID: "vpn-ah", Title: "IPsec AH refused (AH cannot be masqueraded)",
		Columns: cols("LAN host", "Remote", "#Packets", "#Last seen (ago)")}
	for _, a := range refusals {
		t.Rows = append(t.Rows, []string{addrString(a.LANHost), addrString(a.Remote),
			strconv.FormatUint(a.Packets, 10), a.LastSeen.String()})
	}
	return t
}

// mappingTable sorts by protocol and WAN port, the order of the NAT's own
// listing, so rows keep their place from one refresh to the next.
func mappingTable(mappings []Mapping, total, limit int) table {
	total = max(total, len(mappings))
	t := table{ID: "mappings", Title: fmt.Sprintf("NAT mappings (%d)", total),
		Columns: cols("Proto", "LAN", "WAN", "Remote (latest)", "#Flows", "Static", "#Age", "#Idle")}
	ms := slices.Clone(mappings)
	slices.SortStableFunc(ms, func(a, b Mapping) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.WAN.Port(), b.WAN.Port()), a.WAN.Addr().Compare(b.WAN.Addr()))
	})
	if limit >= 0 && len(ms) > limit {
		ms = ms[:limit]
	}
	if t.More = total - len(ms); t.More > 0 {
		t.Hint = "the full list is at /api/v1/mappings?offset=" + strconv.Itoa(len(ms))
	}
	for _, m := range ms {
		static := ""
		if m.Static {
			static = "forward"
		}
		t.Rows = append(t.Rows, []string{orDash(m.Proto), addrPortString(m.LAN), addrPortString(m.WAN),
			addrPortString(m.Remote), strconv.Itoa(m.Flows), static, m.Age.String(), m.Idle.String()})
	}
	return t
}

// hostTable shows the LAN hosts holding the most NAT state, in the order
// the NAT ranks them (most flows first).
func hostTable(hosts []HostUsage) table {
	t := table{ID: "hosts", Title: "LAN hosts (most state first)",
		Columns: cols("Host", "#Flows", "#Mappings", "#ESP", "#IKE", "#PPTP calls", "#Fragments")}
	for _, h := range hosts {
		t.Rows = append(t.Rows, []string{addrString(h.Host), strconv.Itoa(h.Flows), strconv.Itoa(h.Mappings),
			strconv.Itoa(h.ESP), strconv.Itoa(h.IKE), strconv.Itoa(h.Calls), strconv.Itoa(h.Fragments)})
	}
	return t
}

// flowTable lists the flows by protocol and state, in protocol order.
func flowTable(flows []FlowCount) table {
	t := table{ID: "flows", Title: "NAT flows", Columns: cols("Proto", "State", "#Flows")}
	fs := slices.Clone(flows)
	slices.SortStableFunc(fs, func(a, b FlowCount) int {
		return cmp.Or(cmp.Compare(protoRank(a.Proto), protoRank(b.Proto)), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.State, b.State))
	})
	for _, f := range fs {
		if f.Flows > 0 {
			t.Rows = append(t.Rows, []string{orDash(f.Proto), orDash(f.State), strconv.Itoa(f.Flows)})
		}
	}
	return t
}

// limitTable lists the limits that refused or evicted anything, the most
// active first.
func limitTable(limits []LimitCount) table {
	t := table{ID: "limits", Title: "Limits reached", Columns: cols("Limit", "#Refused", "#Evicted")}
	ls := slices.Clone(limits)
	slices.SortStableFunc(ls, func(a, b LimitCount) int {
		return cmp.Or(cmp.Compare(b.Refused+b.Evicted, a.Refused+a.Evicted), cmp.Compare(a.Limit, b.Limit))
	})
	for _, l := range ls {
		if l.Refused+l.Evicted > 0 {
			t.Rows = append(t.Rows, []string{orDash(l.Limit), strconv.FormatUint(l.Refused, 10), strconv.FormatUint(l.Evicted, 10)})
		}
	}
	return t
}

func icmpTable(e ICMPErrors) table {
	return table{ID: "icmp-errors", Title: "ICMP errors sent by the router",
		Columns: cols("#Sent", "#Suppressed (rate limit)"),
		Rows:    [][]string{{strconv.FormatUint(e.Sent, 10), strconv.FormatUint(e.Suppressed, 10)}}}
}

func portTable(ports []PortUse) table {
	t := table{ID: "ports", Title: "WAN ports",
		Columns: cols("Proto", "#In use", "#Size", "#Used")}
	for _, p := range ports {
		used := "-"
		if p.Size > 0 {
			used = fmt.Sprintf("%.1f%%", 100*float64(p.InUse)/float64(p.Size))
		}
		t.Rows = append(t.Rows, []string{orDash(p.Proto), strconv.Itoa(p.InUse), strconv.Itoa(p.Size), used})
	}
	return t
}

// protoOrder is the order of the traffic rows; other protocols follow in
// alphabetical order.
var protoOrder = []string{"tcp", "udp", "icmp", "gre", "esp", "ah", "other"}

func protoRank(p string) int {
	if i := slices.Index(protoOrder, p); i >= 0 {
		return i
	}
	return len(protoOrder)
}

// trafficTable puts both directions of a protocol on one row.
func trafficTable(traffic []Traffic) table {
	t := table{ID: "traffic", Title: "Traffic",
		Columns: cols("Proto", "#LAN→WAN packets", "#LAN→WAN bytes", "#WAN→LAN packets", "#WAN→LAN bytes")}
	type counts struct{ outP, outB, inP, inB uint64 }
	byProto := map[string]*counts{}
	var protos []string
	for _, tr := range traffic {
		c := byProto[tr.Proto]
		if c == nil {
			c = &counts{}
			byProto[tr.Proto] = c
			protos = append(protos, tr.Proto)
		}
		switch tr.Direction {
		case LANToWAN:
			c.outP += tr.Packets
			c.outB += tr.Bytes
		case WANToLAN:
			c.inP += tr.Packets
			c.inB += tr.Bytes
		}
	}
	slices.SortFunc(protos, func(a, b string) int { return cmp.Or(cmp.Compare(protoRank(a), protoRank(b)), cmp.Compare(a, b)) })
	for _, p := range protos {
		c := byProto[p]
		t.Rows = append(t.Rows, []string{p, strconv.FormatUint(c.outP, 10), humanBytes(c.outB),
			strconv.FormatUint(c.inP, 10), humanBytes(c.inB)})
	}
	return t
}

// dropTable lists the reasons that occurred, the most frequent first.
func dropTable(drops map[string]uint64) table {
	t := table{ID: "drops", Title: "Drops", Columns: cols("Reason", "#Packets")}
	type dropCount struct {
		reason string
		n      uint64
	}
	var ds []dropCount
	for reason, n := range drops {
		if n > 0 {
			ds = append(ds, dropCount{reason, n})
		}
	}
	slices.SortFunc(ds, func(a, b dropCount) int { return cmp.Or(cmp.Compare(b.n, a.n), cmp.Compare(a.reason, b.reason)) })
	for _, d := range ds {
		t.Rows = append(t.Rows, []string{d.reason, strconv.FormatUint(d.n, 10)})
	}
	return t
}

func dnsTable(d DNSStats) table {
	return table{ID: "dns", Title: "DNS forwarder",
		Columns: cols("#UDP queries", "#TCP queries", "#Cache hits", "#Upstream failures", "#Answered"),
		Rows: [][]string{{strconv.FormatUint(d.UDPQueries, 10), strconv.FormatUint(d.TCPQueries, 10),
			strconv.FormatUint(d.CacheHits, 10), strconv.FormatUint(d.UpstreamFailures, 10),
			strconv.FormatUint(d.Answered, 10)}}}
}

// humanBytes reads like "812 B" or "1.5 MiB"; the exact count is in the
// JSON and the metrics.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// healthString shows one direction of a tunnel: "1200, 3 lost (0.2 %), 1
// late"; the packet count alone when the sender numbers nothing; "-" before
// the first packet.
func healthString(h TunnelHealth) string {
	switch {
	case h.Packets == 0:
		return "-"
	case !h.Sequenced:
		return strconv.FormatUint(h.Packets, 10) + ", not numbered"
	}
	return fmt.Sprintf("%d, %d lost (%.1f %%), %d late", h.Packets, h.Lost, h.LossPercent(), h.Late)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// addrString and addrPortString show an unset address as "-" rather than
// "invalid IP".
func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

func addrPortString(a netip.AddrPort) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

func joinStringers[T fmt.Stringer](list []T) string {
	s := make([]string, len(list))
	for i, v := range list {
		s[i] = v.String()
	}
	return strings.Join(s, ", ")
}

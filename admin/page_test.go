package admin

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/html"
)

// tableIDs are the ids the page promises.
var tableIDs = []string{"vpn-ike", "vpn-esp", "vpn-pptp", "vpn-ah", "hosts", "mappings", "flows", "traffic", "drops", "limits", "icmp-errors", "dns"}

// page fetches / and parses it.
func page(t *testing.T, snap Snapshot) (string, *html.Node) {
	t.Helper()
	rec := serve(t, &fakeSource{snap: snap}, "GET", "/")
	if rec.Code != 200 {
		t.Fatalf("/: %d %s", rec.Code, rec.Body)
	}
	body := rec.Body.String()
	doc, err := html.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return body, doc
}

// find returns the first element for which match is true.
func find(n *html.Node, match func(*html.Node) bool) *html.Node {
	if n.Type == html.ElementNode && match(n) {
		return n
	}
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if f := find(c, match); f != nil {
			return f
		}
	}
	return nil
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func text(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return strings.TrimSpace(b.String())
}

// tableRows returns the body rows of the table with this id, as cell texts.
func tableRows(t *testing.T, doc *html.Node, id string) [][]string {
	t.Helper()
	tbl := find(doc, func(n *html.Node) bool { return n.Data == "table" && attr(n, "id") == id })
	if tbl == nil {
		t.Fatalf("no table with id %q", id)
	}
	tbody := find(tbl, func(n *html.Node) bool { return n.Data == "tbody" })
	if tbody == nil {
		t.Fatalf("table %q has no tbody", id)
	}
	var rows [][]string
	for tr := tbody.FirstChild; tr != nil; tr = tr.NextSibling {
		if tr.Type != html.ElementNode || tr.Data != "tr" {
			continue
		}
		var cells []string
		for td := tr.FirstChild; td != nil; td = td.NextSibling {
			if td.Type == html.ElementNode && td.Data == "td" {
				cells = append(cells, text(td))
			}
		}
		rows = append(rows, cells)
	}
	return rows
}

func TestStatusPage(t *testing.T) {
	body, doc := page(t, fakeSnapshot())

	t.Run("it refreshes itself every five seconds", func(t *testing.T) {
		meta := find(doc, func(n *html.Node) bool { return n.Data == "meta" && attr(n, "http-equiv") == "refresh" })
		if meta == nil || attr(meta, "content") != "5" {
			t.Errorf("no <meta http-equiv=refresh content=5>")
		}
	})
	t.Run("it loads nothing from elsewhere", func(t *testing.T) {
		for _, bad := range []string{"<script", "<link", "src=", "@import", "url(", "http://", "https://"} {
			if strings.Contains(body, bad) {
				t.Errorf("the page contains %q", bad)
			}
		}
	})
	t.Run("the header shows WAN, LAN, service address and uptime", func(t *testing.T) {
		for id, want := range map[string]string{
			"wan": "198.18.0.2 on wan0", "lan": "192.168.77.0/24, 10.1.0.0/16",
			"service": "192.0.2.53", "uptime": "1h2m3s",
		} {
			n := find(doc, func(n *html.Node) bool { return attr(n, "id") == id })
			if n == nil {
				t.Errorf("no element %q", id)
			} else if got := text(n); got != want {
				t.Errorf("%s: %q, want %q", id, got, want)
			}
		}
	})

	cases := []struct {
		id   string
		want [][]string
	}{
		{"vpn-ike", [][]string{{"192.168.77.20:500", "198.18.2.1:500", "500", "0123456789abcdef", "fedcba9876543210", "10s", "2s"}}},
		{"vpn-esp", [][]string{
			{"192.168.77.20", "198.18.2.1", "c0ffee01", "beef0002", "established", "9s", "0s", "1000, 0 lost (0.0 %), 2 late", "990, 10 lost (1.0 %), 0 late"},
			{"192.168.77.21", "198.18.2.2", "12345678", "-", "waiting", "1s", "0s", "-", "-"},
			{"192.168.77.22", "198.18.2.3", "0badf00d", "-", "squelched", "40s", "30s", "-", "-"},
			{"192.168.77.23", "198.18.2.4", "aaaa0001", "bbbb0002", "established", "1m40s", "1s", "-", "-"},
			{"192.168.77.24", "198.18.2.5", "aaaa0003", "bbbb0004", "tentative", "1s", "0s", "-", "-"},
			{"192.168.77.25", "198.18.2.6", "-", "bbbb0006", "inbound-only", "2s", "0s", "-", "-"},
		}},
		{"vpn-pptp", [][]string{
			{"192.168.77.30:50000", "198.18.3.1:1723", "open", "1", "40001", "777", "established", "50", "60", "30s", "50, 0 lost (0.0 %), 0 late", "60, not numbered"},
			{"192.168.77.30:50000", "198.18.3.1:1723", "open", "2", "40002", "778", "setup", "0", "0", "1s", "-", "-"},
			{"192.168.77.31:50001", "198.18.3.2:1723", "closed", "-", "-", "-", "no calls", "-", "-", "-", "-", "-"},
		}},
		{"vpn-ah", [][]string{{"192.168.77.40", "198.18.4.1", "12", "7s"}}},
		{"mappings", [][]string{ // by protocol and WAN port
			{"tcp", "192.168.77.10:80", "198.18.0.2:8080", "198.18.9.9:33000", "1", "forward", "2m0s", "3s"},
			{"tcp", "192.168.77.10:40000", "198.18.0.2:20001", "198.18.1.1:443", "2", "", "1m0s", "2s"},
			{"udp", "192.168.77.11:5353", "198.18.0.2:20002", "198.18.1.2:53", "1", "", "5s", "1s"},
		}},
		{"ports", [][]string{{"tcp", "2", "12768", "0.0%"}, {"udp", "1", "12768", "0.0%"}, {"icmp", "0", "65536", "0.0%"}}},
		{"traffic", [][]string{
			{"tcp", "100", "146.5 KiB", "90", "878.9 KiB"},
			{"udp", "10", "1000 B", "5", "500 B"},
			{"esp", "7", "700 B", "0", "0 B"},
		}},
		{"drops", [][]string{{"malformed", "3"}, {"esp_squelched", "2"}}},
		{"dns", [][]string{{"10", "2", "4", "1", "11"}}},
		{"hosts", [][]string{ // in the NAT's order: most flows first
			{"192.168.77.10", "3", "2", "0", "0", "0", "0"},
			{"192.168.77.20", "1", "1", "1", "1", "0", "0"},
			{"192.168.77.30", "1", "0", "0", "0", "2", "4"},
		}},
		{"flows", [][]string{{"tcp", "established", "2"}, {"tcp", "syn_sent", "1"}, {"udp", "replied", "1"}}},
		{"limits", [][]string{{"max_flows_per_host", "7", "0"}, {"max_flows", "0", "3"}}},
		{"icmp-errors", [][]string{{"12", "34"}}},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("table %s shows the snapshot", tc.id), func(t *testing.T) {
			if got := tableRows(t, doc, tc.id); !slices.EqualFunc(got, tc.want, slices.Equal) {
				t.Errorf("rows:\n got %q\nwant %q", got, tc.want)
			}
		})
	}

	t.Run("every table is there on an idle router, with a row saying none", func(t *testing.T) {
		_, doc := page(t, Snapshot{})
		for _, id := range tableIDs {
			if id == "dns" || id == "icmp-errors" {
				continue // counters: always one row
			}
			if got := tableRows(t, doc, id); !slices.EqualFunc(got, [][]string{{"none"}}, slices.Equal) {
				t.Errorf("%s: %q, want one row \"none\"", id, got)
			}
		}
	})
	t.Run("drops that never happened are left out", func(t *testing.T) {
		_, doc := page(t, Snapshot{Drops: map[string]uint64{"malformed": 0, "martian": 0}})
		if got := tableRows(t, doc, "drops"); !slices.EqualFunc(got, [][]string{{"none"}}, slices.Equal) {
			t.Errorf("rows %q", got)
		}
	})
	t.Run("a long mapping table is cut, saying how many are left out", func(t *testing.T) {
		var s Snapshot
		for i := range maxPageMappings + 100 {
			s.Mappings = append(s.Mappings, Mapping{Proto: "udp", LAN: ap("192.168.77.10:1000"),
				WAN: netip.AddrPortFrom(addr("198.18.0.2"), uint16(20000+i))})
		}
		body, doc := page(t, s)
		if n := len(tableRows(t, doc, "mappings")); n != maxPageMappings {
			t.Errorf("%d rows, want %d", n, maxPageMappings)
		}
		if !strings.Contains(body, "and 100 more") {
			t.Error("no note about the 100 mappings left out")
		}
	})
}

func TestStatusPageEscapes(t *testing.T) {
	s := fakeSnapshot()
	s.Version = hostile
	s.WANIf = hostile
	s.Drops = map[string]uint64{hostile: 1}
	s.Mappings[0].Proto = hostile
	s.VPN.ESP[0].State = hostile
	s.VPN.IKE[0].InitiatorSPI = hostile
	s.VPN.PPTP[0].Calls[0].State = hostile
	s.Traffic[0].Proto = hostile
	body, doc := page(t, s)
	if strings.Contains(body, "<script") {
		t.Fatalf("a value reached the page unescaped:\n%s", body)
	}
	cases := []struct{ id, where string }{
		{"wan", "header"}, {"drops", "table"}, {"mappings", "table"}, {"vpn-esp", "table"},
		{"vpn-ike", "table"}, {"vpn-pptp", "table"}, {"traffic", "table"},
	}
	for _, tc := range cases {
		t.Run("the "+tc.where+" "+tc.id+" shows the value as text", func(t *testing.T) {
			n := find(doc, func(n *html.Node) bool { return attr(n, "id") == tc.id })
			if n == nil {
				t.Fatalf("no %s", tc.id)
			}
			if !strings.Contains(text(n), hostile) {
				t.Errorf("%s does not show %q as text: %q", tc.id, hostile, text(n))
			}
		})
	}
}

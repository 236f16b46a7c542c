package admin

import (
	"encoding/json"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

// listerSource is a router with many mappings that it lists only a page at
// a time; it records every page asked for.
type listerSource struct {
	snap Snapshot
	all  []Mapping

	mu    sync.Mutex
	asked [][2]int // offset, limit
}

func (l *listerSource) Snapshot() Snapshot { return l.snap }

func (l *listerSource) MappingPage(offset, limit int) ([]Mapping, int) {
	l.mu.Lock()
	l.asked = append(l.asked, [2]int{offset, limit})
	l.mu.Unlock()
	return pageOf(l.all, offset, limit), len(l.all)
}

func (l *listerSource) pagesAsked() [][2]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][2]int(nil), l.asked...)
}

func manyMappings(n int) *listerSource {
	l := &listerSource{snap: Snapshot{MappingCounts: map[string]int{"udp": n}}}
	for i := range n {
		l.all = append(l.all, Mapping{Proto: "udp", LAN: ap("192.168.77.10:1000"),
			WAN: netip.AddrPortFrom(addr("198.18.0.2"), uint16(20000+i))})
	}
	return l
}

func TestMappingsArePaged(t *testing.T) {
	const total = 2500
	cases := []struct {
		name       string
		query      string
		wantCode   int
		wantOffset int
		wantLimit  int
		wantLen    int
		wantNext   int // -1: none
	}{
		{"without parameters the first 100 come, with the offset of the next page", "", 200, 0, 100, 100, 100},
		{"offset and limit choose the page", "?offset=300&limit=50", 200, 300, 50, 50, 350},
		{"a limit above 1000 is cut to 1000", "?limit=100000", 200, 0, 1000, 1000, 1000},
		{"the last page has no next offset", "?offset=2400&limit=500", 200, 2400, 500, 100, -1},
		{"an offset past the end is an empty page", "?offset=9999", 200, 9999, 100, 0, -1},
		{"a limit of 0 is refused", "?limit=0", 400, 0, 0, 0, -1},
		{"a negative offset is refused", "?offset=-1", 400, 0, 0, 0, -1},
		{"a limit that is not a number is refused", "?limit=all", 400, 0, 0, 0, -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := manyMappings(total)
			rec := serve(t, src, "GET", "/api/v1/mappings"+tc.query)
			if rec.Code != tc.wantCode {
				t.Fatalf("code %d, want %d: %s", rec.Code, tc.wantCode, rec.Body)
			}
			if tc.wantCode != 200 {
				return
			}
			var got MappingsResponse
			decodeStrict(t, rec.Body.String(), &got)
			if got.Total != total || got.Offset != tc.wantOffset || got.Limit != tc.wantLimit || len(got.Mappings) != tc.wantLen {
				t.Errorf("total %d offset %d limit %d, %d mappings; want %d %d %d, %d",
					got.Total, got.Offset, got.Limit, len(got.Mappings), total, tc.wantOffset, tc.wantLimit, tc.wantLen)
			}
			switch {
			case tc.wantNext < 0 && got.NextOffset != nil:
				t.Errorf("next_offset %d, want none", *got.NextOffset)
			case tc.wantNext >= 0 && (got.NextOffset == nil || *got.NextOffset != tc.wantNext):
				t.Errorf("next_offset %v, want %d", got.NextOffset, tc.wantNext)
			}
			if len(got.Mappings) > 0 && got.Mappings[0] != src.all[tc.wantOffset] {
				t.Errorf("first mapping %+v, want %+v", got.Mappings[0], src.all[tc.wantOffset])
			}
			for _, a := range src.pagesAsked() {
				if a[1] > maxMappingLimit {
					t.Errorf("the source was asked for %d mappings at once", a[1])
				}
			}
		})
	}
}

func TestOnlyWhatShowsMappingsListsThem(t *testing.T) {
	cases := []struct {
		path      string
		wantPages [][2]int
	}{
		{"/metrics", nil},
		{"/healthz", nil},
		{"/api/v1/vpn", nil},
		{"/api/v1/hosts", nil},
		{"/api/v1/status", [][2]int{{0, statusMappings}}},
		{"/", [][2]int{{0, maxPageMappings}}},
	}
	for _, tc := range cases {
		name := tc.path + " never lists a mapping"
		if tc.wantPages != nil {
			name = tc.path + " lists one bounded page of mappings"
		}
		t.Run(name, func(t *testing.T) {
			src := manyMappings(5000)
			if rec := serve(t, src, "GET", tc.path); rec.Code != 200 {
				t.Fatalf("%d %s", rec.Code, rec.Body)
			}
			got := src.pagesAsked()
			if len(got) != len(tc.wantPages) || (len(got) > 0 && got[0] != tc.wantPages[0]) {
				t.Errorf("pages asked %v, want %v", got, tc.wantPages)
			}
		})
	}
	t.Run("the status holds the first page and the total", func(t *testing.T) {
		rec := serve(t, manyMappings(5000), "GET", "/api/v1/status")
		var got Snapshot
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatal(err)
		}
		if len(got.Mappings) != statusMappings || got.MappingsTotal != 5000 || got.MappingCounts["udp"] != 5000 {
			t.Errorf("%d mappings, total %d, counts %v", len(got.Mappings), got.MappingsTotal, got.MappingCounts)
		}
	})
	t.Run("the page shows a bounded table and says how many are left out", func(t *testing.T) {
		rec := serve(t, manyMappings(5000), "GET", "/")
		body := rec.Body.String()
		if n := strings.Count(body, "<td>192.168.77.10:1000</td>"); n != maxPageMappings {
			t.Errorf("%d mapping rows, want %d", n, maxPageMappings)
		}
		if !strings.Contains(body, "NAT mappings (5000)") || !strings.Contains(body, "and 4800 more") {
			t.Error("the page does not say how many mappings there are and how many it left out")
		}
	})
}

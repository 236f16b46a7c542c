package admin

import (
	"encoding/xml"
	"errors"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/html"
)

var t0 = time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)

// at is a snapshot at t0 plus i intervals.
func at(i int, s Snapshot) Snapshot {
	s.Time = t0.Add(time.Duration(i) * HistoryInterval)
	return s
}

func TestHistoryRing(t *testing.T) {
	cases := []struct {
		name     string
		capacity int
		record   int
		want     []int // the intervals of the samples kept, oldest first
	}{
		{"an empty ring has no samples", 3, 0, nil},
		{"a ring not yet full keeps every sample in order", 3, 2, []int{0, 1}},
		{"a full ring keeps every sample in order", 3, 3, []int{0, 1, 2}},
		{"a ring that wrapped keeps the last N in order", 3, 5, []int{2, 3, 4}},
		{"a ring that wrapped twice keeps the last N in order", 3, 7, []int{4, 5, 6}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := NewHistory(c.capacity)
			for i := range c.record {
				h.Record(at(i, Snapshot{}))
			}
			got, _ := h.samples()
			var gotIdx []int
			for _, s := range got {
				gotIdx = append(gotIdx, int(s.time.Sub(t0)/HistoryInterval))
			}
			if !slices.Equal(gotIdx, c.want) {
				t.Errorf("samples at intervals %v, want %v", gotIdx, c.want)
			}
		})
	}
}

func TestHistoryRecordsTheSnapshot(t *testing.T) {
	h := NewHistory(4)
	h.Record(at(0, fakeSnapshot()))
	got, reasons := h.samples()
	if len(got) != 1 {
		t.Fatalf("%d samples", len(got))
	}
	s := got[0]
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"LAN→WAN tcp bytes", s.bytes[0][0], 150000},
		{"WAN→LAN tcp bytes", s.bytes[1][0], 900000},
		{"LAN→WAN udp packets", s.packets[0][1], 10},
		{"LAN→WAN esp bytes", s.bytes[0][4], 700},
		{"IKE sessions", uint64(s.ike), 1},
		{"ESP pairs established (not waiting, squelched, tentative)", uint64(s.esp), 2},
		{"PPTP calls (not connections)", uint64(s.pptp), 2},
		{"flows of every protocol and state", uint64(s.flows), 4},
		{"malformed drops", s.drops[slices.Index(reasons, "malformed")], 3},
	}
	for _, c := range checks {
		t.Run("a sample counts the "+c.name, func(t *testing.T) {
			if c.got != c.want {
				t.Errorf("%d, want %d", c.got, c.want)
			}
		})
	}
	t.Run("a reason beyond the slots adds up in the last one", func(t *testing.T) {
		h := NewHistory(2)
		drops := map[string]uint64{}
		for i := range maxHistoryDrops + 5 {
			drops[strings.Repeat("r", i+1)] = 1
		}
		h.Record(at(0, Snapshot{Drops: drops}))
		got, reasons := h.samples()
		if len(reasons) != maxHistoryDrops || reasons[maxHistoryDrops-1] != otherDrops {
			t.Fatalf("%d reasons, the last %q", len(reasons), reasons[len(reasons)-1])
		}
		if n := got[0].drops[maxHistoryDrops-1]; n != 6 {
			t.Errorf("the last slot counts %d, want 6 (the reasons that found no slot)", n)
		}
	})
}

// The README gives the ring's memory.
func TestHistoryMemory(t *testing.T) {
	if size := unsafe.Sizeof(historySample{}); size != 664 {
		t.Errorf("a sample is %d bytes, the README and History's comment say 664", size)
	}
}

func TestRate(t *testing.T) {
	cases := []struct {
		name      string
		prev, cur uint64
		d         time.Duration
		want      float64
	}{
		{"a rate is the counter's increase over the interval", 1000, 3000, 10 * time.Second, 200},
		{"a counter that did not move is zero", 5, 5, 10 * time.Second, 0},
		{"a counter that went down was reset and counted cur since", 3000, 500, 10 * time.Second, 50},
		{"an interval of zero is zero, not infinity", 1, 2, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := rate(c.prev, c.cur, c.d); got != c.want {
				t.Errorf("rate(%d, %d, %v) = %v, want %v", c.prev, c.cur, c.d, got, c.want)
			}
		})
	}
}

// tcpOut is a snapshot with this many LAN→WAN TCP bytes so far.
func tcpOut(bytes uint64) Snapshot {
	return Snapshot{Traffic: []Traffic{{Direction: LANToWAN, Proto: "tcp", Bytes: bytes}}}
}

func TestHistoryCharts(t *testing.T) {
	h := NewHistory(HistorySamples)
	// 0, 1000, 3000 bytes, then a reset to 500: 800, 1600, 400 bit/s.
	for i, b := range []uint64{0, 1000, 3000, 500} {
		s := tcpOut(b)
		s.Drops = map[string]uint64{"malformed": uint64(10 * i), hostile: uint64(i), "martian": 0}
		s.VPN.IKE = make([]IKESession, i)
		h.Record(at(i, s))
	}
	charts := historyCharts(h.samples())
	byID := map[string]chart{}
	for _, c := range charts {
		byID[c.ID] = c
	}

	t.Run("traffic is drawn in bit/s from the byte counters, across a counter reset", func(t *testing.T) {
		c := byID["traffic-lan-wan"]
		if len(c.series) != 1 || c.series[0].name != "tcp" {
			t.Fatalf("series %+v, want tcp alone", c.series)
		}
		var got []float64
		for _, p := range c.series[0].points {
			got = append(got, p.v)
		}
		if want := []float64{800, 1600, 400}; !slices.Equal(got, want) {
			t.Errorf("rates %v, want %v", got, want)
		}
	})
	t.Run("drops are drawn per reason, most first, leaving out reasons that dropped nothing", func(t *testing.T) {
		c := byID["drops"]
		var names []string
		for _, s := range c.series {
			names = append(names, s.name)
		}
		if want := []string{"malformed", hostile}; !slices.Equal(names, want) {
			t.Errorf("series %q, want %q", names, want)
		}
	})

	counts := []struct {
		id        string
		polylines int
		legend    []string
	}{
		{"traffic-lan-wan", 1, []string{"tcp"}},
		{"traffic-wan-lan", 0, nil},
		{"vpn", 3, []string{"IKE sessions", "ESP pairs established", "PPTP calls"}},
		{"flows", 1, []string{"flows"}},
		{"drops", 2, []string{"malformed", hostile}},
	}
	for _, c := range counts {
		t.Run("the "+c.id+" graph is well-formed SVG with one line per series", func(t *testing.T) {
			svg := checkSVG(t, string(byID[c.id].SVG))
			if svg.polylines != c.polylines {
				t.Errorf("%d polylines, want %d", svg.polylines, c.polylines)
			}
			for _, name := range c.legend {
				if !slices.Contains(svg.texts, name) {
					t.Errorf("the legend lacks %q: %q", name, svg.texts)
				}
			}
			for _, label := range []string{"-1 min", "-30 s", "now", "0"} {
				if !slices.Contains(svg.texts, label) {
					t.Errorf("no axis label %q: %q", label, svg.texts)
				}
			}
		})
	}
	t.Run("a graph without any series says so", func(t *testing.T) {
		if svg := checkSVG(t, string(byID["traffic-wan-lan"].SVG)); !slices.Contains(svg.texts, "no traffic") {
			t.Errorf("texts %q", svg.texts)
		}
	})
	t.Run("the y axis ends at a round number above the highest point", func(t *testing.T) {
		if svg := checkSVG(t, string(byID["traffic-lan-wan"].SVG)); !slices.Contains(svg.texts, "2 kbit/s") {
			t.Errorf("texts %q, want a top label 2 kbit/s", svg.texts)
		}
	})
	t.Run("the newest point is at the right edge, the oldest an interval per sample to its left", func(t *testing.T) {
		svg := checkSVG(t, string(byID["flows"].SVG))
		step := float64(chartRight-chartLeft) * float64(HistoryInterval) / float64(time.Minute)
		want := []float64{chartRight - 3*step, chartRight - 2*step, chartRight - step, chartRight}
		if len(svg.xs) != 1 || len(svg.xs[0]) != len(want) {
			t.Fatalf("x coordinates %v", svg.xs)
		}
		for i, x := range svg.xs[0] {
			if math.Abs(x-want[i]) > 0.06 {
				t.Errorf("x %v, want %v", svg.xs[0], want)
				break
			}
		}
	})
	t.Run("the same samples draw the same SVG", func(t *testing.T) {
		again := historyCharts(h.samples())
		for i := range charts {
			if charts[i].SVG != again[i].SVG {
				t.Errorf("%s differs:\n%s\n%s", charts[i].ID, charts[i].SVG, again[i].SVG)
			}
		}
	})

	spans := []struct {
		name    string
		samples int
		want    []string
	}{
		{"ten seconds of samples span a minute", 2, []string{"-1 min", "-30 s"}},
		{"a minute of samples spans a minute", 7, []string{"-1 min", "-30 s"}},
		{"70 s of samples span two minutes", 8, []string{"-2 min", "-1 min"}},
		{"20 minutes of samples span half an hour", 121, []string{"-30 min", "-15 min"}},
		{"a full ring spans the hour", HistorySamples, []string{"-60 min", "-30 min"}},
		{"a ring that wrapped spans the hour", HistorySamples + 40, []string{"-60 min", "-30 min"}},
	}
	for _, sp := range spans {
		t.Run("the time axis: "+sp.name, func(t *testing.T) {
			h := NewHistory(HistorySamples)
			for i := range sp.samples {
				h.Record(at(i, tcpOut(uint64(i*100))))
			}
			svg := checkSVG(t, string(historyCharts(h.samples())[0].SVG))
			if len(svg.texts) < 6 || !slices.Equal(svg.texts[4:6], sp.want) {
				t.Errorf("labels %q, want time labels %q", svg.texts, sp.want)
			}
			if len(svg.xs) != 1 || svg.xs[0][0] < chartLeft-0.05 {
				t.Errorf("x coordinates %v start left of the plot", svg.xs)
			}
		})
	}

	short := []struct {
		name    string
		samples int
	}{{"no sample", 0}, {"one sample", 1}}
	for _, s := range short {
		t.Run("with "+s.name+" every graph says it is collecting", func(t *testing.T) {
			h := NewHistory(4)
			for i := range s.samples {
				h.Record(at(i, tcpOut(100)))
			}
			for _, c := range historyCharts(h.samples()) {
				svg := checkSVG(t, string(c.SVG))
				if svg.polylines != 0 || !slices.Contains(svg.texts, "collecting…") {
					t.Errorf("%s: %d polylines, texts %q", c.ID, svg.polylines, svg.texts)
				}
			}
		})
	}
}

// svgInfo is what checkSVG found in a graph.
type svgInfo struct {
	polylines int
	texts     []string    // the text of every <text> and <title>
	xs        [][]float64 // the x coordinates of each polyline
}

// checkSVG decodes svg as XML and fails the test unless it is one <svg>
// element, well-formed, with no script and no reference to anything
// outside it.
func checkSVG(t *testing.T, svg string) svgInfo {
	t.Helper()
	var info svgInfo
	dec := xml.NewDecoder(strings.NewReader(svg))
	depth, roots := 0, 0
	var inText bool
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, svg)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				roots++
				if tok.Name.Local != "svg" {
					t.Errorf("root element <%s>, want <svg>", tok.Name.Local)
				}
			}
			depth++
			switch tok.Name.Local {
			case "script", "foreignObject", "image", "use", "a", "style":
				t.Errorf("the SVG has a <%s>", tok.Name.Local)
			case "polyline":
				info.polylines++
				var xs []float64
				for _, a := range tok.Attr {
					if a.Name.Local == "points" {
						for _, pt := range strings.Fields(a.Value) {
							x, _, _ := strings.Cut(pt, ",")
							f, err := strconv.ParseFloat(x, 64)
							if err != nil {
								t.Errorf("point %q: %v", pt, err)
							}
							xs = append(xs, f)
						}
					}
				}
				if len(xs) == 0 {
					t.Errorf("a polyline without points")
				}
				info.xs = append(info.xs, xs)
			}
			inText = tok.Name.Local == "text" || tok.Name.Local == "title"
			for _, a := range tok.Attr {
				if a.Name.Local == "href" || a.Name.Local == "src" || strings.HasPrefix(a.Name.Local, "on") ||
					strings.Contains(a.Value, "url(") || strings.Contains(a.Value, "//") {
					t.Errorf("attribute %s=%q refers elsewhere or runs script", a.Name.Local, a.Value)
				}
			}
		case xml.EndElement:
			depth--
			inText = false
		case xml.CharData:
			if inText {
				info.texts = append(info.texts, string(tok))
			}
		}
	}
	if roots != 1 {
		t.Errorf("%d root elements, want one <svg>", roots)
	}
	if strings.Contains(svg, "<script") {
		t.Errorf("the SVG contains <script:\n%s", svg)
	}
	return info
}

func TestStatusPageGraphs(t *testing.T) {
	h := NewHistory(HistorySamples)
	for i, b := range []uint64{0, 1000, 3000} {
		h.Record(at(i, tcpOut(b)))
	}
	body, doc := page(t, fakeSnapshot())
	t.Run("a Source without a History gets no graphs", func(t *testing.T) {
		if strings.Contains(body, "<svg") || find(doc, func(n *html.Node) bool { return attr(n, "id") == "graphs" }) != nil {
			t.Error("the page has graphs")
		}
	})

	rec := serve(t, &historySource{fakeSource{snap: fakeSnapshot()}, h}, "GET", "/")
	body = rec.Body.String()
	doc, err := html.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"traffic-lan-wan", "traffic-wan-lan", "vpn", "flows", "drops"} {
		t.Run("the page has the "+id+" graph as inline SVG", func(t *testing.T) {
			fig := find(doc, func(n *html.Node) bool { return n.Data == "figure" && attr(n, "id") == "chart-"+id })
			if fig == nil {
				t.Fatalf("no figure chart-%s", id)
			}
			if find(fig, func(n *html.Node) bool { return n.Data == "svg" }) == nil {
				t.Errorf("figure chart-%s has no <svg>", id)
			}
		})
	}
	t.Run("the graphs load nothing from elsewhere", func(t *testing.T) {
		for _, bad := range []string{"<script", "<link", "src=", "href=\"http", "url(", "http://", "https://"} {
			if strings.Contains(body, bad) {
				t.Errorf("the page contains %q", bad)
			}
		}
	})
	t.Run("a hostile drop reason reaches the page as text", func(t *testing.T) {
		h.Record(at(3, Snapshot{Drops: map[string]uint64{hostile: 9}}))
		rec := serve(t, &historySource{fakeSource{snap: Snapshot{}}, h}, "GET", "/")
		body := rec.Body.String()
		if strings.Contains(body, "<script") {
			t.Fatalf("a value reached the page unescaped")
		}
		doc, err := html.Parse(strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		fig := find(doc, func(n *html.Node) bool { return attr(n, "id") == "chart-drops" })
		if fig == nil || !strings.Contains(text(fig), hostile) {
			t.Errorf("the drops graph does not name %q as text", hostile)
		}
	})
}

// historySource is a fakeSource with a History.
type historySource struct {
	fakeSource
	h *History
}

func (s *historySource) History() *History { return s.h }

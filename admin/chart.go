package admin

import (
	"cmp"
	"fmt"
	"html/template"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The graphs are drawn here, on the server, as inline SVG: the page stays
// free of scripts and of anything loaded from elsewhere, and a LAN without
// Internet sees them all the same. Every name that reaches the SVG is
// escaped, every number is written with a fixed precision, so the output
// is the same for the same samples (the tests compare it).

// chart is one graph: a few series over the last hour.
type chart struct {
	ID     string // the figure's element id is "chart-" + ID
	Title  string
	format func(float64) string // a value as an axis label
	series []chartSeries
	empty  string // shown instead of lines when no series has any
	SVG    template.HTML
}

type chartSeries struct {
	name   string
	color  string
	points []chartPoint
}

type chartPoint struct {
	t time.Time
	v float64
}

// chartWindow is the longest time the x axis spans, ending at the newest
// sample. Until the ring holds that much, the axis spans the next of
// chartSpans up from what it holds: right after a start, an hour-wide axis
// would squeeze the few samples there are into its right edge.
const chartWindow = HistorySamples * HistoryInterval

var chartSpans = []time.Duration{time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute,
	15 * time.Minute, 30 * time.Minute, chartWindow}

// chartColors are told apart on white and in print; a series keeps its
// color from one refresh to the next because the series come in a fixed
// order (protocols) or a stable one (drop reasons, by size, then name).
var chartColors = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"}

// maxChartDrops is how many drop reasons the drops graph shows: the ones
// that dropped most in the window.
const maxChartDrops = 4

// historyCharts lays out the graphs of the samples (oldest first).
func historyCharts(samples []historySample, reasons []string) []chart {
	charts := []chart{
		trafficChart("traffic-lan-wan", "LAN→WAN traffic (bit/s)", 0, samples),
		trafficChart("traffic-wan-lan", "WAN→LAN traffic (bit/s)", 1, samples),
		gaugeChart("vpn", "VPN sessions", samples, []gauge{
			{"IKE sessions", func(s *historySample) int { return s.ike }},
			{"ESP pairs established", func(s *historySample) int { return s.esp }},
			{"PPTP calls", func(s *historySample) int { return s.pptp }},
		}),
		gaugeChart("flows", "NAT flows", samples, []gauge{{"flows", func(s *historySample) int { return s.flows }}}),
		dropChart(samples, reasons),
	}
	span := chartWindow
	if len(samples) > 0 {
		held := samples[len(samples)-1].time.Sub(samples[0].time)
		if i := slices.IndexFunc(chartSpans, func(s time.Duration) bool { return held <= s }); i >= 0 {
			span = chartSpans[i]
		}
	}
	for i := range charts {
		charts[i].SVG = charts[i].svg(len(samples), span)
	}
	return charts
}

// rates turns one cumulative counter of the samples into per-second rates,
// one point per pair of neighbours, at the later one's time.
func rates(samples []historySample, counter func(*historySample) uint64) []chartPoint {
	var pts []chartPoint
	for i := 1; i < len(samples); i++ {
		prev, cur := &samples[i-1], &samples[i]
		pts = append(pts, chartPoint{cur.time, rate(counter(prev), counter(cur), cur.time.Sub(prev.time))})
	}
	return pts
}

// nonZero reports whether any point is above zero; a series without is
// left out, so that an idle protocol does not crowd the legend.
func nonZero(pts []chartPoint) bool {
	return slices.ContainsFunc(pts, func(p chartPoint) bool { return p.v > 0 })
}

func trafficChart(id, title string, dir int, samples []historySample) chart {
	c := chart{ID: id, Title: title, format: bitsLabel, empty: "no traffic"}
	for p, proto := range historyProtos {
		pts := rates(samples, func(s *historySample) uint64 { return s.bytes[dir][p] })
		for i := range pts {
			pts[i].v *= 8
		}
		if nonZero(pts) {
			c.series = append(c.series, chartSeries{name: proto, color: chartColors[p%len(chartColors)], points: pts})
		}
	}
	return c
}

type gauge struct {
	name  string
	value func(*historySample) int
}

// gaugeChart draws every gauge, zero or not: a line at zero says "none"
// as clearly as a table row does.
func gaugeChart(id, title string, samples []historySample, gauges []gauge) chart {
	c := chart{ID: id, Title: title, format: countLabel}
	for i, g := range gauges {
		pts := make([]chartPoint, len(samples))
		for j := range samples {
			pts[j] = chartPoint{samples[j].time, float64(g.value(&samples[j]))}
		}
		c.series = append(c.series, chartSeries{name: g.name, color: chartColors[i%len(chartColors)], points: pts})
	}
	return c
}

// dropChart draws the maxChartDrops reasons that dropped most in the
// window.
func dropChart(samples []historySample, reasons []string) chart {
	c := chart{ID: "drops", Title: "Drops (packets/s, top reasons)", format: rateLabel, empty: "no drops"}
	type reasonTotal struct {
		name  string
		total float64
		pts   []chartPoint
	}
	var rs []reasonTotal
	for i, name := range reasons {
		pts := rates(samples, func(s *historySample) uint64 { return s.drops[i] })
		var total float64
		for _, p := range pts {
			total += p.v
		}
		if total > 0 {
			rs = append(rs, reasonTotal{name, total, pts})
		}
	}
	slices.SortFunc(rs, func(a, b reasonTotal) int { return cmp.Or(cmp.Compare(b.total, a.total), cmp.Compare(a.name, b.name)) })
	for i, r := range rs[:min(len(rs), maxChartDrops)] {
		c.series = append(c.series, chartSeries{name: r.name, color: chartColors[i], points: r.pts})
	}
	return c
}

// The drawing's geometry, in SVG user units (CSS pixels at scale 1).
const (
	chartW      = 220 // five graphs side by side on a 1280-pixel screen
	chartLeft   = 52  // room for the y labels
	chartRight  = 214
	chartTop    = 8
	chartBottom = 108
	chartTimeY  = 122 // baseline of the time labels
	chartLegend = 138 // baseline of the first legend row
	chartRowH   = 14
)

// svg draws c over the span up to its newest point; n is how many samples
// there are. With fewer than two there is nothing to draw yet (a rate
// needs two), and the graph says so.
func (c *chart) svg(n int, span time.Duration) template.HTML {
	var b strings.Builder
	rows := 0
	perRow := legendPerRow(c.series)
	if len(c.series) > 0 {
		rows = (len(c.series) + perRow - 1) / perRow
	}
	height := chartLegend - chartRowH + rows*chartRowH + 6
	fmt.Fprintf(&b, `<svg class="chart" width="%d" height="%d" viewBox="0 0 %d %d" role="img">`, chartW, height, chartW, height)
	fmt.Fprintf(&b, `<title>%s</title>`, template.HTMLEscapeString(c.Title))
	fmt.Fprintf(&b, `<rect class="plot" x="%d" y="%d" width="%d" height="%d"/>`, chartLeft, chartTop, chartRight-chartLeft, chartBottom-chartTop)
	if n < 2 {
		fmt.Fprintf(&b, `<text class="note" x="%d" y="%d" text-anchor="middle">collecting…</text></svg>`,
			(chartLeft+chartRight)/2, (chartTop+chartBottom)/2+4)
		return template.HTML(b.String())
	}
	// The y axis starts at zero and ends at a round number above the
	// highest point.
	top := 0.0
	var now time.Time
	for _, s := range c.series {
		for _, p := range s.points {
			top = max(top, p.v)
			if p.t.After(now) {
				now = p.t
			}
		}
	}
	top = niceCeil(top)
	mid := (chartTop + chartBottom) / 2
	fmt.Fprintf(&b, `<line class="grid" x1="%d" y1="%d" x2="%d" y2="%d"/>`, chartLeft, mid, chartRight, mid)
	fmt.Fprintf(&b, `<text class="axis" x="%d" y="%d" text-anchor="end">%s</text>`, chartLeft-4, chartTop+8, template.HTMLEscapeString(c.format(top)))
	fmt.Fprintf(&b, `<text class="axis" x="%d" y="%d" text-anchor="end">%s</text>`, chartLeft-4, mid+4, template.HTMLEscapeString(c.format(top/2)))
	fmt.Fprintf(&b, `<text class="axis" x="%d" y="%d" text-anchor="end">0</text>`, chartLeft-4, chartBottom)
	fmt.Fprintf(&b, `<text class="axis" x="%d" y="%d">%s</text>`, chartLeft, chartTimeY, agoLabel(span))
	fmt.Fprintf(&b, `<text class="axis" x="%d" y="%d" text-anchor="middle">%s</text>`, (chartLeft+chartRight)/2, chartTimeY, agoLabel(span/2))
	fmt.Fprintf(&b, `<text class="axis" x="%d" y="%d" text-anchor="end">now</text>`, chartRight, chartTimeY)
	if len(c.series) == 0 {
		fmt.Fprintf(&b, `<text class="note" x="%d" y="%d" text-anchor="middle">%s</text>`,
			(chartLeft+chartRight)/2, mid+4, template.HTMLEscapeString(c.empty))
	}
	for _, s := range c.series {
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="`, s.color)
		for i, p := range s.points {
			if i > 0 {
				b.WriteByte(' ')
			}
			x := chartRight - float64(chartRight-chartLeft)*min(1, float64(now.Sub(p.t))/float64(span))
			y := chartBottom - float64(chartBottom-chartTop)*p.v/top
			b.WriteString(strconv.FormatFloat(x, 'f', 1, 64) + "," + strconv.FormatFloat(y, 'f', 1, 64))
		}
		b.WriteString(`"/>`)
	}
	colW := (chartW - 8) / perRow
	for i, s := range c.series {
		x, y := 4+(i%perRow)*colW, chartLegend+(i/perRow)*chartRowH
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="10" height="3" fill="%s"/>`, x, y-4, s.color)
		fmt.Fprintf(&b, `<text class="legend" x="%d" y="%d">%s</text>`, x+14, y, template.HTMLEscapeString(s.name))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// legendPerRow fits three short names in a legend row, two longer ones, or
// one long one.
func legendPerRow(series []chartSeries) int {
	longest := 0
	for _, s := range series {
		longest = max(longest, len(s.name))
	}
	switch {
	case longest > 14:
		return 1
	case longest > 8:
		return 2
	}
	return 3
}

// agoLabel reads like "-30 min" or "-30 s".
func agoLabel(d time.Duration) string {
	if d >= time.Minute && d%time.Minute == 0 {
		return "-" + strconv.Itoa(int(d/time.Minute)) + " min"
	}
	return "-" + strconv.Itoa(int(d/time.Second)) + " s"
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten; 0 becomes 1, so
// that an all-zero graph still has an axis.
func niceCeil(v float64) float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// bitsLabel reads like "0", "800 bit/s", "1.5 Mbit/s".
func bitsLabel(v float64) string {
	units := []string{"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"}
	i := 0
	for v >= 1000 && i < len(units)-1 {
		v /= 1000
		i++
	}
	return shortNumber(v) + " " + units[i]
}

// countLabel and rateLabel label gauges and rates.
func countLabel(v float64) string { return shortNumber(v) }
func rateLabel(v float64) string  { return shortNumber(v) + "/s" }

// shortNumber writes v with at most one decimal, and none when it is whole.
func shortNumber(v float64) string {
	if v == math.Trunc(v) {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

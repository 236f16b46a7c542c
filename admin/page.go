package admin

import (
	"bytes"
	"html/template"
	"net/http"
)

// pageTemplate is the whole status page. It loads nothing from elsewhere
// (the LAN may have no Internet) and needs no script: the browser reloads it
// every five seconds. html/template escapes every value; the graphs are
// inline SVG that chart.go escapes itself.
var pageTemplate = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vpnmasq {{.WAN}}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d1d1f; background: #fafafa; }
header { display: flex; flex-wrap: wrap; gap: .5em 2.5em; align-items: baseline;
  padding: .8em 1em; background: #1f3b57; color: #fff; border-radius: 6px; }
header h1 { font-size: 1.3em; margin: 0 1em 0 0; }
header dl { display: flex; flex-wrap: wrap; gap: .3em 2em; margin: 0; }
header dt { opacity: .7; font-size: .85em; }
header dd { margin: 0; font-family: ui-monospace, monospace; }
section { margin-top: 1.6em; }
h2 { font-size: 1.05em; margin: 0 0 .4em; }
table { border-collapse: collapse; background: #fff; box-shadow: 0 0 0 1px #ddd; }
th, td { padding: .25em .8em; text-align: left; white-space: nowrap; }
th { background: #eef1f4; font-weight: 600; font-size: .9em; }
td { font-family: ui-monospace, monospace; border-top: 1px solid #eee; }
.num { text-align: right; }
td.none { color: #888; font-style: italic; font-family: inherit; }
p.more { color: #555; margin: .3em 0 0; }
.charts { display: flex; flex-wrap: wrap; gap: .8em; }
figure { margin: 0; padding: .4em .5em .2em; background: #fff; box-shadow: 0 0 0 1px #ddd; }
figcaption { font-weight: 600; font-size: .9em; margin-bottom: .2em; }
svg.chart { display: block; font: 10px system-ui, sans-serif; }
svg.chart .plot { fill: #fcfcfd; stroke: #ccc; }
svg.chart .grid { stroke: #e4e4e4; }
svg.chart .axis { fill: #666; }
svg.chart .legend { fill: #1d1d1f; }
svg.chart .note { fill: #888; font-style: italic; font-size: 12px; }
footer { margin-top: 2em; color: #888; font-size: .85em; }
</style>
</head>
<body>
<header>
<h1>vpnmasq</h1>
<dl>
<div><dt>WAN</dt><dd id="wan">{{.WAN}}</dd></div>
<div><dt>LAN prefixes</dt><dd id="lan">{{.LANPrefixes}}</dd></div>
<div><dt>Service address</dt><dd id="service">{{.ServiceAddr}}</dd></div>
<div><dt>Uptime</dt><dd id="uptime">{{.Uptime}}</dd></div>
</dl>
</header>
{{if .Charts}}<section id="graphs">
<h2>Last hour (a sample every {{.ChartInterval}})</h2>
<div class="charts">
{{range .Charts}}<figure id="chart-{{.ID}}"><figcaption>{{.Title}}</figcaption>{{.SVG}}</figure>
{{end}}</div>
</section>
{{end}}{{range .Tables}}<section>
<h2>{{.Title}}</h2>
<table id="{{.ID}}">
<thead><tr>{{range .Columns}}<th{{if .Num}} class="num"{{end}}>{{.Name}}</th>{{end}}</tr></thead>
<tbody>
{{- $cols := .Columns}}
{{range .Rows}}<tr>{{range $i, $cell := .}}<td{{if (index $cols $i).Num}} class="num"{{end}}>{{$cell}}</td>{{end}}</tr>
{{else}}<tr><td class="none" colspan="{{len .Columns}}">none</td></tr>
{{end}}</tbody>
</table>
{{if .More}}<p class="more">… and {{.More}} more; {{.Hint}}</p>{{end}}
</section>
{{end}}<footer>vpnmasq {{.Version}} · {{.Time}} · JSON: <a href="/api/v1/status">/api/v1/status</a> · <a href="/metrics">/metrics</a></footer>
</body>
</html>
`))

func (h *handler) page(w http.ResponseWriter, r *http.Request) {
	var buf bytes.Buffer
	s := h.src.Snapshot()
	s.Mappings, s.MappingsTotal = h.mappingPage(s, 0, maxPageMappings)
	v := newView(s, maxPageMappings)
	if hs, ok := h.src.(HistorySource); ok {
		v.Charts = historyCharts(hs.History().samples())
		v.ChartInterval = HistoryInterval.String()
	}
	if err := pageTemplate.Execute(&buf, v); err != nil {
		h.log.Error().Err(err).Msg("admin: cannot render the status page")
		http.Error(w, "500 internal error: cannot render the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(buf.Bytes())
}

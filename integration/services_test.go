package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
	"github.com/vpnmasq/vpnmasq/internal/pptppeer"
)

// serviceAddr is the default service address (config: services.address).
const serviceAddr = "192.0.2.53"

// servicesConfig is the lab configuration with the DNS forwarder pointed at
// the WAN host, the admin server open to lan1 only, and the admin socket in
// the test's directory.
func servicesConfig(t *testing.T) (config, socket string) {
	socket = filepath.Join(t.TempDir(), "admin.sock")
	return labConfig + fmt.Sprintf(`
[services]
dns_upstream = ["198.18.0.2"]
admin_allow = ["192.168.77.10/32"]
admin_socket = %q
`, socket), socket
}

// httpGet fetches url from inside ns and returns the status and body.
func httpGet(ns *lab.NS, url string) (int, string, error) {
	resp, err := ns.HTTPClient(10 * time.Second).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metricValue finds one sample in Prometheus text: name{labels} value.
func metricValue(text, series string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

func TestLocalServices(t *testing.T) {
	l := newLab(t, lab.Options{})
	dns := serveDNS(t, l.WAN, lab.WANAddr, map[string]string{"www.example.test.": "198.18.0.80"})
	config, socket := servicesConfig(t)
	r := startRouter(t, l, config)
	if _, ok := r.log.waitFor("services ready", 0, 5*time.Second, r.exited); !ok {
		t.Fatal("no \"services ready\" line")
	}

	t.Run("LAN hosts ping the service address", func(t *testing.T) {
		for _, ns := range []*lab.NS{l.LAN1, l.LAN2} {
			if out, code := runIn(t, ns, 10*time.Second, "ping", "-c", "3", "-i", "0.2", "-W", "2", serviceAddr); code != 0 {
				t.Errorf("%s: ping %s: exit %d\n%s", ns.Name, serviceAddr, code, out)
			}
		}
	})
	t.Run("the netstack answers no echo for other addresses", func(t *testing.T) {
		// 198.18.0.99 does not exist: the request is masqueraded to the
		// WAN and nobody answers. A forwarder that spoofed replies would.
		if out, code := runIn(t, l.LAN1, 10*time.Second, "ping", "-c", "2", "-W", "1", "198.18.0.99"); code == 0 {
			t.Errorf("ping 198.18.0.99 answered:\n%s", out)
		}
	})
	t.Run("the DNS forwarder answers over UDP and TCP and caches", func(t *testing.T) {
		for _, args := range [][]string{
			{"dig", "+short", "+time=2", "+tries=1", "@" + serviceAddr, "www.example.test", "A"},
			{"dig", "+short", "+tcp", "+time=2", "+tries=1", "@" + serviceAddr, "www.example.test", "A"},
		} {
			out, code := runIn(t, l.LAN1, 10*time.Second, args...)
			if code != 0 || strings.TrimSpace(out) != "198.18.0.80" {
				t.Errorf("%s: exit %d, %q", strings.Join(args, " "), code, out)
			}
		}
		if n := dns.QueriesFor("www.example.test."); n != 1 {
			t.Errorf("the upstream saw %d queries for the name, want 1 (the second from the cache)", n)
		}
		out, _ := runIn(t, l.LAN1, 10*time.Second, "dig", "+time=2", "+tries=1", "@"+serviceAddr, "nothing.example.test", "A")
		if !strings.Contains(out, "NXDOMAIN") {
			t.Errorf("unknown name: %s", out)
		}
	})
	t.Run("metrics count traffic, drops, mappings and DNS", func(t *testing.T) {
		code, before, err := httpGet(l.LAN1, "http://"+serviceAddr+"/metrics")
		if err != nil || code != 200 {
			t.Fatalf("GET /metrics: %d %v", code, err)
		}
		web, err := lab.ServeHTTP(l.WAN, "198.18.0.2:8081", "metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer web.Close()
		curlBlob(t, l.LAN1, "http://198.18.0.2:8081/blob?bytes=1000000", 1000000, 20*time.Second)
		_, after, _ := httpGet(l.LAN1, "http://"+serviceAddr+"/metrics")
		for _, series := range []string{
			`vpnmasq_packets_total{direction="lan_to_wan",proto="tcp"}`,
			`vpnmasq_bytes_total{direction="wan_to_lan",proto="tcp"}`,
		} {
			b, _ := metricValue(before, series)
			a, ok := metricValue(after, series)
			if !ok || a <= b {
				t.Errorf("%s: %v before, %v after", series, b, a)
			}
		}
		if v, ok := metricValue(after, `vpnmasq_mappings{proto="tcp"}`); !ok || v < 1 {
			t.Errorf("tcp mappings %v", v)
		}
		if v, ok := metricValue(after, `vpnmasq_dns_queries_total{transport="udp"}`); !ok || v < 1 {
			t.Errorf("udp DNS queries %v", v)
		}
		if v, ok := metricValue(after, `vpnmasq_dns_cache_hits_total`); !ok || v < 1 {
			t.Errorf("DNS cache hits %v", v)
		}
		if _, ok := metricValue(after, `vpnmasq_drops_total{reason="unsolicited"}`); !ok {
			t.Error("no drop counter for unsolicited")
		}
	})
	t.Run("a LAN host outside admin_allow is closed at accept, before any HTTP", func(t *testing.T) {
		code, body, err := httpGet(l.LAN2, "http://"+serviceAddr+"/api/v1/status")
		if err == nil {
			t.Errorf("lan2 got an HTTP answer: %d %s", code, body)
		}
		if code, _, err := httpGet(l.LAN1, "http://"+serviceAddr+"/healthz"); err != nil || code != http.StatusOK {
			t.Errorf("control: lan1, inside admin_allow: %d %v", code, err)
		}
	})
	t.Run("the WAN side reaches no service", func(t *testing.T) {
		// The WAN host routes the service address to the router: still
		// nothing answers, neither ping, DNS nor HTTP; the WAN address
		// does not serve the admin API either.
		if err := l.WAN.AddRoute(netip.MustParsePrefix(serviceAddr+"/32"), lab.RouterWANAddr); err != nil {
			t.Fatal(err)
		}
		if out, code := runIn(t, l.WAN, 10*time.Second, "ping", "-c", "2", "-W", "1", serviceAddr); code == 0 {
			t.Errorf("ping from the WAN answered:\n%s", out)
		}
		if out, code := runIn(t, l.WAN, 10*time.Second, "dig", "+time=1", "+tries=1", "@"+serviceAddr, "www.example.test"); code == 0 {
			t.Errorf("DNS from the WAN answered:\n%s", out)
		}
		for _, url := range []string{"http://" + serviceAddr + "/healthz", "http://198.18.0.1/healthz"} {
			if code, _, err := httpGet(l.WAN, url); err == nil {
				t.Errorf("GET %s from the WAN: %d", url, code)
			}
		}
	})
	t.Run("the admin socket is root-only and serves vpnmasq status", func(t *testing.T) {
		fi, err := os.Stat(socket)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("socket %v %v", fi, err)
		}
		out, code := runIn(t, l.Router, 10*time.Second, vpnmasqBin, "status", "--socket", socket)
		if code != 0 || !strings.Contains(out, "198.18.0.1") {
			t.Errorf("vpnmasq status: exit %d\n%s", code, out)
		}
	})
}

func TestStatusShowsVPNSessions(t *testing.T) {
	requireIPsecTools(t)
	l := newLab(t, lab.Options{})
	config, socket := servicesConfig(t)
	startRouter(t, l, config)

	// A PPTP call from lan1 to a scripted server on the WAN host.
	srv, err := pptppeer.StartServer(l.WAN, lab.WANAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	pc, err := pptppeer.Dial(l.LAN1, lab.LAN1Addr, lab.WANAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Abort() })
	call, err := pc.Call(0x0101)
	if err != nil {
		t.Fatal(err)
	}

	// An IKE session: strongSwan in lan2 to a responder on the WAN host.
	if err := lab.AddProtectedNet(l.WAN, "prot0", wanProtectedNet); err != nil {
		t.Fatal(err)
	}
	startCharon(t, l.WAN, "wan", swanctlConf("vips", wanVIPPool, ikeConnection{
		Name: "rw", Version: 2, LocalAddrs: lab.WANAddr.String(),
		LocalID: "wan.ipsec.test", Pool: "vips", LocalTS: wanProtectedNet.Masked().String(),
	}))
	initiator := startCharon(t, l.LAN2, "lan2", swanctlConf("", netip.Prefix{}, ikeConnection{
		Name: "home", Version: 2, RemoteAddrs: lab.WANAddr.String(),
		LocalID: "lan2.ipsec.test", RemoteID: "wan.ipsec.test", WantVIP: true,
		RemoteTS: wanProtectedNet.Masked().String(),
	}))
	if err := initiator.initiate("home", 30*time.Second); err != nil {
		t.Fatal(err)
	}

	t.Run("/api/v1/vpn lists the IKE session and the PPTP call", func(t *testing.T) {
		code, body, err := httpGet(l.LAN1, "http://"+serviceAddr+"/api/v1/vpn")
		if err != nil || code != 200 {
			t.Fatalf("GET /api/v1/vpn: %d %v", code, err)
		}
		var vpn struct {
			IKE []struct {
				LANHost      string `json:"lan_host"`
				InitiatorSPI string `json:"initiator_spi"`
			} `json:"ike"`
			PPTP []struct {
				Client string `json:"client"`
				Calls  []struct {
					CallID     uint16 `json:"call_id"`
					MasqCallID uint16 `json:"masq_call_id"`
					PeerCallID uint16 `json:"peer_call_id"`
				} `json:"calls"`
			} `json:"pptp"`
		}
		if err := json.Unmarshal([]byte(body), &vpn); err != nil {
			t.Fatalf("%v\n%s", err, body)
		}
		if len(vpn.IKE) == 0 || !strings.HasPrefix(vpn.IKE[0].LANHost, lab.LAN2Addr.String()+":") || len(vpn.IKE[0].InitiatorSPI) != 16 {
			t.Errorf("IKE sessions: %s", body)
		}
		if len(vpn.PPTP) != 1 || len(vpn.PPTP[0].Calls) != 1 || vpn.PPTP[0].Calls[0].CallID != call.ID ||
			vpn.PPTP[0].Calls[0].PeerCallID != call.PeerID || vpn.PPTP[0].Calls[0].MasqCallID == 0 {
			t.Errorf("PPTP: %s (call %d, server's %d)", body, call.ID, call.PeerID)
		}
	})
	t.Run("vpnmasq status --json shows the same", func(t *testing.T) {
		out, code := runIn(t, l.Router, 10*time.Second, vpnmasqBin, "status", "--json", "--socket", socket)
		if code != 0 || !strings.Contains(out, `"initiator_spi"`) || !strings.Contains(out, `"masq_call_id"`) {
			t.Errorf("exit %d\n%s", code, out)
		}
	})
	t.Run("the status page draws the last hour's traffic, VPN sessions, flows and drops in Chromium", func(t *testing.T) {
		requireChromium(t)
		// Pings span two sampling intervals (admin.HistoryInterval, 10 s),
		// so that ICMP shows in both traffic graphs; then the page is
		// polled until it draws lines of three samples or more.
		if out, code := runIn(t, l.LAN1, 60*time.Second, "ping", "-n", "-q", "-c", "110", "-i", "0.2", lab.WANAddr.String()); code != 0 {
			t.Fatalf("ping from lan1: exit %d\n%s", code, out)
		}
		url := "http://" + serviceAddr + "/"
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, body, err := httpGet(l.LAN1, url)
			if err == nil && minPolylinePoints(body) >= 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after 30 s the page draws no line of 3 samples (err %v):\n%s", err, body)
			}
			time.Sleep(2 * time.Second)
		}
		dom := chromiumDumpDOM(t, l.LAN1, url, 60*time.Second)
		figures := map[string]string{}
		for _, m := range figureRE.FindAllStringSubmatch(dom, -1) {
			figures[m[1]] = m[2]
		}
		wants := []struct {
			id     string
			legend []string
			lines  int
		}{
			{"traffic-lan-wan", []string{"icmp"}, 1},
			{"traffic-wan-lan", []string{"icmp"}, 1},
			{"vpn", []string{"IKE sessions", "ESP pairs established", "PPTP calls"}, 3},
			{"flows", []string{"flows"}, 1},
			{"drops", nil, 0},
		}
		for _, w := range wants {
			fig, ok := figures[w.id]
			if !ok {
				t.Errorf("the rendered page has no graph %s", w.id)
				continue
			}
			if !strings.Contains(fig, "<svg") || strings.Contains(fig, "collecting") {
				t.Errorf("graph %s is no SVG or still collecting:\n%s", w.id, fig)
			}
			if n := len(polylineRE.FindAllString(fig, -1)); n < w.lines {
				t.Errorf("graph %s has %d lines, want at least %d:\n%s", w.id, n, w.lines, fig)
			}
			for _, name := range w.legend {
				if !strings.Contains(fig, ">"+name+"</text>") {
					t.Errorf("graph %s has no legend entry %q:\n%s", w.id, name, fig)
				}
			}
		}
		// The IKE session and the PPTP call have lasted all along: their
		// lines (the first and third) stand above the zero line.
		lines := polylineRE.FindAllStringSubmatch(figures["vpn"], -1)
		for _, i := range []int{0, 2} {
			if i >= len(lines) || !aboveZero(lines[i][1]) {
				t.Errorf("VPN line %d never leaves zero: %v", i, lines)
			}
		}
	})
	t.Run("the status page renders the tables in Chromium", func(t *testing.T) {
		requireChromium(t)
		url := "http://" + serviceAddr + "/"
		dom := chromiumDumpDOM(t, l.LAN1, url, 60*time.Second)
		for _, id := range []string{`id="vpn-ike"`, `id="vpn-pptp"`, `id="mappings"`, `id="traffic"`} {
			if !strings.Contains(dom, id) {
				t.Errorf("rendered page lacks %s", id)
			}
		}
		if !strings.Contains(dom, strconv.Itoa(int(call.ID))) || !strings.Contains(dom, lab.LAN2Addr.String()) {
			t.Errorf("rendered page lacks the PPTP call %d or the IKE host", call.ID)
		}
		// The screenshot is a CI artifact: it outlives the test, in
		// $VPNMASQ_ARTIFACTS or the system's temp directory.
		dir := os.Getenv("VPNMASQ_ARTIFACTS")
		if dir == "" {
			dir = filepath.Join(os.TempDir(), "vpnmasq-artifacts")
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		shot := filepath.Join(dir, "status-page.png")
		chromiumScreenshot(t, l.LAN1, url, shot, 60*time.Second)
		t.Logf("status page screenshot kept at %s", shot)
	})
}

// figureRE finds the status page's graphs: id and content.
var figureRE = regexp.MustCompile(`(?s)<figure id="chart-([a-z-]+)">(.*?)</figure>`)

// polylineRE finds a graph's lines with their points.
var polylineRE = regexp.MustCompile(`<polyline[^>]* points="([^"]+)"`)

// minPolylinePoints is how many points the shortest line on a page has; 0
// when there is no line.
func minPolylinePoints(page string) int {
	least := 0
	for i, m := range polylineRE.FindAllStringSubmatch(page, -1) {
		if n := len(strings.Fields(m[1])); i == 0 || n < least {
			least = n
		}
	}
	return least
}

// aboveZero reports whether a line of a graph has a point above its zero
// line (y 108 in the SVG's coordinates; y grows downwards).
func aboveZero(points string) bool {
	for _, p := range strings.Fields(points) {
		_, y, _ := strings.Cut(p, ",")
		if v, err := strconv.ParseFloat(y, 64); err == nil && v < 107.5 {
			return true
		}
	}
	return false
}

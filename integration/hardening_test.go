package integration

// On-the-wire attacks against the NAT engine's state: blind RSTs and FINs,
// a SYN flood to a port forward, one LAN host grabbing every UDP port, and
// an outsider keeping a silent host's UDP mapping alive. Every forged packet
// is built in forge_test.go and sent from a raw socket inside a lab
// namespace to another lab namespace, in bounded numbers at a bounded rate.
// The blind RSTs and FINs carry the real remote's address, the UDP hog
// lan1's own; the flood's SYN sources lie in 198.19.0.0/16 (benchmarking
// space next to the lab's WAN 198.18.0.0/24), which the WAN namespace
// blackholes, so the answers to them die inside the lab.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// hardeningConfig is labConfig with extra [nat] keys, an optional [limits]
// section, logging at info (a flood must not produce a line per packet) and
// the admin socket in the test's directory.
func hardeningConfig(t *testing.T, natKeys, limitsKeys string) (config, socket string) {
	t.Helper()
	socket = filepath.Join(t.TempDir(), "admin.sock")
	config = strings.Replace(labConfig, "[nat]\n", "[nat]\n"+natKeys, 1)
	config = strings.Replace(config, `level = "debug"`, `level = "info"`, 1)
	if limitsKeys != "" {
		config += "\n[limits]\n" + limitsKeys
	}
	config += fmt.Sprintf("\n[services]\nadmin_socket = %q\n", socket)
	return config, socket
}

// adminAPI talks to the router's admin API over its unix socket.
type adminAPI struct {
	socket string
	client *http.Client
}

func newAdminAPI(socket string) *adminAPI {
	return &adminAPI{socket: socket, client: &http.Client{
		Timeout: 20 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			DisableKeepAlives: true,
		},
	}}
}

func (a *adminAPI) get(path string) (string, error) {
	resp, err := a.client.Get("http://admin" + path)
	if err != nil {
		return "", fmt.Errorf("GET %s on %s: %w", path, a.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("GET %s on %s: %w", path, a.socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s on %s: %s: %s", path, a.socket, resp.Status, b)
	}
	return string(b), nil
}

// metrics returns the Prometheus text of /metrics; it fails the test if
// the router does not answer.
func (a *adminAPI) metrics(t *testing.T) string {
	t.Helper()
	text, err := a.get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return text
}

// counter returns one sample that must exist, failing the test otherwise.
func (a *adminAPI) counter(t *testing.T, series string) float64 {
	t.Helper()
	v, ok := metricValue(a.metrics(t), series)
	if !ok {
		t.Fatalf("/metrics has no sample %s", series)
	}
	return v
}

// apiMapping is one row of /api/v1/mappings.
type apiMapping struct {
	Proto  string  `json:"proto"`
	LAN    string  `json:"lan"`
	WAN    string  `json:"wan"`
	Remote string  `json:"remote"`
	Flows  int     `json:"flows"`
	Static bool    `json:"static"`
	Age    float64 `json:"age"`
	Idle   float64 `json:"idle"`
}

// mappings returns every mapping, page by page (the API gives at most
// 1000 a page: one page would undercount a host that holds thousands).
func (a *adminAPI) mappings() ([]apiMapping, error) {
	var all []apiMapping
	for offset := 0; ; {
		body, err := a.get(fmt.Sprintf("/api/v1/mappings?offset=%d&limit=1000", offset))
		if err != nil {
			return nil, err
		}
		var resp struct {
			Mappings   []apiMapping `json:"mappings"`
			NextOffset *int         `json:"next_offset"`
		}
		if err := json.Unmarshal([]byte(body), &resp); err != nil {
			return nil, fmt.Errorf("/api/v1/mappings: %w", err)
		}
		all = append(all, resp.Mappings...)
		if resp.NextOffset == nil {
			return all, nil
		}
		offset = *resp.NextOffset
	}
}

// findMapping returns the mapping of proto for the LAN endpoint lan.
func findMapping(ms []apiMapping, proto string, lan netip.AddrPort) (apiMapping, bool) {
	for _, m := range ms {
		if m.Proto == proto && m.LAN == lan.String() {
			return m, true
		}
	}
	return apiMapping{}, false
}

// metricSeries returns every sample of a metric family: labels → value.
func metricSeries(text, name string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest == "" || (rest[0] != '{' && rest[0] != ' ')) {
			continue
		}
		i := strings.LastIndexByte(rest, ' ')
		v, err := strconv.ParseFloat(strings.TrimSpace(rest[i+1:]), 64)
		if err != nil {
			continue
		}
		out[strings.TrimSpace(rest[:i])] = v
	}
	return out
}

// logLimitRefusals logs the samples of vpnmasq_limit_refusals_total, the
// hardened engine's count of flows refused by a [limits] bound, if the
// router has them.
func logLimitRefusals(t *testing.T, metrics string) {
	t.Helper()
	series := metricSeries(metrics, "vpnmasq_limit_refusals_total")
	if len(series) == 0 {
		t.Log("/metrics has no vpnmasq_limit_refusals_total")
		return
	}
	for labels, v := range series {
		if v != 0 {
			t.Logf("vpnmasq_limit_refusals_total%s %v", labels, v)
		}
	}
}

// processRSS returns the resident set size of a process in bytes.
func processRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// forgedNet holds the forged outside sources. The WAN namespace blackholes
// it, so whatever the router sends to them dies there.
var forgedNet = netip.MustParsePrefix("198.19.0.0/16")

// blackholeForged adds a blackhole route for forgedNet in ns and removes it
// by name when the test ends.
func blackholeForged(t *testing.T, ns *lab.NS) {
	t.Helper()
	h, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	route := &netlink.Route{
		Dst:  &net.IPNet{IP: net.IP(forgedNet.Addr().AsSlice()), Mask: net.CIDRMask(forgedNet.Bits(), 32)},
		Type: syscall.RTN_BLACKHOLE,
	}
	if err := h.RouteAdd(route); err != nil {
		t.Fatalf("%s: blackhole route %s: %v", ns.Name, forgedNet, err)
	}
	t.Cleanup(func() {
		h, err := ns.Netlink()
		if err != nil {
			return // the namespace is gone, and the route with it
		}
		defer h.Close()
		_ = h.RouteDel(route)
	})
}

// sendAndExpect writes msg on from and reads exactly msg on to within
// timeout.
func sendAndExpect(from, to net.Conn, msg string, timeout time.Duration) error {
	if err := from.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if _, err := from.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write %q: %w", msg, err)
	}
	if err := to.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(to, buf); err != nil {
		return fmt.Errorf("%q sent by %s did not arrive at %s within %v: %w", msg, from.LocalAddr(), to.LocalAddr(), timeout, err)
	}
	if string(buf) != msg {
		return fmt.Errorf("got %q, want %q", buf, msg)
	}
	return nil
}

// seqOutside returns a random 32-bit sequence number at least 2^26 away
// from near in sequence space: far outside any window a connection of this
// test can have, so no forged segment is acceptable by chance.
func seqOutside(near uint32) uint32 {
	for {
		s := rand.Uint32()
		if d := s - near; d > 1<<26 && d < 1<<32-1<<26 {
			return s
		}
	}
}

func TestHardeningBlindResetAndFin(t *testing.T) {
	const (
		transitory = 5 * time.Second
		idle       = 8 * time.Second
		forgedRSTs = 2000
		forgedFINs = 2000
	)
	l := newLab(t, lab.Options{})
	config, socket := hardeningConfig(t, fmt.Sprintf("tcp_transitory_timeout = %q\n", transitory.String()), "")
	startRouter(t, l, config)
	api := newAdminAPI(socket)

	// A connection from lan1 to a server on the WAN host, both ends in
	// this process.
	server := netip.AddrPortFrom(lab.WANAddr, 7000)
	ln, err := l.WAN.Listen("tcp4", server.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	sniffer, err := openTCPSniffer(l.WAN)
	if err != nil {
		t.Fatal(err)
	}
	defer sniffer.Close()
	lanConn, err := l.LAN1.Dial("tcp4", server.String(), 10*time.Second)
	if err != nil {
		t.Fatalf("lan1 cannot connect to %s through the router: %v", server, err)
	}
	defer lanConn.Close()
	var wanConn net.Conn
	select {
	case wanConn = <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("the WAN server accepted no connection")
	}
	defer wanConn.Close()
	for _, step := range []struct {
		from, to net.Conn
		msg      string
	}{{wanConn, lanConn, "ping from the WAN"}, {lanConn, wanConn, "pong from lan1"}} {
		if err := sendAndExpect(step.from, step.to, step.msg, 5*time.Second); err != nil {
			t.Fatalf("before the attack: %v", err)
		}
	}

	// What the attacker would have to guess: the router's mapped port and
	// both ends' next sequence numbers, from the last segment of lan1 as
	// the WAN host received it.
	var last *tcpSeen
	segs := sniffer.drain()
	for i := range segs {
		if segs[i].Src.Addr() == lab.RouterWANAddr && segs[i].Dst == server {
			last = &segs[i]
		}
	}
	if last == nil {
		t.Fatalf("the WAN host's raw socket saw none of lan1's segments (%d TCP segments seen)", len(segs))
	}
	mapped := last.Src
	serverNext, lanNext := last.Ack, last.Seq+uint32(last.Len)
	lanAddr := lanConn.LocalAddr().(*net.TCPAddr).AddrPort()
	ms, err := api.mappings()
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := findMapping(ms, "tcp", lanAddr); !ok || m.WAN != mapped.String() {
		t.Fatalf("mapping of %s: %+v (found %v), but the WAN host sees the connection from %s", lanAddr, m, ok, mapped)
	}
	t.Logf("connection %s -> %s mapped to %s; server's next seq %d, lan1's next seq %d", lanAddr, server, mapped, serverNext, lanNext)

	const series = `vpnmasq_drops_total{reason="tcp_out_of_window"}`
	before := api.counter(t, series)

	// The blind attack from the WAN host: the real remote's address and
	// port to the mapped port, sequence numbers far from the window.
	sender, err := openRawSender(l.WAN)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	for range forgedRSTs {
		if err := sender.send(tcpPacket(server, mapped, seqOutside(serverNext), 0, tcpRST, 0, nil)); err != nil {
			t.Fatalf("sending a forged RST: %v", err)
		}
	}
	for range forgedFINs {
		pkt := tcpPacket(server, mapped, seqOutside(serverNext), seqOutside(lanNext), tcpFIN|tcpACK, 502, nil)
		if err := sender.send(pkt); err != nil {
			t.Fatalf("sending a forged FIN: %v", err)
		}
	}
	attackEnd := time.Now()
	t.Logf("sent %d RSTs and %d FIN+ACKs with random out-of-window sequence numbers to %s", forgedRSTs, forgedFINs, mapped)

	t.Run("forged out-of-window RSTs and FINs are dropped and counted as tcp_out_of_window", func(t *testing.T) {
		var after float64
		deadline := time.Now().Add(5 * time.Second)
		for {
			after = api.counter(t, series)
			if after-before >= forgedRSTs+forgedFINs || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("%s: %v before the attack, %v after (%d forged)", series, before, after, forgedRSTs+forgedFINs)
		if after <= before {
			t.Errorf("%s did not grow: %v before the attack, %v after %d forged out-of-window RSTs and FINs", series, before, after, forgedRSTs+forgedFINs)
		}
	})

	t.Run("the connection outlives the transitory timeout and carries data both ways, WAN side first", func(t *testing.T) {
		// Idle past tcp_transitory_timeout: a flow the forgeries moved to
		// the transitory timer is gone by now. The WAN side speaks first,
		// so lan1 cannot re-create a lost mapping mid-stream.
		time.Sleep(time.Until(attackEnd.Add(idle)))
		if err := sendAndExpect(wanConn, lanConn, "the WAN speaks first after the attack", 5*time.Second); err != nil {
			ms, _ := api.mappings()
			m, ok := findMapping(ms, "tcp", lanAddr)
			t.Fatalf("%v idle after the forged RSTs and FINs (tcp_transitory_timeout %v): %v; mapping of %s now: %+v (present %v)",
				idle, transitory, err, lanAddr, m, ok)
		}
		if err := sendAndExpect(lanConn, wanConn, "lan1 answers", 5*time.Second); err != nil {
			t.Fatal(err)
		}
	})
}

func TestHardeningSYNFloodToForward(t *testing.T) {
	const (
		maxFlows = 20000
		synCount = 50000
		synRate  = 12500 // per second: the flood lasts 4 s
		maxRSS   = 150 << 20
	)
	l := newLab(t, lab.Options{})
	// One host may hold every flow, so that the flood meets max_flows
	// itself rather than the per-host share of lan1, the forward's target.
	config, socket := hardeningConfig(t, "", fmt.Sprintf("max_flows = %d\nmax_flows_per_host = %d\n", maxFlows, maxFlows))
	r := startRouter(t, l, config)
	api := newAdminAPI(socket)
	pid := r.cmd.Process.Pid

	// labConfig forwards WAN port 8080 to lan1:80.
	fwdSrv, err := lab.ServeHTTP(l.LAN1, "192.168.77.10:80", "lan1")
	if err != nil {
		t.Fatal(err)
	}
	defer fwdSrv.Close()
	wanSrv, err := lab.ServeHTTP(l.WAN, "198.18.0.2:8081", "wan")
	if err != nil {
		t.Fatal(err)
	}
	defer wanSrv.Close()
	blackholeForged(t, l.WAN)

	forwardURL := "http://198.18.0.1:8080/"
	outboundURL := "http://198.18.0.2:8081/"
	get := func(ns *lab.NS, url, want string) error {
		code, body, err := httpGet(ns, url)
		if err != nil {
			return fmt.Errorf("%s: GET %s: %w", ns.Name, url, err)
		}
		if code != http.StatusOK || !strings.Contains(body, want) {
			return fmt.Errorf("%s: GET %s: %d %q", ns.Name, url, code, body)
		}
		return nil
	}
	// Both paths work before the flood, or the test is about nothing.
	if err := get(l.LAN2, outboundURL, "hello from wan"); err != nil {
		t.Fatalf("before the flood: %v", err)
	}
	if err := get(l.WAN, forwardURL, "hello from lan1"); err != nil {
		t.Fatalf("before the flood: %v", err)
	}
	rssBefore, err := processRSS(pid)
	if err != nil {
		t.Fatal(err)
	}

	sender, err := openRawSender(l.WAN)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	target := netip.AddrPortFrom(lab.RouterWANAddr, 8080)
	half := make(chan struct{})
	floodDone := make(chan error, 1)
	var floodTime time.Duration
	go func() {
		// Distinct forged sources 198.19.0.1 onwards, in random order,
		// with random ports and sequence numbers.
		base := forgedNet.Addr().As4()
		start := time.Now()
		for n, i := range rand.Perm(synCount) {
			if n == synCount/2 {
				close(half)
			}
			a := (uint32(base[0])<<24 | uint32(base[1])<<16) + uint32(i) + 1
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), uint16(1024+rand.IntN(64000)))
			if err := sender.send(tcpPacket(src, target, rand.Uint32(), 0, tcpSYN, 64240, nil)); err != nil {
				floodDone <- fmt.Errorf("SYN %d of %d: %w", n, synCount, err)
				return
			}
			if n%250 == 249 {
				time.Sleep(time.Until(start.Add(time.Duration(n+1) * time.Second / synRate)))
			}
		}
		floodTime = time.Since(start)
		floodDone <- nil
	}()

	// Halfway through the flood (25 000 SYNs, more than max_flows), the
	// real hosts open new connections.
	select {
	case <-half:
	case err := <-floodDone:
		t.Fatalf("the flood stopped early: %v", err)
	}
	var wg sync.WaitGroup
	var lanErrs, wanErrs []error
	var mu sync.Mutex
	var clientsEnd time.Time
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer func() { mu.Lock(); clientsEnd = time.Now(); mu.Unlock() }()
		for i := range 5 {
			if err := get(l.LAN2, outboundURL, "hello from wan"); err != nil {
				mu.Lock()
				lanErrs = append(lanErrs, fmt.Errorf("connection %d: %w", i+1, err))
				mu.Unlock()
			}
		}
	}()
	go func() {
		defer wg.Done()
		defer func() { mu.Lock(); clientsEnd = time.Now(); mu.Unlock() }()
		for i := range 3 {
			if err := get(l.WAN, forwardURL, "hello from lan1"); err != nil {
				mu.Lock()
				wanErrs = append(wanErrs, fmt.Errorf("connection %d: %w", i+1, err))
				mu.Unlock()
			}
		}
	}()
	// The router's memory and flow count, sampled while the flood and the
	// clients run.
	peakRSS := rssBefore
	peakFlows, peakAPIFlows := -1.0, 0
	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for i := 0; ; i++ {
			if rss, err := processRSS(pid); err == nil && rss > peakRSS {
				peakRSS = rss
			}
			if i%5 == 0 {
				if text, err := api.get("/metrics"); err == nil {
					if series := metricSeries(text, "vpnmasq_flows"); len(series) > 0 {
						total := 0.0
						for _, v := range series {
							total += v
						}
						peakFlows = max(peakFlows, total)
					}
				}
				if ms, err := api.mappings(); err == nil {
					n := 0
					for _, m := range ms {
						n += m.Flows
					}
					peakAPIFlows = max(peakAPIFlows, n)
				}
			}
			select {
			case <-sampling:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	if err := <-floodDone; err != nil {
		t.Fatalf("flood: %v", err)
	}
	floodEnd := time.Now()
	wg.Wait()
	if d := clientsEnd.Sub(floodEnd); d < 0 {
		t.Logf("the clients finished %v before the flood's last SYN", (-d).Round(time.Millisecond))
	} else {
		t.Logf("the clients finished %v after the flood's last SYN", d.Round(time.Millisecond))
	}
	time.Sleep(time.Second) // the last SYNs through the router
	close(sampling)
	<-sampled
	rssAfter, err := processRSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	peakRSS = max(peakRSS, rssAfter)
	metrics := api.metrics(t)
	ms, err := api.mappings()
	if err != nil {
		t.Fatal(err)
	}
	apiFlows := 0
	for _, m := range ms {
		apiFlows += m.Flows
	}
	overflow, _ := metricValue(metrics, `vpnmasq_drops_total{reason="wan_rx_overflow"}`)
	inbound, _ := metricValue(metrics, `vpnmasq_packets_total{direction="wan_to_lan",proto="tcp"}`)
	peakAPIFlows = max(peakAPIFlows, apiFlows)
	t.Logf("%d forged SYNs to %s from %s sent in %v; router: %v TCP packets WAN->LAN in total, wan_rx_overflow %v; %d mappings holding %d flows (peak %d); VmRSS %.1f MB before, %.1f MB peak, %.1f MB after",
		synCount, target, forgedNet, floodTime.Round(time.Millisecond), inbound, overflow, len(ms), apiFlows, peakAPIFlows,
		float64(rssBefore)/(1<<20), float64(peakRSS)/(1<<20), float64(rssAfter)/(1<<20))

	logLimitRefusals(t, metrics)

	t.Run("a LAN host opens new outbound connections during the flood", func(t *testing.T) {
		for _, err := range lanErrs {
			t.Error(err)
		}
	})
	t.Run("an outside host reaches the port forward during the flood", func(t *testing.T) {
		for _, err := range wanErrs {
			t.Error(err)
		}
	})
	t.Run("the router's memory stays bounded", func(t *testing.T) {
		if peakRSS > maxRSS {
			t.Errorf("VmRSS peaked at %.1f MB (%.1f MB before the flood), want at most %d MB", float64(peakRSS)/(1<<20), float64(rssBefore)/(1<<20), maxRSS>>20)
		}
	})
	t.Run("the flow table never holds more than max_flows", func(t *testing.T) {
		series := metricSeries(metrics, "vpnmasq_flows")
		if len(series) == 0 {
			t.Errorf("/metrics has no vpnmasq_flows{proto,state} gauge: the flow count cannot be checked against max_flows = %d", maxFlows)
		} else {
			total := 0.0
			for labels, v := range series {
				total += v
				t.Logf("vpnmasq_flows%s %v", labels, v)
			}
			peakFlows = max(peakFlows, total)
			t.Logf("vpnmasq_flows adds up to %v after the flood, %v at most during it", total, peakFlows)
			if peakFlows > maxFlows {
				t.Errorf("vpnmasq_flows added up to %v, more than max_flows = %d", peakFlows, maxFlows)
			}
		}
		if peakAPIFlows > maxFlows {
			t.Errorf("/api/v1/mappings listed %d flows, more than max_flows = %d", peakAPIFlows, maxFlows)
		}
	})
}

func TestHardeningUDPPortHog(t *testing.T) {
	const (
		hogPorts      = 40000
		hogRate       = 10000 // per second: 4 s
		perHostLimit  = 4096  // limits.max_mappings_per_host default
		firstHogPort  = 20000
		lan2PortCheck = 40001
		lan2PortAfter = 40002
	)
	l := newLab(t, lab.Options{})
	config, socket := hardeningConfig(t, "", "")
	startRouter(t, l, config)
	api := newAdminAPI(socket)

	echo, err := lab.ServeUDPEcho(l.WAN, "198.18.0.2:7")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	sink, err := l.WAN.ListenPacket("udp4", "198.18.0.2:9")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	var sunk atomic.Int64
	sinkDone := make(chan struct{})
	go func() {
		defer close(sinkDone)
		buf := make([]byte, 2048)
		for {
			if _, _, err := sink.ReadFrom(buf); err != nil {
				return
			}
			sunk.Add(1)
		}
	}()

	roundTrip := func(ns *lab.NS, local netip.AddrPort) error {
		c, err := ns.ListenPacket("udp4", local.String())
		if err != nil {
			return err
		}
		defer c.Close()
		dst := &net.UDPAddr{IP: net.IP(lab.WANAddr.AsSlice()), Port: 7}
		buf := make([]byte, 64)
		for try := 1; try <= 5; try++ {
			msg := fmt.Sprintf("round trip %d from %s", try, local)
			if _, err := c.WriteTo([]byte(msg), dst); err != nil {
				return err
			}
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			n, _, err := c.ReadFrom(buf)
			if err == nil && string(buf[:n]) == msg {
				return nil
			}
		}
		return fmt.Errorf("%s: no UDP echo from %s in 5 tries 1 s apart", local, dst)
	}
	if err := roundTrip(l.LAN2, netip.AddrPortFrom(lab.LAN2Addr, lan2PortCheck)); err != nil {
		t.Fatalf("before the hog: %v", err)
	}

	// lan1 sends one datagram from each of 40 000 source ports to the
	// sink, which never answers.
	sender, err := openRawSender(l.LAN1)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	dst := netip.AddrPortFrom(lab.WANAddr, 9)
	start := time.Now()
	for n := range hogPorts {
		src := netip.AddrPortFrom(lab.LAN1Addr, uint16(firstHogPort+n))
		if err := sender.send(udpPacket(src, dst, []byte("hog"))); err != nil {
			t.Fatalf("datagram %d: %v", n, err)
		}
		if n%250 == 249 {
			time.Sleep(time.Until(start.Add(time.Duration(n+1) * time.Second / hogRate)))
		}
	}
	hogTime := time.Since(start)
	time.Sleep(time.Second)

	ms, err := api.mappings()
	if err != nil {
		t.Fatal(err)
	}
	lan1UDP := 0
	for _, m := range ms {
		if m.Proto == "udp" && strings.HasPrefix(m.LAN, lab.LAN1Addr.String()+":") {
			lan1UDP++
		}
	}
	metrics := api.metrics(t)
	inUse, _ := metricValue(metrics, `vpnmasq_ports_in_use{proto="udp"}`)
	size, _ := metricValue(metrics, `vpnmasq_ports_size{proto="udp"}`)
	noPort, _ := metricValue(metrics, `vpnmasq_drops_total{reason="no_free_port"}`)
	quota, _ := metricValue(metrics, `vpnmasq_drops_total{reason="host_quota"}`)
	limited, _ := metricValue(metrics, `vpnmasq_drops_total{reason="rate_limited"}`)
	t.Logf("lan1 sent UDP from %d source ports in %v; the sink got %d; lan1 holds %d UDP mappings; UDP ports in use %v of %v; drops: no_free_port %v, host_quota %v, rate_limited %v",
		hogPorts, hogTime.Round(time.Millisecond), sunk.Load(), lan1UDP, inUse, size, noPort, quota, limited)

	logLimitRefusals(t, metrics)

	t.Run("another LAN host still gets a UDP mapping and a round trip", func(t *testing.T) {
		if err := roundTrip(l.LAN2, netip.AddrPortFrom(lab.LAN2Addr, lan2PortAfter)); err != nil {
			t.Errorf("after lan1 sent from %d ports: %v (UDP ports in use %v of %v, no_free_port drops %v)", hogPorts, err, inUse, size, noPort)
		}
	})
	t.Run("one LAN host holds at most max_mappings_per_host UDP mappings", func(t *testing.T) {
		if lan1UDP > perHostLimit {
			t.Errorf("lan1 holds %d UDP mappings, want at most %d (limits.max_mappings_per_host default)", lan1UDP, perHostLimit)
		}
	})
	sink.Close()
	<-sinkDone
}

func TestHardeningUDPMappingExpiresDespiteInbound(t *testing.T) {
	const (
		udpTimeout = 10 * time.Second
		margin     = 3500 * time.Millisecond // expiry runs about once a second
		hammerFor  = 16 * time.Second
	)
	l := newLab(t, lab.Options{})
	config, socket := hardeningConfig(t, fmt.Sprintf("udp_timeout = %q\n", udpTimeout.String()), "")
	startRouter(t, l, config)
	api := newAdminAPI(socket)

	wan, err := l.WAN.ListenPacket("udp4", "198.18.0.2:5000")
	if err != nil {
		t.Fatal(err)
	}
	defer wan.Close()
	lanAddr := netip.AddrPortFrom(lab.LAN1Addr, 41000)
	lan, err := l.LAN1.ListenPacket("udp4", lanAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer lan.Close()

	// lan1's only packet. It is resent until the WAN host has it, so the
	// last outbound packet's time is known to within the retries.
	var lastOut time.Time
	var mapped net.Addr
	buf := make([]byte, 2048)
	for try := 1; mapped == nil; try++ {
		if try > 5 {
			t.Fatal("lan1's datagram did not reach the WAN host in 5 tries")
		}
		lastOut = time.Now()
		if _, err := lan.WriteTo([]byte("hello once"), wan.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		_ = wan.SetReadDeadline(time.Now().Add(time.Second))
		if _, from, err := wan.ReadFrom(buf); err == nil {
			mapped = from
		}
	}
	ms, err := api.mappings()
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := findMapping(ms, "udp", lanAddr); !ok || m.WAN != mapped.String() {
		t.Fatalf("mapping of %s: %+v (found %v), but the WAN host saw %s", lanAddr, m, ok, mapped)
	}
	t.Logf("lan1 %s mapped to %s; lan1 stays silent from now on", lanAddr, mapped)

	// lan1 only reads, and notes when each packet arrived.
	var mu sync.Mutex
	var arrivals []time.Time
	lanDone := make(chan struct{})
	go func() {
		defer close(lanDone)
		b := make([]byte, 2048)
		for {
			if _, _, err := lan.ReadFrom(b); err != nil {
				return
			}
			mu.Lock()
			arrivals = append(arrivals, time.Now())
			mu.Unlock()
		}
	}()
	// The WAN host sends to the mapping every second.
	hammerDone := make(chan struct{})
	go func() {
		defer close(hammerDone)
		for i := 1; time.Since(lastOut) < hammerFor; i++ {
			time.Sleep(time.Until(lastOut.Add(time.Duration(i) * time.Second)))
			_, _ = wan.WriteTo([]byte(fmt.Sprintf("keepalive %d from the WAN", i)), mapped)
		}
	}()

	// Until the timeout the mapping must stay (and deliver); after
	// udp_timeout and a margin it must be gone.
	var goneAt, checkedAt time.Time
	var lastSeen apiMapping
	for time.Since(lastOut) < udpTimeout+margin {
		checkedAt = time.Now()
		ms, err := api.mappings()
		if err != nil {
			t.Fatal(err)
		}
		m, ok := findMapping(ms, "udp", lanAddr)
		if !ok {
			goneAt = time.Now()
			break
		}
		lastSeen = m
		time.Sleep(250 * time.Millisecond)
	}
	unsolicitedAtGone := api.counter(t, `vpnmasq_drops_total{reason="unsolicited"}`)
	<-hammerDone
	time.Sleep(500 * time.Millisecond)
	unsolicitedEnd := api.counter(t, `vpnmasq_drops_total{reason="unsolicited"}`)
	lan.Close()
	<-lanDone
	mu.Lock()
	defer mu.Unlock()
	var before, after int
	for _, at := range arrivals {
		if !goneAt.IsZero() && at.After(goneAt.Add(500*time.Millisecond)) {
			after++
		} else {
			before++
		}
	}

	t.Run("inbound packets reach the silent host while its mapping lives", func(t *testing.T) {
		if before < 5 {
			t.Errorf("lan1 received %d of the WAN host's packets before the mapping expired, want at least 5", before)
		}
	})
	t.Run("the silent host's mapping expires udp_timeout after its last outbound packet", func(t *testing.T) {
		if goneAt.IsZero() {
			t.Fatalf("the mapping of %s is still listed %v after lan1's last packet (udp_timeout %v), with the WAN host sending to it every second: %+v",
				lanAddr, checkedAt.Sub(lastOut).Round(100*time.Millisecond), udpTimeout, lastSeen)
		}
		gone := goneAt.Sub(lastOut)
		t.Logf("mapping gone %v after lan1's last packet", gone.Round(100*time.Millisecond))
		if gone < udpTimeout-time.Second {
			t.Errorf("the mapping disappeared after only %v, before udp_timeout %v", gone, udpTimeout)
		}
	})
	t.Run("later WAN packets are dropped as unsolicited", func(t *testing.T) {
		if goneAt.IsZero() {
			t.Fatal("the mapping never expired")
		}
		if after > 0 {
			t.Errorf("lan1 received %d packets after its mapping expired", after)
		}
		if unsolicitedEnd <= unsolicitedAtGone {
			t.Errorf("unsolicited drops %v when the mapping expired, %v after the WAN host's last packets", unsolicitedAtGone, unsolicitedEnd)
		}
	})
}

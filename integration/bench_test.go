//go:build bench

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// benchConfig is the lab configuration at log level info, so that logging
// does not weigh on the measurement.
var benchConfig = strings.Replace(labConfig, `level = "debug"`, `level = "info"`, 1)

// Units of the benchmark's rows.
const (
	unitBits    = iota // bit/s, shown in Gbit/s, compared as a ratio
	unitPackets        // packets/s, shown in k, compared as a ratio
	unitMicros         // µs, compared as a difference
)

// benchMetric is one measurement. Each gives one row of the table (a
// round-trip measurement two: p50 and p99); a throughput measurement of
// vpnmasq also gives a row of router CPU per million packets.
type benchMetric struct {
	name  string
	short string // the name in the CPU rows
	unit  int
	// iperf3 client arguments (unitBits), the raw protocol (unitPackets),
	// or whether the round trip is measured under a UDP load (unitMicros).
	args  []string
	proto string
	load  bool
}

// benchUDP is iperf3's UDP mode as the table measures it: 1400-byte
// datagrams, no rate limit, 4 MB socket buffers.
var benchUDP = []string{"-u", "-b", "0", "-l", "1400", "-w", "4M"}

var benchMetrics = []benchMetric{
	{name: "TCP 1 stream LAN→WAN", short: "TCP 1 stream LAN→WAN", unit: unitBits},
	{name: "TCP 1 stream WAN→LAN", short: "TCP 1 stream WAN→LAN", unit: unitBits, args: []string{"-R"}},
	{name: "TCP 4 streams LAN→WAN", short: "TCP 4 streams LAN→WAN", unit: unitBits, args: []string{"-P", "4"}},
	{name: "UDP 1400 B LAN→WAN (receiver rate, 4 MB socket buffers)", short: "UDP LAN→WAN", unit: unitBits, args: benchUDP},
	{name: "UDP 1400 B WAN→LAN (receiver rate, 4 MB socket buffers)", short: "UDP WAN→LAN", unit: unitBits, args: append(slices.Clone(benchUDP), "-R")},
	{name: "UDP 1400 B LAN→WAN sent 44 at a time with UDP_SEGMENT (as wireguard-go, Tailscale and QUIC send), datagrams/s reaching the WAN host", short: "UDP_SEGMENT", unit: unitPackets, proto: "udp"},
	{name: "raw ESP 1400 B, packets/s reaching the WAN host from one raw-socket sender", short: "raw ESP", unit: unitPackets, proto: "esp"},
	{name: "enhanced GRE 1400 B (PPTP data, no call set up), the same", short: "GRE", unit: unitPackets, proto: "gre"},
	{name: "ping RTT, idle (200 × 5 ms)", unit: unitMicros},
	{name: "ping RTT under a " + benchLoadRate + "bit/s UDP load (200 × 5 ms)", unit: unitMicros, load: true},
}

// benchLoadRate is the rate of the UDP stream (lan2 to the WAN host) that
// runs while the loaded round trip is measured.
const benchLoadRate = "200M"

// benchLoadPort is the port of the second iperf3 server, which serves the
// load so that it never finds the first one busy.
const benchLoadPort = 5202

// benchRow is one row of the table: metric i's value, or its second
// value: a round trip's p99 (the first is p50), or the share of the raw
// packets sent that arrived.
type benchRow struct {
	name   string
	metric int
	second bool
}

func benchRows() []benchRow {
	var rows []benchRow
	for i, m := range benchMetrics {
		switch m.unit {
		case unitMicros:
			rows = append(rows, benchRow{strings.Replace(m.name, "ping RTT", "ping RTT p50", 1), i, false},
				benchRow{strings.Replace(m.name, "ping RTT", "ping RTT p99", 1), i, true})
		case unitPackets:
			rows = append(rows, benchRow{m.name, i, false},
				benchRow{m.short + ": share of the packets sent that arrive", i, true})
		default:
			rows = append(rows, benchRow{m.name, i, false})
		}
	}
	return rows
}

// benchResults holds every run's value per row and, for vpnmasq, the
// router's CPU seconds per million forwarded packets per metric.
type benchResults struct {
	rows [][]float64
	cpu  [][]float64
}

func newBenchResults() *benchResults {
	return &benchResults{rows: make([][]float64, len(benchRows())), cpu: make([][]float64, len(benchMetrics))}
}

// benchLab is what every measurement needs.
type benchLab struct {
	l       *lab.Lab
	seconds int
	rawgen  string // the raw packet generator's binary
	only    string // measure only the metrics whose name contains it (BENCH_ONLY)
}

// benchRouter is a running vpnmasq whose CPU time and packet counters are
// read around each measurement.
type benchRouter struct {
	pid int
	api *adminAPI
}

// cpuSeconds returns the router process's user plus system time.
func (r *benchRouter) cpuSeconds() (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", r.pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", r.pid, s)
	}
	// After "pid (comm) ": state is field 3, utime 14, stime 15.
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", r.pid, s)
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", r.pid, s)
	}
	return (utime + stime) / 100, nil // USER_HZ is 100 in /proc
}

// packets returns the sum of vpnmasq_packets_total over directions and
// protocols: packets forwarded as the router counts them (a TCP
// super-packet counts once).
func (r *benchRouter) packets() (float64, error) {
	text, err := r.api.get("/metrics")
	if err != nil {
		return 0, err
	}
	var sum float64
	found := false
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, "vpnmasq_packets_total{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("/metrics: %q: %v", line, err)
		}
		sum += v
		found = true
	}
	if !found {
		return 0, fmt.Errorf("/metrics has no vpnmasq_packets_total")
	}
	return sum, nil
}

// sample reads CPU time and packets together.
func (r *benchRouter) sample(t *testing.T) (cpu, packets float64) {
	t.Helper()
	cpu, err := r.cpuSeconds()
	if err != nil {
		t.Fatalf("router CPU time: %v", err)
	}
	packets, err = r.packets()
	if err != nil {
		t.Fatalf("router packet counters: %v", err)
	}
	return cpu, packets
}

// pingRTT pings the WAN host from ns 200 times every 5 ms and returns the
// round-trip times' p50 and p99 in microseconds.
func pingRTT(t *testing.T, ns *lab.NS) (p50, p99 float64, err error) {
	t.Helper()
	out, code := runIn(t, ns, 30*time.Second, "ping", "-n", "-c", "200", "-i", "0.005", lab.WANAddr.String())
	if code != 0 {
		return 0, 0, fmt.Errorf("ping: exit %d: %.300s", code, out)
	}
	var rtts []float64
	for _, f := range strings.Fields(out) {
		if v, ok := strings.CutPrefix(f, "time="); ok {
			if ms, err := strconv.ParseFloat(v, 64); err == nil {
				rtts = append(rtts, ms*1000)
			}
		}
	}
	if len(rtts) < 150 {
		return 0, 0, fmt.Errorf("only %d of 200 pings answered", len(rtts))
	}
	return summarize(rtts)[1], percentile(rtts, 99), nil
}

// percentile returns the p-th percentile (nearest rank).
func percentile(xs []float64, p int) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := (len(s)*p+99)/100 - 1
	return s[max(i, 0)]
}

// pingUnderLoad measures the round trip from lan1 while lan2 sends a UDP
// stream of benchLoadRate to the WAN host's second iperf3 server.
func pingUnderLoad(t *testing.T, l *lab.Lab) (p50, p99 float64, err error) {
	t.Helper()
	type result struct {
		bps float64
		err error
	}
	done := make(chan result, 1)
	go func() {
		bps, err := iperf(l.LAN2, []string{"-p", strconv.Itoa(benchLoadPort), "-u", "-b", benchLoadRate, "-l", "1400"}, 4)
		done <- result{bps, err}
	}()
	time.Sleep(1500 * time.Millisecond) // the stream is running
	p50, p99, err = pingRTT(t, l.LAN1)
	load := <-done
	if load.err != nil {
		return 0, 0, fmt.Errorf("UDP load: %v", load.err)
	}
	t.Logf("UDP load received at %.0f Mbit/s", load.bps/1e6)
	return p50, p99, err
}

// TestBench compares the kernel's masquerade and vpnmasq on the same lab,
// in the same run: each run measures every metric through the kernel, then
// through a freshly started vpnmasq, so both see the same machine state.
//
//	go test -tags bench -run TestBench -v ./integration/
//
// BENCH_RUNS (default 3) and BENCH_SECONDS (default 5) set the repetitions
// and the length of each iperf3 and raw-packet run; BENCH_OUT names a file
// that receives the result table in Markdown; BENCH_ONLY=text measures only
// the metrics whose name contains text (a quick comparison while working on
// one of them).
func TestBench(t *testing.T) {
	for _, tool := range []string{"iperf3", "ping", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required for the benchmark (apt-get install %s)", tool, map[string]string{"iperf3": "iperf3", "ping": "iputils-ping", "nft": "nftables"}[tool])
		}
	}
	runs := envInt(t, "BENCH_RUNS", 3, 1, 20)
	seconds := envInt(t, "BENCH_SECONDS", 5, 1, 60)
	b := &benchLab{l: newLab(t, lab.Options{}), seconds: seconds, rawgen: buildRawgen(t), only: os.Getenv("BENCH_ONLY")}
	l := b.l
	startIperfServer(t, l.WAN, 5201)
	startIperfServer(t, l.WAN, benchLoadPort)

	forwarding, code := runIn(t, l.Router, 5*time.Second, "cat", "/proc/sys/net/ipv4/ip_forward")
	if code != 0 {
		t.Fatalf("reading ip_forward: %s", forwarding)
	}
	forwarding = strings.TrimSpace(forwarding)
	socket := filepath.Join(t.TempDir(), "admin.sock")
	config := benchConfig + fmt.Sprintf("\n[services]\nadmin_socket = %q\n", socket)

	kernel, userspace := newBenchResults(), newBenchResults()
	for run := 1; run <= runs; run++ {
		// (a) the kernel's masquerade
		t.Logf("run %d of %d: kernel masquerade", run, runs)
		loadKernelNAT(t, l, kernelMasquerade)
		measureAll(t, b, kernel, nil)
		for _, args := range [][]string{
			{"nft", "delete", "table", "ip", "kmasq"},
			{"sysctl", "-q", "-w", "net.ipv4.ip_forward=" + forwarding},
		} {
			if out, code := runIn(t, l.Router, 10*time.Second, args...); code != 0 {
				t.Fatalf("%s: %s", strings.Join(args, " "), out)
			}
		}

		// (b) vpnmasq
		t.Logf("run %d of %d: vpnmasq", run, runs)
		r := startRouter(t, l, config)
		measureAll(t, b, userspace, &benchRouter{pid: r.cmd.Process.Pid, api: newAdminAPI(socket)})
		r.stop()
		if t.Failed() {
			t.FailNow()
		}
	}

	table := benchTable(kernel, userspace, runs, seconds)
	t.Logf("\n%s", table)
	if path := os.Getenv("BENCH_OUT"); path != "" {
		if err := os.WriteFile(path, []byte(table), 0o644); err != nil {
			t.Errorf("writing BENCH_OUT: %v", err)
		}
	}
}

// buildRawgen builds the raw packet generator into a temporary directory.
func buildRawgen(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "rawgen")
	build := exec.Command(goTool(), "build", "-o", bin, "./integration/cmd/rawgen")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building rawgen: %v\n%s", err, out)
	}
	return bin
}

func envInt(t *testing.T, name string, def, lo, hi int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		t.Fatalf("%s=%q: want an integer in %d..%d", name, v, lo, hi)
	}
	return n
}

// startIperfServer runs iperf3 -s on port in ns until the test ends and
// waits until it accepts connections.
func startIperfServer(t *testing.T, ns *lab.NS, port int) {
	t.Helper()
	// `ip netns exec` execs iperf3 in place, so the PID is iperf3's.
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "iperf3", "--server", "--bind", lab.WANAddr.String(), "--port", strconv.Itoa(port))
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopProcess(cmd) })
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := ns.Dial("tcp4", fmt.Sprintf("%s:%d", lab.WANAddr, port), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("iperf3 server not listening after 5s: %v; output:\n%s", err, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stopProcess ends a started command with SIGTERM, then SIGKILL after 5 s.
func stopProcess(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// measureAll measures every metric once and appends the values to res.
// With a router it also appends the router's CPU seconds per million
// forwarded packets for each throughput metric.
func measureAll(t *testing.T, b *benchLab, res *benchResults, r *benchRouter) {
	t.Helper()
	row := 0
	for i, m := range benchMetrics {
		if b.only != "" && !strings.Contains(m.name, b.only) {
			row += len(slices.DeleteFunc(benchRows(), func(r benchRow) bool { return r.metric != i }))
			continue
		}
		var cpu0, pk0 float64
		if r != nil {
			cpu0, pk0 = r.sample(t)
		}
		switch m.unit {
		case unitBits:
			bps, err := iperf(b.l.LAN1, m.args, b.seconds)
			if err != nil {
				t.Fatalf("%s: %v", m.name, err)
			}
			t.Logf("%s: %.0f Mbit/s", m.name, bps/1e6)
			res.rows[row] = append(res.rows[row], bps)
		case unitPackets:
			pps, share, err := rawRate(t, b, m.proto)
			if err != nil {
				t.Fatalf("%s: %v", m.name, err)
			}
			t.Logf("%s: %.0f packets/s, %.1f %% of those sent", m.name, pps, share*100)
			res.rows[row] = append(res.rows[row], pps)
			res.rows[row+1] = append(res.rows[row+1], share)
			row++
		case unitMicros:
			var p50, p99 float64
			var err error
			if m.load {
				p50, p99, err = pingUnderLoad(t, b.l)
			} else {
				p50, p99, err = pingRTT(t, b.l.LAN1)
			}
			if err != nil {
				t.Fatalf("%s: %v", m.name, err)
			}
			t.Logf("%s: p50 %.0f µs, p99 %.0f µs", m.name, p50, p99)
			res.rows[row] = append(res.rows[row], p50)
			res.rows[row+1] = append(res.rows[row+1], p99)
			row += 2
			continue
		}
		row++
		if r != nil {
			cpu1, pk1 := r.sample(t)
			if pk1 <= pk0 {
				t.Fatalf("%s: the router counted no forwarded packets", m.name)
			}
			perM := (cpu1 - cpu0) / ((pk1 - pk0) / 1e6)
			t.Logf("%s: router CPU %.2f s for %.0f packets: %.2f s per million", m.name, cpu1-cpu0, pk1-pk0, perM)
			res.cpu[i] = append(res.cpu[i], perM)
		}
	}
}

// rawRate sends raw packets of proto from lan1 to the WAN host for the
// run's length and returns the packets per second the WAN host received
// and the share of the packets sent that it received.
func rawRate(t *testing.T, b *benchLab, proto string) (pps, share float64, err error) {
	t.Helper()
	counter := exec.Command("ip", "netns", "exec", b.l.WAN.Name, b.rawgen, "count", proto, "10")
	var out syncBuffer
	counter.Stdout, counter.Stderr = &out, &out
	if err := counter.Start(); err != nil {
		return 0, 0, err
	}
	defer stopProcess(counter)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "listening") {
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("rawgen count not listening after 5s: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	sent, code := runIn(t, b.l.LAN1, time.Duration(b.seconds+30)*time.Second,
		b.rawgen, "send", proto, lab.WANAddr.String(), "1400", strconv.Itoa(b.seconds))
	if code != 0 {
		return 0, 0, fmt.Errorf("rawgen send: exit %d: %s", code, sent)
	}
	t.Logf("rawgen %s", strings.TrimSpace(sent))
	var nSent, sentPPS, refused float64
	if _, err := fmt.Sscanf(strings.TrimSpace(sent), "sent %g pps %g refused %g", &nSent, &sentPPS, &refused); err != nil || nSent <= 0 {
		return 0, 0, fmt.Errorf("rawgen send: %q: %v", sent, err)
	}
	waited := make(chan error, 1)
	go func() { waited <- counter.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			return 0, 0, fmt.Errorf("rawgen count: %v: %s", err, out.String())
		}
	case <-time.After(15 * time.Second):
		_ = counter.Process.Kill()
		<-waited
		return 0, 0, fmt.Errorf("rawgen count still running 15s after the sender: %s", out.String())
	}
	var n, secs float64
	line := strings.TrimSpace(strings.TrimPrefix(out.String(), "listening\n"))
	if _, err := fmt.Sscanf(line, "received %g seconds %g pps %g", &n, &secs, &pps); err != nil {
		return 0, 0, fmt.Errorf("rawgen count: %q: %v", line, err)
	}
	if n < 2 {
		return 0, 0, fmt.Errorf("rawgen count: %q", line)
	}
	return pps, n / nSent, nil
}

// iperf runs one iperf3 client in ns and returns the receiver's rate. It
// takes no *testing.T, so that a goroutine may run it.
func iperf(ns *lab.NS, extra []string, seconds int) (float64, error) {
	args := append([]string{"netns", "exec", ns.Name, "iperf3", "--client", lab.WANAddr.String(), "--time", strconv.Itoa(seconds), "--json"}, extra...)
	var lastErr error
	for try := 0; try < 3; try++ {
		// The server takes a moment after one test before it accepts the
		// next; a "busy" answer is retried.
		if try > 0 {
			time.Sleep(time.Second)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds+30)*time.Second)
		outb, _ := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
		cancel()
		out := string(outb)
		var report struct {
			Error string `json:"error"`
			End   struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal([]byte(out), &report); err != nil {
			lastErr = fmt.Errorf("iperf3 output is not JSON (%v): %.500s", err, out)
			continue
		}
		if report.Error != "" {
			lastErr = fmt.Errorf("iperf3: %s", report.Error)
			continue
		}
		if report.End.SumReceived.BitsPerSecond <= 0 {
			lastErr = fmt.Errorf("iperf3 reported no received rate: %.500s", out)
			continue
		}
		return report.End.SumReceived.BitsPerSecond, nil
	}
	return 0, lastErr
}

// benchTable formats the results as a Markdown table.
func benchTable(kernel, userspace *benchResults, runs, seconds int) string {
	var b strings.Builder
	var uname syscall.Utsname
	release := "?"
	if syscall.Uname(&uname) == nil {
		release = utsString(uname.Release[:])
	}
	fmt.Fprintf(&b, "vpnmasq vs. kernel nftables masquerade, alternating on one lab (lan1 -> WAN host; medians of %d runs x %d s; Linux %s; %d CPUs; %s)\n\n",
		runs, seconds, release, runtime.NumCPU(), time.Now().UTC().Format(time.RFC3339))
	b.WriteString("| metric | kernel median (min–max) | vpnmasq median (min–max) | vpnmasq vs kernel |\n")
	b.WriteString("|---|---|---|---|\n")
	for i, row := range benchRows() {
		if len(kernel.rows[i]) == 0 {
			continue // not measured (BENCH_ONLY)
		}
		k, u := summarize(kernel.rows[i]), summarize(userspace.rows[i])
		switch unit := benchMetrics[row.metric].unit; {
		case unit == unitPackets && row.second:
			fmt.Fprintf(&b, "| %s | %.0f %% (%.0f–%.0f) | %.0f %% (%.0f–%.0f) | %.2f |\n",
				row.name, k[1]*100, k[0]*100, k[2]*100, u[1]*100, u[0]*100, u[2]*100, ratio(u[1], k[1]))
		case unit == unitMicros:
			fmt.Fprintf(&b, "| %s | %.0f µs (%.0f–%.0f) | %.0f µs (%.0f–%.0f) | %+.0f µs |\n",
				row.name, k[1], k[0], k[2], u[1], u[0], u[2], u[1]-k[1])
		case unit == unitBits:
			fmt.Fprintf(&b, "| %s | %.2f Gbit/s (%.2f–%.2f) | %.2f Gbit/s (%.2f–%.2f) | %.2f |\n",
				row.name, k[1]/1e9, k[0]/1e9, k[2]/1e9, u[1]/1e9, u[0]/1e9, u[2]/1e9, ratio(u[1], k[1]))
		case unit == unitPackets:
			fmt.Fprintf(&b, "| %s | %.0f k (%.0f–%.0f) | %.0f k (%.0f–%.0f) | %.2f |\n",
				row.name, k[1]/1e3, k[0]/1e3, k[2]/1e3, u[1]/1e3, u[0]/1e3, u[2]/1e3, ratio(u[1], k[1]))
		}
	}
	for i, m := range benchMetrics {
		if len(userspace.cpu[i]) == 0 {
			continue
		}
		u := summarize(userspace.cpu[i])
		fmt.Fprintf(&b, "| router CPU s per million packets, %s | n/a (softirq, not attributable) | %.2f s (%.2f–%.2f) | |\n",
			m.short, u[1], u[0], u[2])
	}
	b.WriteString("\nRouter CPU: the vpnmasq process's user + system time over the measurement divided by the packets it forwarded (its vpnmasq_packets_total, both directions; a TCP or UDP super-packet counts once). The kernel's forwarding runs in softirq on whichever CPU receives, so it cannot be attributed.\n")
	return b.String()
}

func ratio(u, k float64) float64 {
	if k <= 0 {
		return 0
	}
	return u / k
}

// summarize returns min, median, max.
func summarize(xs []float64) [3]float64 {
	if len(xs) == 0 {
		return [3]float64{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	median := s[len(s)/2]
	if len(s)%2 == 0 {
		median = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return [3]float64{s[0], median, s[len(s)-1]}
}

func utsString(field []int8) string {
	var b strings.Builder
	for _, c := range field {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	return b.String()
}

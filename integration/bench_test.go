//go:build bench

package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
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

// benchMetric is one iperf3 measurement, run from lan1 to the WAN host, or
// (latency) the median round-trip time of 200 pings, in microseconds.
type benchMetric struct {
	name    string
	args    []string
	latency bool
}

var benchMetrics = []benchMetric{
	{"TCP, 1 stream", nil, false},
	{"TCP, 4 streams", []string{"-P", "4"}, false},
	{"UDP, 1400-byte datagrams, unlimited (receiver rate)", []string{"-u", "-b", "0", "-l", "1400"}, false},
	{"round-trip time p50 (ping, 200 × 5 ms)", nil, true},
}

// pingP50 pings the WAN host from ns 200 times and returns the median
// round-trip time in microseconds.
func pingP50(t *testing.T, ns *lab.NS) (float64, error) {
	t.Helper()
	out, code := runIn(t, ns, 30*time.Second, "ping", "-n", "-c", "200", "-i", "0.005", lab.WANAddr.String())
	if code != 0 {
		return 0, fmt.Errorf("ping: exit %d: %.300s", code, out)
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
		return 0, fmt.Errorf("only %d of 200 pings answered", len(rtts))
	}
	return summarize(rtts)[1], nil
}

// TestBench compares throughput through the kernel's masquerade and through
// vpnmasq on the same lab, in the same run.
//
//	go test -tags bench -run TestBench -v ./integration/
//
// BENCH_RUNS (default 3) and BENCH_SECONDS (default 5) set the repetitions
// and the length of each iperf3 run; BENCH_OUT names a file that receives
// the result table in Markdown.
func TestBench(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Fatal("iperf3 is required for the benchmark (apt-get install iperf3)")
	}
	runs := envInt(t, "BENCH_RUNS", 3, 1, 20)
	seconds := envInt(t, "BENCH_SECONDS", 5, 1, 60)
	l := newLab(t, lab.Options{})
	startIperfServer(t, l.WAN)

	// (a) the kernel's masquerade
	forwarding, code := runIn(t, l.Router, 5*time.Second, "cat", "/proc/sys/net/ipv4/ip_forward")
	if code != 0 {
		t.Fatalf("reading ip_forward: %s", forwarding)
	}
	forwarding = strings.TrimSpace(forwarding)
	loadKernelNAT(t, l, kernelMasquerade)
	kernel := measureAll(t, l, runs, seconds)
	for _, args := range [][]string{
		{"nft", "delete", "table", "ip", "kmasq"},
		{"sysctl", "-q", "-w", "net.ipv4.ip_forward=" + forwarding},
	} {
		if out, code := runIn(t, l.Router, 10*time.Second, args...); code != 0 {
			t.Fatalf("%s: %s", strings.Join(args, " "), out)
		}
	}

	// (b) vpnmasq
	r := startRouter(t, l, benchConfig)
	userspace := measureAll(t, l, runs, seconds)
	r.stop()

	table := benchTable(kernel, userspace, runs, seconds)
	t.Logf("\n%s", table)
	if path := os.Getenv("BENCH_OUT"); path != "" {
		if err := os.WriteFile(path, []byte(table), 0o644); err != nil {
			t.Errorf("writing BENCH_OUT: %v", err)
		}
	}
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

// startIperfServer runs iperf3 -s in ns until the test ends and waits until
// it accepts connections.
func startIperfServer(t *testing.T, ns *lab.NS) {
	t.Helper()
	// `ip netns exec` execs iperf3 in place, so the PID is iperf3's.
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "iperf3", "--server", "--bind", lab.WANAddr.String())
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := ns.Dial("tcp4", lab.WANAddr.String()+":5201", time.Second)
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

// measureAll runs every metric runs times and returns bit/s per metric.
func measureAll(t *testing.T, l *lab.Lab, runs, seconds int) [][]float64 {
	t.Helper()
	results := make([][]float64, len(benchMetrics))
	for i, m := range benchMetrics {
		for range runs {
			if m.latency {
				us, err := pingP50(t, l.LAN1)
				if err != nil {
					t.Fatalf("%s: %v", m.name, err)
				}
				t.Logf("%s: %.0f µs", m.name, us)
				results[i] = append(results[i], us)
				continue
			}
			bps, err := iperf(t, l.LAN1, m.args, seconds)
			if err != nil {
				t.Fatalf("%s: %v", m.name, err)
			}
			t.Logf("%s: %.0f Mbit/s", m.name, bps/1e6)
			results[i] = append(results[i], bps)
		}
	}
	return results
}

// iperf runs one iperf3 client in ns and returns the receiver's rate.
func iperf(t *testing.T, ns *lab.NS, extra []string, seconds int) (float64, error) {
	t.Helper()
	args := append([]string{"iperf3", "--client", lab.WANAddr.String(), "--time", strconv.Itoa(seconds), "--json"}, extra...)
	var lastErr error
	for try := 0; try < 3; try++ {
		// The server takes a moment after one test before it accepts the
		// next; a "busy" answer is retried.
		if try > 0 {
			time.Sleep(time.Second)
		}
		out, _ := runIn(t, ns, time.Duration(seconds+30)*time.Second, args...)
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
func benchTable(kernel, userspace [][]float64, runs, seconds int) string {
	var b strings.Builder
	var uname syscall.Utsname
	release := "?"
	if syscall.Uname(&uname) == nil {
		release = utsString(uname.Release[:])
	}
	fmt.Fprintf(&b, "vpnmasq throughput vs. kernel masquerade (iperf3, lan1 -> WAN host; %d runs x %d s; Linux %s; %d CPUs; %s)\n\n",
		runs, seconds, release, runtime.NumCPU(), time.Now().UTC().Format(time.RFC3339))
	b.WriteString("| metric | kernel min / median / max | vpnmasq min / median / max | vpnmasq vs kernel (medians) |\n")
	b.WriteString("|---|---|---|---|\n")
	for i, m := range benchMetrics {
		k, u := summarize(kernel[i]), summarize(userspace[i])
		if m.latency {
			fmt.Fprintf(&b, "| %s | %.0f / %.0f / %.0f µs | %.0f / %.0f / %.0f µs | %+.0f µs |\n",
				m.name, k[0], k[1], k[2], u[0], u[1], u[2], u[1]-k[1])
			continue
		}
		ratio := 0.0
		if k[1] > 0 {
			ratio = u[1] / k[1]
		}
		fmt.Fprintf(&b, "| %s | %.0f / %.0f / %.0f Mbit/s | %.0f / %.0f / %.0f Mbit/s | %.2f× |\n",
			m.name, k[0]/1e6, k[1]/1e6, k[2]/1e6, u[0]/1e6, u[1]/1e6, u[2]/1e6, ratio)
	}
	return b.String()
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

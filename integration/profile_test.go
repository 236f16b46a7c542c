//go:build bench

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// TestProfileUnderLoad runs iperf3 from lan1 to the WAN host through
// vpnmasq for 8 s and takes a 5 s CPU profile of the router through its
// admin socket; it also logs how busy the machine's CPUs were meanwhile and
// the router's packet counters:
//
//	PROFILE_OUT=/tmp/vpnmasq.pprof IPERF_EXTRA="-u -b 0 -l 1400" \
//	  go test -tags bench -run TestProfileUnderLoad -v ./integration/
//	go tool pprof -top /tmp/vpnmasq.pprof
func TestProfileUnderLoad(t *testing.T) {
	out := os.Getenv("PROFILE_OUT")
	if out == "" {
		out = filepath.Join(os.TempDir(), "vpnmasq.pprof")
	}
	l := newLab(t, lab.Options{})
	sock := filepath.Join(t.TempDir(), "admin.sock")
	startRouter(t, l, benchConfig+"\n[services]\nadmin_socket = \""+sock+"\"\n")
	startIperfServer(t, l.WAN, 5201)
	done := make(chan struct{})
	go func() {
		defer close(done)
		args := []string{"iperf3", "--client", lab.WANAddr.String(), "--time", "8"}
		args = append(args, strings.Fields(os.Getenv("IPERF_EXTRA"))...)
		report, _ := runIn(t, l.LAN1, 30*time.Second, args...)
		t.Logf("%s", report)
	}()
	time.Sleep(2 * time.Second)
	busy0, total0 := cpuTimes(t)
	if b, err := exec.Command("curl", "-sS", "--fail", "--unix-socket", sock, "-o", out,
		"http://admin/debug/pprof/profile?seconds=5").CombinedOutput(); err != nil {
		t.Errorf("profile: %v: %s", err, b)
	}
	busy1, total1 := cpuTimes(t)
	t.Logf("the machine's CPUs were %.0f %% busy during the profile (all processes and softirq; 100 %% = every CPU)",
		100*(busy1-busy0)/(total1-total0))
	<-done
	t.Logf("profile written to %s", out)
	if b, err := exec.Command("curl", "-sS", "--fail", "--unix-socket", sock, "http://admin/metrics").CombinedOutput(); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if strings.HasPrefix(line, "vpnmasq_packets_total") || strings.HasPrefix(line, "vpnmasq_super_packets_total") {
				t.Log(line)
			}
		}
	}
}

// cpuTimes reads the busy and total jiffies of all CPUs from /proc/stat.
func cpuTimes(t *testing.T) (busy, total float64) {
	t.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	for i, f := range fields[1:] {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			t.Fatalf("/proc/stat: %q", line)
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

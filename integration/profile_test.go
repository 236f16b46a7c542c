//go:build bench

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// TestProfileUnderLoad runs iperf3 from lan1 to the WAN host through
// vpnmasq for 8 s and takes a 5 s CPU profile of the router through its
// admin socket:
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
	if b, err := exec.Command("curl", "-sS", "--fail", "--unix-socket", sock, "-o", out,
		"http://admin/debug/pprof/profile?seconds=5").CombinedOutput(); err != nil {
		t.Errorf("profile: %v: %s", err, b)
	}
	<-done
	t.Logf("profile written to %s", out)
}

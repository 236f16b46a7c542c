package integration

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// The NAT behaviour as a standard RFC 5780 prober sees it: coturn's
// turnserver is the STUN server on the WAN side, listening on two addresses
// (RFC 5780 needs an OTHER-ADDRESS to answer CHANGE-REQUEST from), and
// coturn's turnutils_natdiscovery runs on lan1.

// stunInstallHint installs coturn. Its package enables a turnserver
// service; .ci/run installs it with service starts refused.
const stunInstallHint = "apt-get install -y --no-install-recommends coturn"

// stunAltAddr is the STUN server's second address, beside lab.WANAddr.
const stunAltAddr = "198.18.0.3"

// The prober's verdicts, as turnutils_natdiscovery prints them.
const (
	stunEIM          = "NAT with Endpoint Independent Mapping!"
	stunEIF          = "NAT with Endpoint Independent Filtering!"
	stunADF          = "NAT with Address Dependent Filtering!"
	stunHairpinOK    = "Received a request (maybe a successful hairpinning)"
	stunRecvTimedOut = "STUN receive timeout"
)

// Addresses in the prober's output and in tcpdump's.
var (
	stunLocalAddr     = regexp.MustCompile(`Local addr: : 0\.0\.0\.0:(\d+)`)
	stunReflexiveAddr = regexp.MustCompile(`UDP reflexive addr: 198\.18\.0\.1:(\d+)`)
	stunHairpinned    = regexp.MustCompile(`198\.18\.0\.1\.(\d+) > 192\.168\.77\.10\.(\d+):`)
)

// stunPort is the port of the first address re matches in the prober's
// output.
func stunPort(t *testing.T, out string, re *regexp.Regexp) string {
	t.Helper()
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no %q in the prober's output", re)
	}
	return m[1]
}

// requireSTUNTools fails the test when coturn's programs are missing.
func requireSTUNTools(t *testing.T) {
	t.Helper()
	var missing []string
	for _, tool := range []string{"turnserver", "turnutils_natdiscovery"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("the RFC 5780 tests need coturn's %s (Debian package coturn); install it with: %s",
			strings.Join(missing, " and "), stunInstallHint)
	}
}

// startSTUNServer gives the WAN namespace its second address and runs
// turnserver there as a STUN-only RFC 5780 server on both, until the test
// ends (it is stopped by its PID).
func startSTUNServer(t *testing.T, l *lab.Lab) {
	t.Helper()
	if out, code := runIn(t, l.WAN, 10*time.Second, "ip", "address", "add", stunAltAddr+"/24", "dev", lab.HostIf); code != 0 {
		t.Fatalf("adding %s to the WAN namespace: exit %d: %s", stunAltAddr, code, out)
	}
	dir := t.TempDir()
	cmd := exec.Command("turnserver",
		"-n", // no configuration file: only these options
		"--stun-only", "--no-auth",
		"-L", lab.WANAddr.String(), "-L", stunAltAddr,
		"--listening-port", "3478",
		"--no-tcp", "--no-tls", "--no-dtls", "--no-cli",
		"--log-file", "stdout", "--simple-log",
		"--pidfile", filepath.Join(dir, "turnserver.pid"),
		"--db", filepath.Join(dir, "turndb"),
	)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := l.WAN.Start(cmd); err != nil {
		t.Fatalf("starting turnserver: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		// cmd.Process signals this PID only while it is not yet reaped.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Logf("turnserver (PID %d) still running 5s after SIGTERM; killed", pid)
		}
		if t.Failed() {
			t.Logf("turnserver output:\n%s", out.String())
		}
	})
	for _, addr := range []string{lab.WANAddr.String(), stunAltAddr} {
		if err := waitSTUN(l.WAN, addr+":3478", 10*time.Second, exited); err != nil {
			t.Fatalf("turnserver (PID %d) on %s: %v\n%s", pid, addr, err, out.String())
		}
	}
	t.Logf("turnserver (PID %d) answers STUN on %s:3478 and %s:3478", pid, lab.WANAddr, stunAltAddr)
}

// waitSTUN sends STUN Binding Requests to addr from inside ns until one is
// answered.
func waitSTUN(ns *lab.NS, addr string, timeout time.Duration, exited <-chan struct{}) error {
	c, err := ns.ListenPacket("udp4", ":0")
	if err != nil {
		return err
	}
	defer c.Close()
	dst, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return err
	}
	req := make([]byte, 20)
	req[1] = 0x01                                  // Binding Request, no attributes
	copy(req[4:8], []byte{0x21, 0x12, 0xa4, 0x42}) // magic cookie
	if _, err := rand.Read(req[8:]); err != nil {  // transaction ID
		return err
	}
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("turnserver exited")
		default:
		}
		if _, err := c.WriteTo(req, dst); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _, err := c.ReadFrom(buf)
		if err == nil && n >= 20 && buf[0] == 0x01 && buf[1] == 0x01 && bytes.Equal(buf[8:20], req[8:]) {
			return nil
		}
	}
	return fmt.Errorf("no Binding Success Response within %v", timeout)
}

// natDiscovery runs turnutils_natdiscovery with one discovery flag on ns
// against the STUN server's primary address and returns its output.
func natDiscovery(t *testing.T, ns *lab.NS, flag string) string {
	t.Helper()
	out, code := runIn(t, ns, 30*time.Second, "turnutils_natdiscovery", flag, lab.WANAddr.String())
	t.Logf("turnutils_natdiscovery %s %s (exit %d):\n%s", flag, lab.WANAddr, code, out)
	if code != 0 {
		t.Fatalf("turnutils_natdiscovery %s: exit %d", flag, code)
	}
	if !strings.Contains(out, "RFC 5780 response") {
		t.Fatalf("turnutils_natdiscovery %s: no RFC 5780 response from the server (is it listening on two addresses?)", flag)
	}
	return out
}

func TestSTUNProberSeesTheNATBehaviourOfTheRFCs(t *testing.T) {
	requireSTUNTools(t)
	for _, tc := range []struct {
		filtering     string
		wantFiltering string
	}{
		{"address-dependent", stunADF},
		{"endpoint-independent", stunEIF},
	} {
		t.Run("udp_filtering="+tc.filtering, func(t *testing.T) {
			l := newLab(t, lab.Options{})
			config := strings.Replace(labConfig, "[nat]\n", fmt.Sprintf("[nat]\nudp_filtering = %q\n", tc.filtering), 1)
			startRouter(t, l, config)
			startSTUNServer(t, l)

			t.Run("mapping is endpoint-independent (RFC 4787 REQ-1)", func(t *testing.T) {
				if out := natDiscovery(t, l.LAN1, "-m"); !strings.Contains(out, stunEIM) {
					t.Errorf("the prober did not report %q", stunEIM)
				}
			})
			t.Run("filtering is "+tc.filtering+" as configured (RFC 4787 REQ-8)", func(t *testing.T) {
				if out := natDiscovery(t, l.LAN1, "-f"); !strings.Contains(out, tc.wantFiltering) {
					t.Errorf("the prober did not report %q", tc.wantFiltering)
				}
			})
			t.Run("hairpinning is supported, from the external address (RFC 4787 REQ-9)", func(t *testing.T) {
				capt := startCapture(t, l.LAN1, lab.HostIf, fmt.Sprintf("udp and src host %s and dst host %s", lab.RouterWANAddr, lab.LAN1Addr))
				out := natDiscovery(t, l.LAN1, "-H")
				packets := capt.stop()
				if !strings.Contains(out, stunHairpinOK) || strings.Contains(out, stunRecvTimedOut) {
					t.Fatalf("the prober did not receive its own request on the first socket (want %q, no %q)", stunHairpinOK, stunRecvTimedOut)
				}
				// The request reached the first socket's local port from an
				// external port of the router: the second socket's mapping.
				local, reflexive := stunPort(t, out, stunLocalAddr), stunPort(t, out, stunReflexiveAddr)
				var seen []string
				for _, pkt := range packets {
					m := stunHairpinned.FindStringSubmatch(pkt)
					if m == nil {
						continue
					}
					seen = append(seen, m[0])
					if m[2] == local && m[1] != reflexive {
						t.Logf("hairpinned on the wire: %s", strings.TrimSpace(pkt))
						return
					}
				}
				t.Errorf("lan1 received no datagram from %s to its first socket's port %s from another external port than %s; saw %q",
					lab.RouterWANAddr, local, reflexive, seen)
			})
		})
	}
}

package integration

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// TestNATPortsStayApartFromTheHostsEphemeralPorts: vpnmasq's guard drops
// WAN packets to the NAT's ports before the host's stack sees them, so a NAT
// range among the ports the kernel gives the host's own sockets
// (net.ipv4.ip_local_port_range) broke the host's traffic, the DNS
// forwarder's upstream queries included, while `vpnmasq check` said OK.
// Every sysctl here is the router namespace's own (the namespace vpnmasq
// runs in); the host's are never touched.
func TestNATPortsStayApartFromTheHostsEphemeralPorts(t *testing.T) {
	requireDig(t)
	l := newLab(t, lab.Options{})
	names := map[string]string{}
	for i := range 12 {
		names[fmt.Sprintf("n%d.example.test.", i)] = "198.18.0.80"
	}
	names["www.example.test."] = "198.18.0.80"
	upstream := serveDNS(t, l.WAN, lab.WANAddr, names)

	sysctl := func(t *testing.T, setting string) {
		t.Helper()
		if out, code := runIn(t, l.Router, 10*time.Second, "sysctl", "-q", "-w", setting); code != 0 {
			t.Fatalf("sysctl -w %s in %s: exit %d: %s", setting, l.Router.Name, code, out)
		}
	}
	readSysctl := func(t *testing.T, name string) string {
		t.Helper()
		out, code := runIn(t, l.Router, 10*time.Second, "sysctl", "-n", name)
		if code != 0 {
			t.Fatalf("sysctl -n %s: exit %d: %s", name, code, out)
		}
		return strings.Join(strings.Fields(out), " ")
	}
	// Linux's default, which a new namespace has anyway: said, not assumed.
	sysctl(t, "net.ipv4.ip_local_port_range=32768 60999")

	base, _ := servicesConfig(t)
	natLine := lineOf(t, base, `port_range = "20000-32767"`)
	overlapping := strings.Replace(base, `port_range = "20000-32767"`, `port_range = "20000-60999"`, 1)
	// A forward among the ephemeral ports (WireGuard's) is a warning only.
	good := base + "\n[[forward]]\nproto = \"udp\"\nport = 51820\nto = \"192.168.77.11\"\n"
	dir := t.TempDir()
	write := func(name, text string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	refusal := regexp.QuoteMeta(fmt.Sprintf(":%d: nat.port_range: 20000-60999 overlaps the host's ephemeral ports 32768-60999 (net.ipv4.ip_local_port_range) in 32768-60999: ", natLine)) +
		`.*vpnmasq's DNS forwarder's included.*net\.ipv4\.ip_local_port_range to leave 20000-60999 free`

	t.Run("check refuses an overlapping nat.port_range with exit 2, naming both ranges, the line and the sysctl", func(t *testing.T) {
		path := write("overlap.toml", overlapping)
		code, out := runVpnmasq(t, l.Router, 10*time.Second, "check", "--config", path)
		if code != 2 || !regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(path)+refusal).MatchString(out) {
			t.Errorf("exit %d, want 2 and a line matching %s; output:\n%s", code, refusal, out)
		}
	})

	t.Run("run refuses it the same way and leaves nothing on the host", func(t *testing.T) {
		before := snapshotRouter(t, l.Router)
		r, err := launchRouter(t, l, overlapping)
		if err == nil {
			// The check is missing: show what the overlap does to the
			// router's own traffic.
			out, code := runIn(t, l.LAN1, 15*time.Second, "dig", "@"+serviceAddr, "www.example.test", "A", "+tries=1", "+time=5", "+nocookie")
			r.stop()
			t.Fatalf("run started with nat.port_range 20000-60999 over the ephemeral ports 32768-60999; "+
				"a DNS query through its forwarder then got (dig exit %d; the upstream answered %d queries for the name):\n%s",
				code, upstream.QueriesFor("www.example.test"), out)
		}
		if !strings.Contains(err.Error(), "exit status 2") || !regexp.MustCompile(`vpnmasq\.toml`+refusal).MatchString(err.Error()) {
			t.Errorf("want exit status 2 and a line matching %s; got:\n%v", refusal, err)
		}
		assertSameState(t, before, snapshotRouter(t, l.Router))
		if left := vpnmasqLeftovers(t, l.Router); len(left) > 0 {
			t.Errorf("left after the refusal:\n%s", strings.Join(left, "\n"))
		}
		if got := readSysctl(t, "net.ipv4.ip_local_port_range"); got != "32768 60999" {
			t.Errorf("net.ipv4.ip_local_port_range is %q after the refusal, want it unchanged", got)
		}
	})

	t.Run("on a namespace that gives out 1024-65535 the embedded default is refused with a hint", func(t *testing.T) {
		if _, err := os.Stat("/etc/vpnmasq/vpnmasq.toml"); err == nil {
			t.Fatal("/etc/vpnmasq/vpnmasq.toml exists on this machine: `vpnmasq run` would read it instead of the embedded default")
		}
		sysctl(t, "net.ipv4.ip_local_port_range=1024 65535")
		defer sysctl(t, "net.ipv4.ip_local_port_range=32768 60999")
		// A router that started anyway would write the default state file.
		removeDefaultStateAfter(t)
		before := snapshotRouter(t, l.Router)
		code, out := runVpnmasq(t, l.Router, 15*time.Second, "run")
		want := "<embedded default>: nat.port_range: the default 20000-32767 overlaps the host's ephemeral ports 1024-65535 (net.ipv4.ip_local_port_range) in 20000-32767: "
		if code != 2 || !strings.Contains(out, want) || !strings.Contains(out, "list 20000-32767 in net.ipv4.ip_local_reserved_ports") {
			t.Errorf("exit %d, want 2 and %q with the reserved-ports hint; output:\n%s", code, want, out)
		}
		assertSameState(t, before, snapshotRouter(t, l.Router))

		t.Run("and accepted once the operator reserves the NAT's ports", func(t *testing.T) {
			sysctl(t, "net.ipv4.ip_local_reserved_ports=500,4500,8080,20000-32767")
			defer sysctl(t, "net.ipv4.ip_local_reserved_ports=")
			path := write("plain.toml", labConfig)
			code, out := runVpnmasq(t, l.Router, 10*time.Second, "check", "--config", path)
			if code != 0 || strings.Contains(out, "warning") || !strings.Contains(out, "1024-65535 less the reserved 4500, 8080, 20000-32767") {
				t.Errorf("exit %d, want 0 without warnings, naming the reservation; output:\n%s", code, out)
			}
		})
	})

	// The lab's configuration, apart from the ephemeral ports: the
	// forwarder answers.
	path := write("good.toml", good)
	code, out := runVpnmasq(t, l.Router, 10*time.Second, "check", "--config", path)
	r := startRouter(t, l, good)
	t.Run("with nat.port_range apart from the ephemeral ports the DNS forwarder answers", func(t *testing.T) {
		wantWarning := regexp.QuoteMeta(path) + `:\d+: forward\[1\]\.port: warning: udp 51820 lies in the host's ephemeral ports 32768-60999`
		if code != 0 || !regexp.MustCompile(wantWarning).MatchString(out) {
			t.Errorf("check: exit %d, want 0 with a warning matching %s; output:\n%s", code, wantWarning, out)
		}
		if starting := r.log.find("starting"); len(starting) != 1 || starting[0].Str("ephemeral_ports") != "32768-60999" {
			t.Errorf("the starting line does not name the ephemeral ports 32768-60999: %v", starting)
		}
		if !regexp.MustCompile(`forward\[1\]\.port: warning: udp 51820`).MatchString(r.log.String()) {
			t.Errorf("the router did not log the forward's warning:\n%s", r.log)
		}
		for _, tcp := range []bool{false, true} {
			reply := digIn(t, l.LAN1, netip.MustParseAddr(serviceAddr), "www.example.test", "A", tcp)
			if reply.Status != "NOERROR" || len(reply.Answer) != 1 || !strings.Contains(reply.Answer[0].String(), "198.18.0.80") {
				t.Errorf("dig (tcp %v): %s", tcp, reply.Output)
			}
		}
	})

	t.Run("a range changed to overlap while vpnmasq runs never makes the forwarder send from a NAT port", func(t *testing.T) {
		if r.hasExited() {
			t.Fatal("the router is not running")
		}
		// 30000-32767 of 30000-34999 are NAT ports: more than half of
		// what the kernel gives out.
		sysctl(t, "net.ipv4.ip_local_port_range=30000 34999")
		defer sysctl(t, "net.ipv4.ip_local_port_range=32768 60999")
		capture := startCapture(t, l.WAN, lab.HostIf, "udp dst port 53 or (tcp dst port 53 and tcp[tcpflags] & tcp-syn != 0)")
		failed := 0
		for i := range 12 {
			name := fmt.Sprintf("n%d.example.test", i)
			out, code := runIn(t, l.LAN1, 10*time.Second, "dig", "+short", "+tries=1", "+time=3", "@"+serviceAddr, name, "A")
			if code != 0 || strings.TrimSpace(out) != "198.18.0.80" {
				failed++
				t.Errorf("%s: exit %d, %q", name, code, out)
			}
		}
		sources := regexp.MustCompile(regexp.QuoteMeta(lab.RouterWANAddr.String()) + `\.(\d+) > ` + regexp.QuoteMeta(lab.WANAddr.String()) + `\.53: `)
		var ports []int
		for _, line := range capture.stop() {
			if m := sources.FindStringSubmatch(line); m != nil {
				p, _ := strconv.Atoi(m[1])
				ports = append(ports, p)
			}
		}
		if len(ports) < 12 {
			t.Errorf("captured %d upstream queries, want at least 12", len(ports))
		}
		for _, p := range ports {
			if p >= 20000 && p <= 32767 {
				t.Errorf("the forwarder sent a query from %d, a NAT port", p)
			}
		}
		t.Logf("%d of 12 names failed; upstream queries left from ports %v", failed, ports)
	})
}

// lineOf returns the 1-based line of text that contains s.
func lineOf(t *testing.T, text, s string) int {
	t.Helper()
	for i, line := range strings.Split(text, "\n") {
		if strings.Contains(line, s) {
			return i + 1
		}
	}
	t.Fatalf("no line contains %q", s)
	return 0
}

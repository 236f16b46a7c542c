package integration

import (
	"archive/tar"
	"bufio"
	"context"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// The container commands of README.md ("## Container"), as argv. The test
// runs exactly these — "docker" being the docker.io CLI talking to the
// test's own daemon, $PWD the test's work directory holding the README's
// vpnmasq.toml — and first checks that the README shows every one of them,
// so that the README's instructions are the ones tested.
var (
	ctrBuild = []string{"docker", "build", "--network", "none", "--build-arg", "GO_IMAGE=local/go",
		"--build-arg", "GOPROXY=off", "-t", "vpnmasq", "."}
	ctrWANNetwork = []string{"docker", "network", "create", "--subnet", "198.18.9.0/24", "vpnmasq-wan"}
	ctrLANNetwork = []string{"docker", "network", "create", "--internal", "--subnet", "192.168.88.0/24", "vpnmasq-lan"}
	ctrCheck      = []string{"docker", "run", "--rm", "-v", "$PWD/vpnmasq.toml:/c.toml:ro", "vpnmasq", "check", "--config", "/c.toml"}
	ctrCreate     = []string{"docker", "create", "--name", "vpnmasq", "--network", "vpnmasq-wan", "--ip", "198.18.9.2",
		"--cap-drop", "ALL", "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", "--device", "/dev/net/tun",
		"--sysctl", "net.ipv4.ip_forward=1", "--sysctl", "net.ipv4.conf.all.accept_local=1",
		"--sysctl", "net.ipv4.conf.all.rp_filter=2", "--sysctl", "net.ipv4.conf.default.rp_filter=2",
		"--read-only", "--tmpfs", "/run", "--security-opt", "no-new-privileges",
		"-v", "vpnmasq-state:/var/lib/vpnmasq", "-v", "$PWD/vpnmasq.toml:/etc/vpnmasq/vpnmasq.toml:ro", "vpnmasq"}
	ctrConnect = []string{"docker", "network", "connect", "--ip", "192.168.88.2", "vpnmasq-lan", "vpnmasq"}
	ctrStart   = []string{"docker", "start", "vpnmasq"}
	ctrLogs    = []string{"docker", "logs", "vpnmasq"}
	ctrLANHost = []string{"docker", "run", "-d", "--name", "lan-host", "--network", "vpnmasq-lan", "--cap-add", "NET_ADMIN", "busybox",
		"sh", "-c", "ip route replace default via 192.168.88.2 && exec sleep infinity"}
	ctrWANHost = []string{"docker", "run", "-d", "--name", "wan-host", "--network", "vpnmasq-wan", "--ip", "198.18.9.10", "busybox",
		"sh", "-c", "echo hello from the WAN >/tmp/index.html && exec httpd -f -v -p 80 -h /tmp"}
	ctrPing       = []string{"docker", "exec", "lan-host", "ping", "-c", "3", "198.18.9.10"}
	ctrWget       = []string{"docker", "exec", "lan-host", "wget", "-qO-", "http://198.18.9.10/"}
	ctrWANLogs    = []string{"docker", "logs", "wan-host"}
	ctrHealthz    = []string{"docker", "exec", "lan-host", "wget", "-qO-", "http://192.0.2.53/healthz"}
	ctrStatus     = []string{"docker", "exec", "vpnmasq", "vpnmasq", "status"}
	ctrDumpTable  = []string{"docker", "kill", "--signal", "USR1", "vpnmasq"}
	ctrHealth     = []string{"docker", "inspect", "--format", "{{.State.Health.Status}}", "vpnmasq"}
	ctrStop       = []string{"docker", "stop", "vpnmasq"}
	ctrRestart    = []string{"docker", "restart", "vpnmasq"}
	ctrREADMECmds = [][]string{ctrBuild, ctrWANNetwork, ctrLANNetwork, ctrCheck, ctrCreate, ctrConnect, ctrStart, ctrLogs,
		ctrLANHost, ctrWANHost, ctrPing, ctrWget, ctrWANLogs, ctrHealthz, ctrStatus, ctrDumpTable, ctrHealth, ctrStop,
		ctrRestart}
)

// Addresses and names the README uses, and the test's own WAN peer.
var (
	ctrRouterWAN = netip.MustParseAddr("198.18.9.2")
	ctrRouterLAN = netip.MustParseAddr("192.168.88.2")
	ctrLANPrefix = netip.MustParsePrefix("192.168.88.0/24")
	ctrWANHostIP = netip.MustParseAddr("198.18.9.10")
	// ctrPeerIP runs labpeer's servers (HTTP, UDP echo, PPTP): a test
	// host beside the README's wan-host.
	ctrPeerIP = netip.MustParseAddr("198.18.9.11")
)

const (
	ctrRouterName = "vpnmasq"
	// ctrPeerName is the test's WAN peer container, not in the README.
	ctrPeerName = "wan-peer"
	// ctrGoImage is the local build-stage image; "busybox" stands in for
	// Docker Hub's busybox image that the README's hosts use, with labpeer
	// added for the test.
	ctrGoImage   = "local/go"
	ctrHostImage = "busybox"
	// ctrBlobSize is what the LAN host downloads through the router.
	ctrBlobSize = 16 << 20
	// ctrPacedSize is downloaded over ctrPacedOver while the router
	// restarts.
	ctrPacedSize = 6 << 20
	ctrPacedOver = 4 * time.Second
	// ctrCapsWant are the effective capabilities of vpnmasq in the
	// container: CAP_NET_ADMIN (12) and CAP_NET_RAW (13), nothing else.
	ctrCapsWant = 1<<12 | 1<<13
)

// ctrInstallHint is what a machine without the container tools needs.
const ctrInstallHint = "apt-get install -y --no-install-recommends docker.io busybox-static " +
	"(with a policy-rc.d that exits 101, so that the package starts no daemon on the host)"

// TestContainerDeploymentAsTheREADMEShowsIt builds the image from the
// repository's Dockerfile and runs the README's container sequence in a
// Docker daemon of its own: a router container on a WAN and an internal
// LAN network, a LAN host routing through it, a WAN host. It proves ping,
// HTTP, UDP and a PPTP call (control exchange and GRE both ways) through the
// router with the WAN side seeing only the router's WAN address, the
// router's TUN, policy routing and input guard in its namespace, its
// status, health check and log, that `docker restart` and `docker stop`
// with `docker start` keep the LAN host's connections (a held TCP
// connection and a PPTP call, the WAN side speaking first after the
// restart; a download running across docker stop and start, and with
// VPNMASQ_TEST_STATE_GAP=1 across docker restart too),
// and a clean exit on
// `docker stop` that leaves nothing of vpnmasq in the namespace but the
// hold, whose rules the kernel ends after [state] hold.
func TestContainerDeploymentAsTheREADMEShowsIt(t *testing.T) {
	start := time.Now()
	t.Run("the README shows the commands this test runs", func(t *testing.T) {
		shown := ctrREADMECommands(t)
		for _, argv := range ctrREADMECmds {
			if line := ctrShellLine(argv); !shown[line] {
				t.Errorf("README.md's container section does not show the command the test runs:\n  %s", line)
			}
		}
	})

	d := ctrStartDaemon(t)
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(repo, "Dockerfile")); err != nil {
		t.Fatalf("no Dockerfile at the repository root: %v", err)
	}
	imagesStart := time.Now()
	ctrImportGoImage(t, d, repo)
	ctrImportHostImage(t, d, repo)
	t.Logf("base images imported in %v", time.Since(imagesStart).Round(time.Second))

	if !t.Run("the image builds offline from the repository's Dockerfile", func(t *testing.T) {
		buildStart := time.Now()
		d.mustRun(t, 15*time.Minute, repo, ctrBuild...)
		t.Logf("image built in %v", time.Since(buildStart).Round(time.Second))
		out := d.mustRun(t, time.Minute, "", "docker", "inspect", "--format", "{{json .Config}}", "vpnmasq")
		var cfg struct {
			Entrypoint, Cmd []string
			User            string
			Healthcheck     struct{ Test []string }
		}
		if err := json.Unmarshal([]byte(out), &cfg); err != nil {
			t.Fatalf("image config %q: %v", out, err)
		}
		if !slices.Equal(cfg.Entrypoint, []string{"/usr/local/bin/vpnmasq"}) || !slices.Equal(cfg.Cmd, []string{"run"}) {
			t.Errorf("image runs %v %v, want [/usr/local/bin/vpnmasq] [run]", cfg.Entrypoint, cfg.Cmd)
		}
		if !slices.Equal(cfg.Healthcheck.Test, []string{"CMD", "/usr/local/bin/vpnmasq", "status", "--health"}) {
			t.Errorf("image health check %v, want vpnmasq status --health", cfg.Healthcheck.Test)
		}
	}) {
		t.FailNow()
	}

	// The configuration is the README's, as written.
	if err := os.WriteFile(filepath.Join(d.work, "vpnmasq.toml"), []byte(ctrREADMEConfig(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	var netnsName string // the router container's namespace, kept past its exit
	if !t.Run("the router container starts on the README's config and takes the default route's interface as WAN", func(t *testing.T) {
		d.mustRun(t, time.Minute, "", ctrWANNetwork...)
		d.mustRun(t, time.Minute, "", ctrLANNetwork...)
		if out := d.mustRun(t, time.Minute, d.work, ctrCheck...); !strings.Contains(out, "/c.toml: OK") {
			t.Errorf("vpnmasq check of the README's configuration printed %q, want \"/c.toml: OK\"", out)
		}
		d.mustRun(t, time.Minute, d.work, ctrCreate...)
		d.mustRun(t, time.Minute, "", ctrConnect...)
		d.mustRun(t, time.Minute, "", ctrStart...)
		ready := d.waitRouterLog(t, "router ready", 30*time.Second)
		starting := d.routerLogLines(t, "starting")
		if len(starting) != 1 {
			t.Fatalf("want one \"starting\" line, got %d", len(starting))
		}
		s := starting[0]
		if got := s.Str("config"); got != "/etc/vpnmasq/vpnmasq.toml" {
			t.Errorf("config %q, want the mounted /etc/vpnmasq/vpnmasq.toml", got)
		}
		if got := s.Str("wan_addr"); got != ctrRouterWAN.String() {
			t.Errorf("WAN address %s, want %s (the router's address on vpnmasq-wan)", got, ctrRouterWAN)
		}
		if got := s.Str("prefixes"); got != ctrLANPrefix.String() {
			t.Errorf("LAN prefixes %s, want %s", got, ctrLANPrefix)
		}
		wan := s.Str("wan")
		var lans []string
		if l, ok := s.Fields["lan"].([]any); ok {
			for _, v := range l {
				lans = append(lans, fmt.Sprint(v))
			}
		}
		if len(lans) != 1 || lans[0] == wan {
			t.Fatalf("WAN %q, LAN %q: want one LAN interface besides the WAN", wan, lans)
		}
		t.Logf("router ready: WAN %s, LAN %s: %s", wan, lans[0], ready.Raw)

		pid := d.mustRun(t, time.Minute, "", "docker", "inspect", "--format", "{{.State.Pid}}", ctrRouterName)
		netnsName = d.tag + "-router"
		if out, err := exec.Command("ip", "netns", "attach", netnsName, strings.TrimSpace(pid)).CombinedOutput(); err != nil {
			netnsName = ""
			t.Fatalf("ip netns attach (keeps the router's namespace for the checks after docker stop): %v: %s", err, out)
		}
		ns := &lab.NS{Name: netnsName}
		for ifname, addr := range map[string]netip.Addr{wan: ctrRouterWAN, lans[0]: ctrRouterLAN} {
			out, code := runIn(t, ns, 10*time.Second, "ip", "-o", "-4", "addr", "show", "dev", ifname)
			if code != 0 || !strings.Contains(out, " "+addr.String()+"/") {
				t.Errorf("interface %s in the router's namespace: want address %s; ip: exit %d: %s", ifname, addr, code, out)
			}
		}
	}) {
		t.FailNow()
	}
	ns := &lab.NS{Name: netnsName}

	t.Run("vpnmasq runs as root with NET_ADMIN and NET_RAW as its only capabilities", func(t *testing.T) {
		pid := strings.TrimSpace(d.mustRun(t, time.Minute, "", "docker", "inspect", "--format", "{{.State.Pid}}", ctrRouterName))
		status, err := os.ReadFile(filepath.Join("/proc", pid, "status"))
		if err != nil {
			t.Fatal(err)
		}
		fields := map[string]string{}
		for _, l := range strings.Split(string(status), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok {
				fields[k] = strings.TrimSpace(v)
			}
		}
		if !strings.HasPrefix(fields["Name"], "vpnmasq") {
			t.Fatalf("PID %s is %q, not vpnmasq", pid, fields["Name"])
		}
		if uid := strings.Fields(fields["Uid"]); len(uid) == 0 || uid[0] != "0" {
			t.Errorf("vpnmasq runs as uid %v, want 0 (the README says why)", fields["Uid"])
		}
		for _, set := range []string{"CapEff", "CapPrm", "CapBnd"} {
			caps, err := strconv.ParseUint(fields[set], 16, 64)
			if err != nil || caps != ctrCapsWant {
				t.Errorf("%s = %s, want %#x (NET_ADMIN and NET_RAW only)", set, fields[set], ctrCapsWant)
			}
		}
		if fields["NoNewPrivs"] != "1" {
			t.Errorf("NoNewPrivs = %q, want 1", fields["NoNewPrivs"])
		}
	})

	t.Run("the router's namespace holds its TUN, policy rule, route and nftables tables", func(t *testing.T) {
		left := vpnmasqLeftovers(t, ns)
		for _, kind := range []string{"link: ", "rule: ", "route: ", "nft: "} {
			if !slices.ContainsFunc(left, func(l string) bool { return strings.HasPrefix(l, kind) }) {
				t.Errorf("no %s of vpnmasq in the router's namespace; found %q", strings.TrimSuffix(kind, ": "), left)
			}
		}
	})

	// The hosts: the README's LAN and WAN host, and the test's WAN peer.
	d.mustRun(t, time.Minute, "", ctrLANHost...)
	d.mustRun(t, time.Minute, "", ctrWANHost...)
	d.mustRun(t, time.Minute, "", "docker", "run", "-d", "--name", ctrPeerName, "--network", "vpnmasq-wan", "--ip", ctrPeerIP.String(), ctrHostImage,
		"sh", "-c", "labpeer http-server :80 & labpeer udp-echo :7 & exec labpeer pptp-server "+ctrPeerIP.String())
	ctrWaitFor(t, "the LAN host's default route via the router", 15*time.Second, func() (bool, string) {
		out, err := d.run(10*time.Second, "", "docker", "exec", "lan-host", "ip", "route", "show", "default")
		return err == nil && strings.Contains(out, "via "+ctrRouterLAN.String()), out
	})
	ctrWaitFor(t, "the WAN host's web server", 15*time.Second, func() (bool, string) {
		out, err := d.run(10*time.Second, "", "docker", "exec", "wan-host", "netstat", "-ltn")
		return err == nil && strings.Contains(out, ":80 "), out
	})
	ctrWaitFor(t, "the WAN peer's three servers", 15*time.Second, func() (bool, string) {
		out := d.logs(ctrPeerName)
		return strings.Count(out, "listening on") == 3, out
	})
	lanHostIP, err := netip.ParseAddr(strings.TrimSpace(d.mustRun(t, time.Minute, "", "docker", "inspect", "--format",
		`{{(index .NetworkSettings.Networks "vpnmasq-lan").IPAddress}}`, "lan-host")))
	if err != nil || !ctrLANPrefix.Contains(lanHostIP) {
		t.Fatalf("LAN host address %v (%v), want one in %s", lanHostIP, err, ctrLANPrefix)
	}

	t.Run("the LAN host reaches the WAN through the router, masqueraded to the router's WAN address", func(t *testing.T) {
		wanSource := regexp.QuoteMeta(ctrRouterWAN.String())
		t.Run("ping", func(t *testing.T) {
			out := d.mustRun(t, 30*time.Second, "", ctrPing...)
			if !strings.Contains(out, "3 packets received") {
				t.Errorf("ping lost packets: %s", out)
			}
		})
		t.Run("HTTP to the README's WAN host, whose log shows the router's WAN address", func(t *testing.T) {
			if out := d.mustRun(t, 30*time.Second, "", ctrWget...); out != "hello from the WAN\n" {
				t.Errorf("wget printed %q, want \"hello from the WAN\\n\"", out)
			}
			// busybox httpd logs to standard error.
			if out := d.mustCombined(t, 30*time.Second, ctrWANLogs...); !regexp.MustCompile(`\b` + wanSource + `\]?:\d+: response:200`).MatchString(out) {
				t.Errorf("wan-host's log shows no request from %s: %q", ctrRouterWAN, out)
			}
		})
		t.Run("HTTP: the WAN peer sees the router's WAN address as the client", func(t *testing.T) {
			out := d.mustRun(t, 30*time.Second, "", "docker", "exec", "lan-host", "wget", "-qO-", "http://"+ctrPeerIP.String()+"/")
			ap, err := netip.ParseAddrPort(strings.TrimSpace(out))
			if err != nil || ap.Addr() != ctrRouterWAN {
				t.Errorf("the WAN peer saw the client %q, want %s:port", out, ctrRouterWAN)
			}
		})
		t.Run("HTTP: 16 MiB downloaded with the right SHA-256", func(t *testing.T) {
			want := lab.BlobSHA256(ctrBlobSize)
			t0 := time.Now()
			out := d.mustRun(t, 2*time.Minute, "", "docker", "exec", "lan-host", "sh", "-c",
				fmt.Sprintf("wget -qO- \"http://%s/blob?bytes=%d\" | sha256sum", ctrPeerIP, ctrBlobSize))
			if got := strings.Fields(out); len(got) == 0 || got[0] != hex.EncodeToString(want[:]) {
				t.Errorf("SHA-256 of the download %q, want %x", out, want)
			}
			t.Logf("%d bytes through the router container in %v", ctrBlobSize, time.Since(t0).Round(time.Millisecond))
		})
		t.Run("UDP echoed, the WAN peer seeing the router's WAN address", func(t *testing.T) {
			const msg = "hello through vpnmasq"
			out := d.mustRun(t, 30*time.Second, "", "docker", "exec", "lan-host", "labpeer", "udp-client", ctrPeerIP.String()+":7", msg)
			if !strings.Contains(out, "echo from "+ctrPeerIP.String()+":7: "+msg) {
				t.Errorf("udp-client printed %q", out)
			}
			re := regexp.MustCompile(fmt.Sprintf(`udp %d bytes from %s:\d+ echoed`, len(msg), wanSource))
			if log := d.logs(ctrPeerName); !re.MatchString(log) {
				t.Errorf("the WAN peer's log has no datagram from %s:\n%s", ctrRouterWAN, log)
			}
		})
	})

	t.Run("the LAN host reaches the router's local services at 192.0.2.53", func(t *testing.T) {
		if out := d.mustRun(t, 30*time.Second, "", ctrHealthz...); out != "ok\n" {
			t.Errorf("/healthz answered %q, want \"ok\\n\"", out)
		}
	})

	var masqCallID string
	t.Run("a PPTP call through the router: control exchange and GRE both ways", func(t *testing.T) {
		out := d.mustRun(t, time.Minute, "", "docker", "exec", "lan-host", "labpeer", "pptp-client", ctrPeerIP.String(), "0x4242")
		if !strings.Contains(out, "3 GRE packets each way echoed, call cleared, control connection stopped") {
			t.Errorf("pptp-client printed %q", out)
		}
		re := regexp.MustCompile(`pptp call 0x[0-9a-f]+ cleared: client call (0x[0-9a-f]+) from ` + regexp.QuoteMeta(ctrRouterWAN.String()) +
			`:\d+, GRE from ` + regexp.QuoteMeta(ctrRouterWAN.String()) + `: 3 in, 3 echoed`)
		log := d.logs(ctrPeerName)
		m := re.FindStringSubmatch(log)
		if m == nil {
			t.Fatalf("the WAN peer's log shows no call from %s with 3 GRE packets each way:\n%s", ctrRouterWAN, log)
		}
		masqCallID = m[1]
		t.Logf("client Call ID 0x4242 reached the server as %s", masqCallID)
	})

	t.Run("vpnmasq status in the container shows the LAN host's mappings and the PPTP call", func(t *testing.T) {
		text := d.mustRun(t, 30*time.Second, "", ctrStatus...)
		for _, want := range []string{ctrRouterWAN.String(), ctrLANPrefix.String(), "NAT mappings", lanHostIP.String()} {
			if !strings.Contains(text, want) {
				t.Errorf("vpnmasq status lacks %q:\n%s", want, text)
			}
		}
		out := d.mustRun(t, 30*time.Second, "", append(slices.Clone(ctrStatus), "--json")...)
		var st ctrStatusJSON
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("vpnmasq status --json: %v:\n%s", err, out)
		}
		if st.WANAddr != ctrRouterWAN {
			t.Errorf("status WAN address %s, want %s", st.WANAddr, ctrRouterWAN)
		}
		for _, want := range []struct {
			proto  string
			remote netip.Addr
		}{{"icmp", ctrWANHostIP}, {"tcp", ctrWANHostIP}, {"tcp", ctrPeerIP}, {"udp", ctrPeerIP}} {
			if !slices.ContainsFunc(st.Mappings, func(m ctrMapping) bool {
				return m.Proto == want.proto && m.LAN.Addr() == lanHostIP && m.WAN.Addr() == ctrRouterWAN && m.Remote.Addr() == want.remote
			}) {
				t.Errorf("no %s mapping %s -> %s -> %s in %+v", want.proto, lanHostIP, ctrRouterWAN, want.remote, st.Mappings)
			}
		}
		found := false
		for _, c := range st.VPN.PPTP {
			for _, call := range c.Calls {
				if c.Client.Addr() == lanHostIP && c.Server == netip.AddrPortFrom(ctrPeerIP, 1723) && call.CallID == 0x4242 {
					found = true
					if fmt.Sprintf("%#04x", call.MasqCallID) != masqCallID {
						t.Errorf("status masqueraded Call ID %#04x, the server saw %s", call.MasqCallID, masqCallID)
					}
					if call.GREOut != 3 || call.GREIn != 3 {
						t.Errorf("status GRE out %d, in %d; want 3 and 3", call.GREOut, call.GREIn)
					}
				}
			}
		}
		if !found {
			t.Errorf("status shows no PPTP call 0x4242 from %s to %s:1723: %+v", lanHostIP, ctrPeerIP, st.VPN.PPTP)
		}
	})

	t.Run("docker kill --signal USR1 writes the NAT table into the log", func(t *testing.T) {
		d.mustRun(t, 30*time.Second, "", ctrDumpTable...)
		d.waitRouterLog(t, "nat table", 10*time.Second)
	})

	t.Run("the image's HEALTHCHECK reports the router healthy", func(t *testing.T) {
		ctrWaitFor(t, "health status healthy", 45*time.Second, func() (bool, string) {
			out, err := d.run(10*time.Second, "", ctrHealth...)
			return err == nil && strings.TrimSpace(out) == "healthy", out
		})
	})

	// Every start of the router container logs one "router ready" and,
	// at its stop, one "router stopped" and one "nat state saved".
	runs := 1
	for i, rs := range []struct {
		how  string
		cmds [][]string
		// download: a download runs across it by default; across docker
		// restart only with VPNMASQ_TEST_STATE_GAP=1 (see
		// ctrRestartKeepsConnections).
		download bool
	}{
		{"docker restart", [][]string{ctrRestart}, os.Getenv("VPNMASQ_TEST_STATE_GAP") != ""},
		{"docker stop and docker start", [][]string{ctrStop, ctrStart}, true},
	} {
		t.Run(rs.how+" keeps the LAN host's connections, the WAN side speaking first after it", func(t *testing.T) {
			ctrRestartKeepsConnections(t, d, netnsName, runs, rs.cmds, 9001+i, 0x4343+i, rs.download)
		})
		runs++
	}

	t.Run("docker stop ends the router cleanly and leaves nothing of vpnmasq in its namespace but the hold", func(t *testing.T) {
		t0 := time.Now()
		d.mustRun(t, 30*time.Second, "", ctrStop...)
		took := time.Since(t0)
		if took > 8*time.Second {
			t.Errorf("docker stop took %v: the router did not end on SIGTERM and was killed at the timeout", took)
		}
		state := d.mustRun(t, time.Minute, "", "docker", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}} {{.State.OOMKilled}}", ctrRouterName)
		if strings.TrimSpace(state) != "exited 0 false" {
			t.Errorf("router container state %q, want \"exited 0 false\"", strings.TrimSpace(state))
		}
		// One of each per start of the container.
		if n := len(d.routerLogLines(t, "router stopped")); n != runs {
			t.Errorf("%d \"router stopped\" in the router's log, want %d", n, runs)
		}
		// The read-only container writes its NAT state on the volume.
		if n := len(d.routerLogLines(t, "nat state saved")); n != runs {
			t.Errorf("%d \"nat state saved\" in the router's log, want %d", n, runs)
		}
		for _, l := range d.routerLogLines(t, "") {
			if l.Level() == "error" {
				t.Errorf("error in the router's log: %s", l.Raw)
			}
		}
		// The hold (README, "The hold covers the gap") stays in the
		// namespace, which Docker deletes with the stopped container's
		// sandbox; only the test's attachment keeps it.
		if left := vpnmasqLeftovers(t, ns); !slices.Equal(left, []string{"nft: table ip vpnmasq_vpnmasq0_hold"}) {
			t.Errorf("left in the router's namespace after docker stop: %q, want the hold table only", left)
		}
		if n := len(d.routerLogLines(t, "hold installed until the next start")); n != runs {
			t.Errorf("%d \"hold installed\" in the router's log, want %d", n, runs)
		}
		t.Logf("docker stop took %v", took.Round(time.Millisecond))
	})
	t.Logf("container test body took %v", time.Since(start).Round(time.Second))
}

// ctrRestartKeepsConnections restarts the router container with cmds
// (`docker restart`, or `docker stop` and `docker start`) while the LAN
// host holds three things through it, and checks that each goes on:
//
//   - a TCP connection (busybox nc on both sides, over `docker exec -i`),
//     idle across the restart; after it the WAN side sends first and the
//     LAN host receives, then the other way. A LAN host speaking first
//     would re-create a lost mapping and hide it.
//   - a PPTP call (labpeer pptp-hold, Call ID callID), held across the
//     restart; after it the WAN peer sends GRE first (SIGUSR1), then GRE
//     goes both ways and the call is cleared over the control connection.
//   - with download, a download of ctrPacedSize bytes, paced over
//     ctrPacedOver, running while the router is away, completes with the
//     right SHA-256. Without the hold it was reset in 10 runs of 10, both
//     ways of restarting (a capture showed the RST from the old namespace
//     about 55 ms after the restart began). With the hold, across `docker
//     stop` and `docker start` it completed in 5 runs of 5, so it runs by
//     default there; across `docker restart` in 3 of 5: the new namespace
//     has the router's address before vpnmasq runs in it, with no guard,
//     which no process inside the container can close. There it runs only
//     with VPNMASQ_TEST_STATE_GAP=1 (README, "A LAN network behind a
//     router container").
//
// runs is the number of the router's starts so far. The router comes back
// in a new network namespace (Docker makes a new sandbox at every start);
// netnsName is re-attached to it, so the final checks look at the router's
// current namespace.
func ctrRestartKeepsConnections(t *testing.T, d *ctrDaemon, netnsName string, runs int, cmds [][]string, port, callID int, download bool) {
	// The held TCP connection: the WAN side listens, the LAN host
	// connects, a line each way.
	wan := d.startPipe(t, "docker", "exec", "-i", ctrPeerName, "nc", "-l", "-p", strconv.Itoa(port))
	ctrWaitFor(t, fmt.Sprintf("the WAN peer's nc listening on port %d", port), 15*time.Second, func() (bool, string) {
		out, err := d.run(10*time.Second, "", "docker", "exec", ctrPeerName, "netstat", "-ltn")
		return err == nil && strings.Contains(out, fmt.Sprintf(":%d ", port)), out
	})
	lan := d.startPipe(t, "docker", "exec", "-i", "lan-host", "nc", ctrPeerIP.String(), strconv.Itoa(port))
	lan.send(t, "LAN before the restart")
	wan.expect(t, "LAN before the restart", 10*time.Second)
	wan.send(t, "WAN before the restart")
	lan.expect(t, "WAN before the restart", 10*time.Second)

	// The held PPTP call.
	id := fmt.Sprintf("%#04x", callID)
	call := d.startPipe(t, "docker", "exec", "lan-host", "labpeer", "pptp-hold", ctrPeerIP.String(), id)
	waiting := call.expect(t, "waiting for the server's GRE", 30*time.Second)
	m := regexp.MustCompile(`server call (0x[0-9a-f]+)`).FindStringSubmatch(waiting)
	if m == nil {
		t.Fatalf("pptp-hold names no server call: %q", waiting)
	}
	serverCall := m[1]

	// The running download.
	type result struct {
		out  string
		err  error
		took time.Duration
	}
	dl := make(chan result, 1)
	if download {
		go func() {
			file := fmt.Sprintf("/tmp/paced-%d", port)
			t0 := time.Now()
			// timeout rather than wget -T, which crashes Debian's busybox
			// 1.35 (exit 139).
			out, err := d.run(time.Minute, "", "docker", "exec", "lan-host", "sh", "-c", fmt.Sprintf(
				`timeout 30 wget -qO %[1]s "http://%[2]s/blob?bytes=%[3]d&over=%[4]v"; echo "wget exit $?"; wc -c <%[1]s; sha256sum <%[1]s; rm -f %[1]s`,
				file, ctrPeerIP, ctrPacedSize, ctrPacedOver))
			dl <- result{out, err, time.Since(t0)}
		}()
		time.Sleep(time.Second)
	}

	// The restart.
	oldNetNS := ctrRouterNetNS(t, d)
	oldMAC := d.mustRun(t, 30*time.Second, "", "docker", "inspect", "--format",
		`{{range $n, $e := .NetworkSettings.Networks}}{{$n}}={{$e.MacAddress}} {{end}}`, ctrRouterName)
	t0 := time.Now()
	var how []string
	for _, argv := range cmds {
		d.mustRun(t, 30*time.Second, "", argv...)
		how = append(how, ctrShellLine(argv))
	}
	took := time.Since(t0)
	ready := d.waitRouterLogNth(t, "router ready", runs+1, 30*time.Second)
	back := time.Since(t0)
	restored := d.routerLogLines(t, "nat state restored")
	if len(restored) != runs {
		t.Fatalf("%d \"nat state restored\" in the router's log after %d restarts; log:\n%s", len(restored), runs, d.logs(ctrRouterName))
	}
	t.Logf("%s took %v, router ready %v after it began (startup_ms %v): %s",
		strings.Join(how, " && "), took.Round(time.Millisecond), back.Round(time.Millisecond), ready.Fields["startup_ms"], restored[runs-1].Raw)

	// Docker gives the restarted container a new network namespace (with
	// the same addresses; Docker 20.10 derives the MAC addresses from them,
	// so those stay too): the test's name for it follows.
	newNetNS := ctrRouterNetNS(t, d)
	newMAC := d.mustRun(t, 30*time.Second, "", "docker", "inspect", "--format",
		`{{range $n, $e := .NetworkSettings.Networks}}{{$n}}={{$e.MacAddress}} {{end}}`, ctrRouterName)
	t.Logf("router's network namespace %s before, %s after; MAC addresses %s before, %s after",
		oldNetNS.id, newNetNS.id, strings.TrimSpace(oldMAC), strings.TrimSpace(newMAC))
	if out, err := exec.Command("ip", "netns", "delete", netnsName).CombinedOutput(); err != nil {
		t.Fatalf("ip netns delete %s: %v: %s", netnsName, err, out)
	}
	if out, err := exec.Command("ip", "netns", "attach", netnsName, newNetNS.pid).CombinedOutput(); err != nil {
		t.Fatalf("ip netns attach %s %s: %v: %s", netnsName, newNetNS.pid, err, out)
	}
	left := vpnmasqLeftovers(t, &lab.NS{Name: netnsName})
	for _, kind := range []string{"link: ", "rule: ", "route: ", "nft: "} {
		if !slices.ContainsFunc(left, func(l string) bool { return strings.HasPrefix(l, kind) }) {
			t.Errorf("no %s of vpnmasq in the restarted router's namespace; found %q", strings.TrimSuffix(kind, ": "), left)
		}
	}

	t.Run("the held TCP connection: the WAN side's data reaches the LAN host, then the LAN host's the WAN side", func(t *testing.T) {
		wan.send(t, "WAN first after the restart")
		lan.expect(t, "WAN first after the restart", 20*time.Second)
		lan.send(t, "LAN after the restart")
		wan.expect(t, "LAN after the restart", 20*time.Second)
		// The LAN host closes; the WAN side sees the end and closes too.
		lan.closeInput(t)
		wan.wait(t, 10*time.Second)
		lan.wait(t, 10*time.Second)
	})

	t.Run("the held PPTP call: the WAN peer's GRE reaches the LAN host, then GRE both ways and the call is cleared", func(t *testing.T) {
		// GRE is a datagram: the signal is repeated until one arrives.
		for try := 1; ; try++ {
			d.mustRun(t, 30*time.Second, "", "docker", "kill", "--signal", "USR1", ctrPeerName)
			if _, ok := call.next("the server's GRE", 2*time.Second); ok {
				break
			}
			if try == 5 {
				t.Fatalf("the WAN peer's GRE did not reach the held call after %d tries; WAN peer's log:\n%s", try, d.logs(ctrPeerName))
			}
		}
		call.expect(t, "call cleared, control connection stopped", 30*time.Second)
		call.wait(t, 10*time.Second)
		re := regexp.MustCompile(`pptp call ` + serverCall + ` cleared: client call 0x[0-9a-f]+ from ` + regexp.QuoteMeta(ctrRouterWAN.String()) +
			`:\d+, GRE from ` + regexp.QuoteMeta(ctrRouterWAN.String()) + `: 6 in, 6 echoed, [1-5] sent first`)
		if log := d.logs(ctrPeerName); !re.MatchString(log) {
			t.Errorf("the WAN peer's log shows no call %s cleared with 6 GRE packets each way and GRE sent first:\n%s", serverCall, log)
		}
	})

	t.Run("the download running across the restart completes with the right SHA-256", func(t *testing.T) {
		if !download {
			t.Skip("known limitation across docker restart (README, container section): set VPNMASQ_TEST_STATE_GAP=1 to run")
		}
		var r result
		select {
		case r = <-dl:
		case <-time.After(time.Minute):
			t.Fatal("the download did not end within a minute")
		}
		want := lab.BlobSHA256(ctrPacedSize)
		f := strings.Fields(r.out)
		if r.err != nil || len(f) < 5 || f[2] != "0" || f[3] != strconv.Itoa(ctrPacedSize) || f[4] != hex.EncodeToString(want[:]) {
			t.Errorf("download of %d bytes across the restart: %q (%v); want wget exit 0, %d bytes, SHA-256 %x; WAN peer's log:\n%s",
				ctrPacedSize, r.out, r.err, ctrPacedSize, want, d.logs(ctrPeerName))
		}
		t.Logf("%d bytes paced over %v downloaded across the restart in %v", ctrPacedSize, ctrPacedOver, r.took.Round(time.Millisecond))
	})
}

// ctrNetNS is the router process and its network namespace.
type ctrNetNS struct{ pid, id string }

// ctrRouterNetNS returns the router container's process and its network
// namespace ("net:[inode]").
func ctrRouterNetNS(t *testing.T, d *ctrDaemon) ctrNetNS {
	t.Helper()
	pid := strings.TrimSpace(d.mustRun(t, time.Minute, "", "docker", "inspect", "--format", "{{.State.Pid}}", ctrRouterName))
	id, err := os.Readlink(filepath.Join("/proc", pid, "ns", "net"))
	if err != nil {
		t.Fatal(err)
	}
	return ctrNetNS{pid, id}
}

// ctrPipe is a command in a container (`docker exec`) whose standard
// input the test writes and whose standard output it reads line by line.
type ctrPipe struct {
	line   string // the command line, for messages
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // closed at the end of standard output
	stderr *syncBuffer
	done   chan struct{} // closed when the command ended; then err is set
	err    error
}

// startPipe starts the command; it is ended (the docker CLI killed) when
// the test ends, if it has not by then.
func (d *ctrDaemon) startPipe(t *testing.T, argv ...string) *ctrPipe {
	t.Helper()
	t.Logf("$ %s", ctrShellLine(argv))
	p := &ctrPipe{line: ctrShellLine(argv), lines: make(chan string, 64), stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(d.cli, argv[1:]...)
	p.cmd.Env = d.env
	p.cmd.Dir = d.work
	p.cmd.Stderr = p.stderr
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", p.line, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			for range p.lines {
			}
			<-p.done
		}
	})
	return p
}

// send writes one line to the command's standard input.
func (p *ctrPipe) send(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		t.Fatalf("%s: writing %q: %v", p.line, line, err)
	}
}

// next reads lines until one contains want, for at most timeout; false if
// none did (the lines read are gone).
func (p *ctrPipe) next(want string, timeout time.Duration) (string, bool) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				return "", false
			}
			if strings.Contains(l, want) {
				return l, true
			}
		case <-timer.C:
			return "", false
		}
	}
}

// expect is next that fails the test, saying whether the command ended.
func (p *ctrPipe) expect(t *testing.T, want string, timeout time.Duration) string {
	t.Helper()
	l, ok := p.next(want, timeout)
	if ok {
		return l
	}
	select {
	case <-p.done:
		t.Fatalf("%s ended (%v; stderr %q) without printing %q", p.line, p.err, p.stderr, want)
	default:
		t.Fatalf("%s printed no %q within %v; stderr %q", p.line, want, timeout, p.stderr)
	}
	return ""
}

// closeInput closes the command's standard input.
func (p *ctrPipe) closeInput(t *testing.T) {
	t.Helper()
	if err := p.stdin.Close(); err != nil {
		t.Fatalf("%s: closing its input: %v", p.line, err)
	}
}

// wait waits for the command to end with exit status 0.
func (p *ctrPipe) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	go func() {
		for range p.lines { // unread output must not hold the command up
		}
	}()
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("%s: %v; stderr %q", p.line, p.err, p.stderr)
		}
	case <-time.After(timeout):
		t.Errorf("%s still running %v after the test expected its end", p.line, timeout)
	}
}

// ctrStatusJSON is the part of `vpnmasq status --json` the test checks.
type ctrStatusJSON struct {
	WANAddr  netip.Addr   `json:"wan_addr"`
	Mappings []ctrMapping `json:"mappings"`
	VPN      struct {
		PPTP []struct {
			Client netip.AddrPort `json:"client"`
			Server netip.AddrPort `json:"server"`
			Calls  []struct {
				CallID     uint16 `json:"call_id"`
				MasqCallID uint16 `json:"masq_call_id"`
				GREOut     uint64 `json:"gre_out"`
				GREIn      uint64 `json:"gre_in"`
			} `json:"calls"`
		} `json:"pptp"`
	} `json:"vpn"`
}

type ctrMapping struct {
	Proto  string         `json:"proto"`
	LAN    netip.AddrPort `json:"lan"`
	WAN    netip.AddrPort `json:"wan"`
	Remote netip.AddrPort `json:"remote"`
}

// ctrREADMECommands returns the command lines of README.md's "## Container"
// section: every line of its sh code blocks (continuation lines joined,
// comments cut) and every inline code span that starts with "docker ".
func ctrREADMECommands(t *testing.T) map[string]bool {
	t.Helper()
	section := ctrREADMESection(t)
	cmds := map[string]bool{}
	var block []string
	inSh := false
	for _, l := range strings.Split(section, "\n") {
		switch {
		case strings.HasPrefix(l, "```sh"):
			inSh, block = true, nil
		case strings.HasPrefix(l, "```") && inSh:
			inSh = false
			joined := strings.ReplaceAll(strings.Join(block, "\n"), "\\\n", " ")
			for _, c := range strings.Split(joined, "\n") {
				if i := strings.Index(c, " #"); i >= 0 {
					c = c[:i]
				}
				if c = strings.Join(strings.Fields(c), " "); c != "" {
					cmds[c] = true
				}
			}
		case inSh:
			block = append(block, l)
		default:
			for _, span := range regexp.MustCompile("`(docker [^`]+)`").FindAllStringSubmatch(l, -1) {
				cmds[span[1]] = true
			}
		}
	}
	return cmds
}

// ctrREADMESection returns README.md's "## Container" section.
func ctrREADMESection(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Container\n")
	if !ok {
		t.Fatal("README.md has no \"## Container\" section")
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	return section
}

// ctrREADMEConfig returns the first toml code block of the README's
// container section: the router's configuration file.
func ctrREADMEConfig(t *testing.T) string {
	t.Helper()
	_, rest, ok := strings.Cut(ctrREADMESection(t), "```toml\n")
	if !ok {
		t.Fatal("README.md's container section has no toml block")
	}
	config, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("README.md's container toml block does not end")
	}
	return config
}

// ctrShellLine renders argv as the README writes it: arguments with shell
// metacharacters in single quotes, those with $PWD in double quotes.
func ctrShellLine(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		switch {
		case strings.Contains(a, "$PWD"):
			out[i] = `"` + a + `"`
		case a == "" || strings.ContainsAny(a, " \t'\"&|;<>(){}$*?[]#~\\"):
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		default:
			out[i] = a
		}
	}
	return strings.Join(out, " ")
}

// ctrWaitFor polls cond every 200 ms until it holds or timeout passes; the
// test fails with cond's last detail then.
func ctrWaitFor(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v; last: %s", what, timeout, detail)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ctrDaemon is the test's own Docker daemon: it runs in a network
// namespace of its own (every bridge it makes stays there; forwarding and
// NAT are off, so nothing reaches the host's networks and no container
// reaches another network but through the router container), with its data,
// state and socket in a temporary directory.
type ctrDaemon struct {
	tag    string // lab tag: the namespaces are tag-docker and tag-router
	dir    string
	work   string // $PWD of the README's commands
	cli    string // the docker CLI of the docker.io package
	env    []string
	cmd    *exec.Cmd
	exited chan struct{}
}

// ctrStartDaemon starts the daemon; everything it creates, and the daemon
// itself, are removed when the test ends, also on failure.
func ctrStartDaemon(t *testing.T) *ctrDaemon {
	t.Helper()
	dockerd, err := exec.LookPath("dockerd")
	if err != nil {
		t.Fatalf("dockerd not found: %s", ctrInstallHint)
	}
	// The CLI of the same package: a newer one elsewhere on PATH may
	// expect an API this daemon lacks.
	cli := "/usr/bin/docker"
	if _, err := os.Stat(cli); err != nil {
		if cli, err = exec.LookPath("docker"); err != nil {
			t.Fatalf("docker CLI not found: %s", ctrInstallHint)
		}
	}
	for _, tool := range []string{"nsenter", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found (util-linux, iproute2)", tool)
		}
	}
	dir, err := os.MkdirTemp("", "vpnmasq-docker-")
	if err != nil {
		t.Fatal(err)
	}
	d := &ctrDaemon{tag: lab.NewTag(), dir: dir, work: filepath.Join(dir, "work"), cli: cli, exited: make(chan struct{})}
	t.Cleanup(func() {
		// Mounts the daemon did not take down (it was killed) would keep
		// the directory busy; only mounts under it are touched.
		for _, m := range ctrMountsUnder(dir) {
			if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
				t.Errorf("unmounting %s: %v", m, err)
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing %s: %v", dir, err)
		}
	})
	if err := os.MkdirAll(d.work, 0o755); err != nil {
		t.Fatal(err)
	}
	nsName := d.tag + "-docker"
	t.Cleanup(func() {
		if _, err := lab.Cleanup(d.tag); err != nil {
			t.Errorf("removing the namespaces: %v", err)
		}
	})
	if out, err := exec.Command("ip", "netns", "add", nsName).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", nsName, err, out)
	}
	ns := &lab.NS{Name: nsName}
	// /proc/sys/net belongs to the namespace of the thread opening it. A
	// new namespace copies the host's forwarding setting; off, the
	// daemon's bridges cannot route between the networks, so LAN traffic
	// reaches the WAN only through the router container.
	if err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("0\n"), 0o644)
	}); err != nil {
		t.Fatalf("turning forwarding off in %s: %v", nsName, err)
	}

	logFile, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	// nsenter rather than `ip netns exec`: the latter remounts /sys and
	// hides the cgroup mounts dockerd needs. nsenter execs dockerd, so the
	// PID is dockerd's.
	cmd := exec.Command("nsenter", "--net="+ns.Path(), dockerd,
		"--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"), "-H", "unix://"+filepath.Join(dir, "docker.sock"),
		"--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-forward=false")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own session (no terminal signals); if the test binary dies, the
	// daemon shuts down and takes its containers along.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("starting dockerd: %v", err)
	}
	d.cmd = cmd
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(d.exited)
	}()
	t.Cleanup(func() { d.stop(t) })
	d.env = append(slices.DeleteFunc(os.Environ(), func(e string) bool { return strings.HasPrefix(e, "DOCKER_") }),
		"DOCKER_HOST=unix://"+filepath.Join(dir, "docker.sock"),
		"DOCKER_CONFIG="+filepath.Join(dir, "cli"),
		// The classic builder: it needs nothing but the daemon.
		"DOCKER_BUILDKIT=0")
	t.Cleanup(func() { d.removeAll(t) })

	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := d.run(10*time.Second, "", "docker", "version", "--format", "{{.Server.Version}}")
		if err == nil {
			t.Logf("dockerd %s running in namespace %s (data in %s)", strings.TrimSpace(out), nsName, dir)
			break
		}
		select {
		case <-d.exited:
			t.Fatalf("dockerd exited at start (%s); log:\n%s", cmd.ProcessState, d.daemonLog())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dockerd not answering after 60s: %v; log:\n%s", err, d.daemonLog())
		}
		time.Sleep(200 * time.Millisecond)
	}
	return d
}

// run runs a command line of the README's kind ("docker" is the CLI, $PWD
// the work directory) in dir ("" for the work directory) and returns its
// standard output; an error carries the exit status and standard error.
func (d *ctrDaemon) run(timeout time.Duration, dir string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	args := make([]string, len(argv)-1)
	for i, a := range argv[1:] {
		args[i] = strings.ReplaceAll(a, "$PWD", d.work)
	}
	name := argv[0]
	if name == "docker" {
		name = d.cli
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = d.env
	cmd.Dir = dir
	if dir == "" {
		cmd.Dir = d.work
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		return stdout.String(), fmt.Errorf("%s: no exit within %v; stderr: %s", ctrShellLine(argv), timeout, stderr.String())
	}
	if err != nil {
		return stdout.String(), fmt.Errorf("%s: %v; stdout: %s; stderr: %s", ctrShellLine(argv), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// mustRun is run that fails the test on error and logs the command line.
func (d *ctrDaemon) mustRun(t *testing.T, timeout time.Duration, dir string, argv ...string) string {
	t.Helper()
	t.Logf("$ %s", ctrShellLine(argv))
	out, err := d.run(timeout, dir, argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// combined runs a docker command and returns its standard output and
// error together: `docker logs` passes a container's standard error on as
// its own.
func (d *ctrDaemon) combined(timeout time.Duration, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.cli, argv[1:]...)
	cmd.Env = d.env
	cmd.Dir = d.work
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %v: %s", ctrShellLine(argv), err, out)
	}
	return string(out), nil
}

// mustCombined is combined that fails the test on error and logs the
// command line.
func (d *ctrDaemon) mustCombined(t *testing.T, timeout time.Duration, argv ...string) string {
	t.Helper()
	t.Logf("$ %s", ctrShellLine(argv))
	out, err := d.combined(timeout, argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// logs returns a container's log, or the error in its place.
func (d *ctrDaemon) logs(container string) string {
	out, err := d.combined(30*time.Second, "docker", "logs", container)
	if err != nil {
		return err.Error()
	}
	return out
}

// routerLogLines returns the router's JSON log lines with the given message
// (every line for "").
func (d *ctrDaemon) routerLogLines(t *testing.T, message string) []logLine {
	t.Helper()
	// vpnmasq logs to standard error.
	out, err := d.combined(30*time.Second, ctrLogs...)
	if err != nil {
		t.Fatal(err)
	}
	rl := newRouterLog()
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		rl.add(sc.Text())
	}
	if message == "" {
		lines, _, _ := rl.since(0)
		return lines
	}
	return rl.find(message)
}

// waitRouterLog waits for a router log line with the message; it fails the
// test when the container exits or the timeout passes first.
func (d *ctrDaemon) waitRouterLog(t *testing.T, message string, timeout time.Duration) logLine {
	t.Helper()
	return d.waitRouterLogNth(t, message, 1, timeout)
}

// waitRouterLogNth is waitRouterLog for the nth line with the message: the
// log of a restarted container holds those of its earlier runs.
func (d *ctrDaemon) waitRouterLogNth(t *testing.T, message string, n int, timeout time.Duration) logLine {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if lines := d.routerLogLines(t, message); len(lines) >= n {
			return lines[n-1]
		}
		state, _ := d.run(10*time.Second, "", "docker", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", ctrRouterName)
		if !strings.HasPrefix(state, "running") {
			t.Fatalf("router container %s before logging %q; log:\n%s", strings.TrimSpace(state), message, d.logs(ctrRouterName))
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the router's log within %v; log:\n%s", message, timeout, d.logs(ctrRouterName))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// daemonLog returns the end of dockerd's log.
func (d *ctrDaemon) daemonLog() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "dockerd.log"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-40):], "\n")
}

// removeAll removes what the test created in the daemon: containers,
// networks, images. On failure it first logs every container's log.
func (d *ctrDaemon) removeAll(t *testing.T) {
	select {
	case <-d.exited:
		t.Errorf("dockerd ended before the test removed its containers (%s); log (end):\n%s", d.cmd.ProcessState, d.daemonLog())
		return // nothing to ask; the data directory goes anyway
	default:
	}
	containers := []string{ctrRouterName, "lan-host", "wan-host", ctrPeerName}
	if t.Failed() {
		existing, _ := d.run(time.Minute, "", "docker", "ps", "--all", "--format", "{{.Names}}")
		for _, c := range strings.Fields(existing) {
			t.Logf("log of %s:\n%s", c, d.logs(c))
		}
		t.Logf("dockerd log (end):\n%s", d.daemonLog())
	}
	steps := [][]string{
		append([]string{"docker", "rm", "--force", "--volumes"}, containers...),
		{"docker", "network", "rm", "vpnmasq-lan", "vpnmasq-wan"},
		{"docker", "image", "rm", "--force", "vpnmasq", ctrHostImage, ctrGoImage},
		// The build stage's image, left untagged by the builder.
		{"docker", "image", "prune", "--force"},
	}
	for _, argv := range steps {
		if out, err := d.run(2*time.Minute, "", argv...); err != nil && !strings.Contains(err.Error(), "No such") {
			t.Logf("cleanup: %v (%s)", err, out)
		}
	}
	for _, argv := range [][]string{
		{"docker", "ps", "--all", "--quiet"},
		{"docker", "network", "ls", "--quiet", "--filter", "name=vpnmasq-"},
		{"docker", "image", "ls", "--all", "--quiet"},
	} {
		if out, err := d.run(time.Minute, "", argv...); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("left in the test's daemon after removal: %s: %q (%v)", ctrShellLine(argv), out, err)
		}
	}
}

// stop ends the daemon: SIGTERM to the PID of its pid file, which must be
// the process this test started, then SIGKILL after 30 s.
func (d *ctrDaemon) stop(t *testing.T) {
	select {
	case <-d.exited:
		return
	default:
	}
	pid := d.cmd.Process.Pid
	if b, err := os.ReadFile(filepath.Join(d.dir, "docker.pid")); err == nil && strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
		t.Errorf("dockerd's pid file says %s, the test started %d; stopping %d", strings.TrimSpace(string(b)), pid, pid)
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
		t.Errorf("dockerd still running 30s after SIGTERM; killed")
	}
}

// ctrMountsUnder lists the mount points under dir, deepest first.
func ctrMountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// ctrImportGoImage makes the build stage's base image: this machine's Go
// toolchain at /usr/local/go, the modules of go.mod in /go/pkg/mod, and
// busybox for the Dockerfile's RUN lines.
func ctrImportGoImage(t *testing.T, d *ctrDaemon, repo string) {
	t.Helper()
	goroot, err := exec.Command(goTool(), "env", "GOROOT").Output()
	if err != nil {
		t.Fatalf("go env GOROOT: %v", err)
	}
	hostCache, err := exec.Command(goTool(), "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatalf("go env GOMODCACHE: %v", err)
	}
	hostProxy, _ := exec.Command(goTool(), "env", "GOPROXY").Output()
	// Only the modules go.mod needs, taken from this machine's module
	// cache (which building vpnmasq filled) and from the module proxy for
	// any it lacks.
	modcache := filepath.Join(d.dir, "gomodcache")
	proxy := "file://" + filepath.Join(strings.TrimSpace(string(hostCache)), "cache", "download")
	if p := strings.TrimSpace(string(hostProxy)); p != "" && p != "off" {
		proxy += "," + p
	}
	dl := exec.Command(goTool(), "mod", "download")
	dl.Dir = repo
	dl.Env = append(os.Environ(), "GOMODCACHE="+modcache, "GOPROXY="+proxy, "GOSUMDB=off", "GOFLAGS=")
	if out, err := dl.CombinedOutput(); err != nil {
		t.Fatalf("go mod download into %s: %v: %s", modcache, err, out)
	}
	skip := map[string]bool{"test": true, "api": true, "doc": true, "misc": true} // not needed to build
	ctrImport(t, d, ctrGoImage, []string{
		"ENV PATH=/usr/local/go/bin:/go/bin:/usr/local/bin:/bin",
		"ENV GOPATH=/go",
		"ENV GOTOOLCHAIN=local",
	}, func(tw *tar.Writer) error {
		if err := ctrTarTree(tw, strings.TrimSpace(string(goroot)), "usr/local/go", func(rel string) bool {
			return skip[rel]
		}); err != nil {
			return err
		}
		if err := ctrTarTree(tw, modcache, "go/pkg/mod", nil); err != nil {
			return err
		}
		return ctrTarBusybox(tw)
	})
}

// ctrImportHostImage makes the image of the README's LAN and WAN hosts:
// busybox with every applet, plus labpeer for the test's own traffic.
func ctrImportHostImage(t *testing.T, d *ctrDaemon, repo string) {
	t.Helper()
	labpeer := filepath.Join(d.dir, "labpeer")
	build := exec.Command(goTool(), "build", "-o", labpeer, "./integration/cmd/labpeer")
	build.Dir = repo
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building labpeer: %v: %s", err, out)
	}
	ctrImport(t, d, ctrHostImage, []string{"ENV PATH=/usr/local/bin:/bin"}, func(tw *tar.Writer) error {
		if err := ctrTarBusybox(tw); err != nil {
			return err
		}
		if err := ctrTarDirs(tw, "usr/local/bin"); err != nil {
			return err
		}
		return ctrTarFile(tw, labpeer, "usr/local/bin/labpeer")
	})
}

// ctrImport streams the tar that fill writes into `docker import`.
func ctrImport(t *testing.T, d *ctrDaemon, image string, changes []string, fill func(*tar.Writer) error) {
	t.Helper()
	args := []string{"import"}
	for _, c := range changes {
		args = append(args, "--change", c)
	}
	args = append(args, "-", image)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.cli, args...)
	cmd.Env = d.env
	pr, pw := io.Pipe()
	cmd.Stdin = pr
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("docker import: %v", err)
	}
	go func() {
		tw := tar.NewWriter(pw)
		err := fill(tw)
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	err := cmd.Wait()
	pr.CloseWithError(errors.New("docker import ended"))
	if err != nil {
		t.Fatalf("docker import %s: %v: %s", image, err, out.String())
	}
	t.Logf("imported %s", image)
}

// ctrTarBusybox adds /bin/busybox, a link for each of its applets, and the
// directories a root file system needs. The binary must be static: the
// images hold no C library.
func ctrTarBusybox(tw *tar.Writer) error {
	const busybox = "/bin/busybox"
	f, err := elf.Open(busybox)
	if err != nil {
		return fmt.Errorf("%s: %w (%s)", busybox, err, ctrInstallHint)
	}
	static := !slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP })
	f.Close()
	if !static {
		return fmt.Errorf("%s is dynamically linked (%s)", busybox, ctrInstallHint)
	}
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	if err := ctrTarDirs(tw, "bin", "etc", "root", "tmp"); err != nil {
		return err
	}
	if err := ctrTarFile(tw, busybox, "bin/busybox"); err != nil {
		return err
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777}); err != nil {
			return err
		}
	}
	return nil
}

// ctrTarDirs adds directories (and their parents); tmp is world-writable.
func ctrTarDirs(tw *tar.Writer, dirs ...string) error {
	for _, dir := range dirs {
		parts := strings.Split(dir, "/")
		for i := range parts {
			name := strings.Join(parts[:i+1], "/")
			mode := int64(0o755)
			if name == "tmp" {
				mode = 0o1777
			}
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}); err != nil {
				return err
			}
		}
	}
	return nil
}

// ctrTarFile adds one regular file.
func ctrTarFile(tw *tar.Writer, src, name string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(st.Mode().Perm()), Size: st.Size()}); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

// ctrTarTree adds the tree at src under dst, leaving out the top-level
// entries skip names (nil: none). Owners become root.
func ctrTarTree(tw *tar.Writer, src, dst string, skip func(rel string) bool) error {
	if err := ctrTarDirs(tw, dst); err != nil {
		return err
	}
	return filepath.WalkDir(src, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil || rel == "." {
			return err
		}
		if skip != nil && skip(rel) {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		var link string
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		h.Name = dst + "/" + filepath.ToSlash(rel)
		if e.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
}

package integration

// Helpers that run real strongSwan (charon with kernel-libipsec, driven by
// swanctl over vici) inside lab namespaces, and read tshark captures.
//
// Each charon runs in its namespace with a private /run (charon's pid file
// is fixed at /run/charon.pid), its own strongswan.conf and a vici socket in
// its own directory, so several instances coexist on one machine. The
// kernel has no ESP data path here: kernel-libipsec does ESP in userspace
// over a TUN named ipsec0 and always encapsulates it in UDP 4500.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// ikeVersions are the IKE versions every strongSwan scenario runs with.
var ikeVersions = []struct {
	name    string
	version int
}{
	{"IKEv2", 2},
	{"IKEv1 Main Mode", 1},
}

// Paths and packages of the IPsec tools, for the message when one is missing.
const (
	charonBin  = "/usr/lib/ipsec/charon"
	swanctlBin = "swanctl"
	tsharkBin  = "tshark"
	dumpcapBin = "dumpcap"
)

var ipsecTools = []struct{ path, pkg string }{
	{charonBin, "strongswan-charon"},
	{swanctlBin, "strongswan-swanctl"},
	{tsharkBin, "tshark"},
	{dumpcapBin, "wireshark-common (comes with tshark)"},
	{"unshare", "util-linux"},
	{"ping", "iputils-ping"},
}

// Plugins of strongswanConf's load list that come in packages of their
// own. charon merely logs a plugin it cannot load and starts anyway, to fail
// later at negotiating (gcm, openssl, curve25519) or installing (ESP in
// userspace needs kernel-libipsec) an SA, so they are checked up front.
var swanPlugins = []struct{ name, pkg string }{
	{"kernel-libipsec", "libcharon-extra-plugins"},
	{"gcm", "libstrongswan-standard-plugins"},
	{"openssl", "libstrongswan-standard-plugins"},
	{"curve25519", "libstrongswan-extra-plugins"},
	{"vici", "strongswan-swanctl"},
}

// requireIPsecTools fails the test when strongSwan or tshark is missing.
func requireIPsecTools(t *testing.T) {
	t.Helper()
	var missing []string
	for _, tool := range ipsecTools {
		if _, err := exec.LookPath(tool.path); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", tool.path, tool.pkg))
		}
	}
	for _, p := range swanPlugins {
		path := "/usr/lib/ipsec/plugins/libstrongswan-" + p.name + ".so"
		if _, err := os.Stat(path); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", path, p.pkg))
		}
	}
	if len(missing) > 0 {
		t.Fatalf("the IPsec tests need real strongSwan and tshark; missing: %s", strings.Join(missing, ", "))
	}
}

// ipsecNATMode chooses what masquerades between LAN and WAN in the IPsec
// tests: "vpnmasq" (default) runs the router under test; "kernel" loads the
// host kernel's own nftables NAT in the router namespace instead, which
// checks the harness itself (strongSwan, captures, assertions) against a
// known-good NAT. Set it with VPNMASQ_IPSEC_NAT. The kernel gives the
// second LAN host's IKE a source port other than 500, so the tests that
// require port 500 to be kept fail there, as they should.
func ipsecNATMode(t *testing.T) string {
	t.Helper()
	switch mode := os.Getenv("VPNMASQ_IPSEC_NAT"); mode {
	case "", "vpnmasq":
		return "vpnmasq"
	case "kernel":
		return "kernel"
	default:
		t.Fatalf("VPNMASQ_IPSEC_NAT=%q: want vpnmasq or kernel", mode)
		return ""
	}
}

// ipsecRouter is whatever masquerades in the router namespace during an
// IPsec test: vpnmasq (r set) or the kernel's nftables NAT (r nil).
type ipsecRouter struct {
	mode string
	r    *router
}

// startIPsecRouter starts vpnmasq with vpnmasqConfig, or, in kernel mode,
// enables forwarding and loads kernelRules into the router namespace (which
// is deleted with the lab, rules and all).
func startIPsecRouter(t *testing.T, l *lab.Lab, vpnmasqConfig, kernelRules string) *ipsecRouter {
	t.Helper()
	mode := ipsecNATMode(t)
	if mode == "vpnmasq" {
		return &ipsecRouter{mode: mode, r: startRouter(t, l, vpnmasqConfig)}
	}
	loadKernelNAT(t, l, kernelRules)
	t.Logf("IPsec NAT: the kernel's nftables NAT (VPNMASQ_IPSEC_NAT=kernel), not vpnmasq")
	return &ipsecRouter{mode: mode}
}

// logIPsecDecisions logs the router's IKE and ESP association lines, which
// tell which LAN host each IKE SPI and ESP SPI was given to.
func (ir *ipsecRouter) logIPsecDecisions(t *testing.T) {
	t.Helper()
	if ir.r == nil {
		return
	}
	var lines []string
	for _, msg := range []string{"ike session", "esp bind", "drops"} {
		for _, l := range ir.r.log.find(msg) {
			lines = append(lines, l.Raw)
		}
	}
	t.Logf("router IPsec log lines (%d):\n%s", len(lines), strings.Join(lines, "\n"))
}

// strongswanConf is the per-instance strongswan.conf: only the plugins this
// machine can use (kernel-libipsec for ESP in userspace), routes and
// virtual IPs installed, a log file and the vici socket in the instance
// directory.
const strongswanConf = `charon {
	load = random nonce openssl pem pkcs1 x509 pubkey constraints revocation kdf curve25519 gmp aes sha1 sha2 hmac gcm kernel-libipsec kernel-netlink socket-default vici updown attr
	install_routes = yes
	install_virtual_ip = yes
	filelog {
		instance {
			path = {{DIR}}/charon.log
			time_format = %H:%M:%S
			ike_name = yes
			flush_line = yes
			default = 1
			ike = 1
			net = 1
			knl = 0
			enc = 0
		}
	}
	syslog {
		identifier = charon-{{NAME}}
		daemon {
			default = -1
		}
	}
	plugins {
		vici {
			socket = unix://{{DIR}}/charon.vici
		}
	}
}
`

// charon is one strongSwan daemon running in a lab namespace.
type charon struct {
	name   string // instance name, e.g. "lan1"
	ns     *lab.NS
	dir    string
	cmd    *exec.Cmd
	out    *syncBuffer // charon's own stdout/stderr (startup errors)
	exited chan struct{}
}

// startCharon runs charon in ns with swanctlConf loaded, and stops it by
// PID when the test ends. name names the instance in logs and messages.
func startCharon(t *testing.T, ns *lab.NS, name, swanctlConf string) *charon {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "charon-"+name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := strings.NewReplacer("{{DIR}}", dir, "{{NAME}}", name).Replace(strongswanConf)
	for file, text := range map[string]string{"strongswan.conf": conf, "swanctl.conf": swanctlConf} {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// `ip netns exec`, unshare (without --fork) and the shell all exec in
	// place, so the PID is charon's. The private tmpfs on /run keeps its
	// pid file apart from other instances and from the host's.
	cmd := exec.Command("ip", "netns", "exec", ns.Name,
		"unshare", "--mount", "--propagation", "private",
		"sh", "-c", "mount -t tmpfs run /run && exec "+charonBin)
	cmd.Env = append(os.Environ(), "STRONGSWAN_CONF="+filepath.Join(dir, "strongswan.conf"))
	c := &charon{name: name, ns: ns, dir: dir, cmd: cmd, out: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = c.out, c.out
	// A test binary that dies takes its charons with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting charon %s in %s: %v", name, ns.Name, err)
	}
	go func() {
		_ = cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		c.stop(t)
		if t.Failed() {
			t.Logf("charon %s log (last 120 lines):\n%s", name, c.logTail(120))
		}
	})

	// charon creates the vici socket once its plugins are loaded.
	socket := filepath.Join(dir, "charon.vici")
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(socket); err == nil {
			break
		}
		select {
		case <-c.exited:
			t.Fatalf("charon %s exited at start (%s): %s\nlog:\n%s", name, cmd.ProcessState, c.out, c.logTail(50))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("charon %s: no vici socket %s after 15s\nlog:\n%s", name, socket, c.logTail(50))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := c.swanctl(15*time.Second, "--load-all", "--file", filepath.Join(dir, "swanctl.conf")); err != nil {
		t.Fatalf("charon %s: loading swanctl.conf: %v\n%s", name, err, out)
	}
	return c
}

// stop ends charon with SIGTERM (it deletes its SAs on the way out), and
// with SIGKILL if it is still running after 5 s.
func (c *charon) stop(t *testing.T) {
	select {
	case <-c.exited:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
		t.Logf("charon %s still running 5s after SIGTERM; killed", c.name)
	}
}

// swanctl runs swanctl against this instance's vici socket. swanctl wants
// its command first, options after.
func (c *charon) swanctl(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append(slices.Clone(args), "--uri", "unix://"+filepath.Join(c.dir, "charon.vici"))
	cmd := exec.CommandContext(ctx, swanctlBin, full...)
	cmd.Env = append(os.Environ(), "STRONGSWAN_CONF="+filepath.Join(c.dir, "strongswan.conf"))
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("swanctl %s timed out after %v", args[0], timeout)
	}
	return string(out), err
}

// initiate brings up a CHILD_SA (and its IKE_SA) and waits for the outcome.
func (c *charon) initiate(child string, timeout time.Duration) error {
	secs := strconv.Itoa(int(timeout.Seconds()))
	out, err := c.swanctl(timeout+5*time.Second, "--initiate", "--child", child, "--timeout", secs)
	if err != nil {
		return fmt.Errorf("charon %s: swanctl --initiate --child %s: %v\n%s", c.name, child, err, out)
	}
	return nil
}

// listSAs returns the IKE_SAs (with their CHILD_SAs) charon has now, and
// swanctl's text they were parsed from.
func (c *charon) listSAs() ([]ikeSA, string, error) {
	out, err := c.swanctl(10*time.Second, "--list-sas")
	if err != nil {
		return nil, out, fmt.Errorf("charon %s: swanctl --list-sas: %v\n%s", c.name, err, out)
	}
	sas, err := parseListSAs(out)
	return sas, out, err
}

// established returns charon's single ESTABLISHED IKE_SA and an INSTALLED
// CHILD_SA of it, or an error quoting what swanctl listed instead.
func (c *charon) established() (ikeSA, childSA, error) {
	sas, out, err := c.listSAs()
	if err != nil {
		return ikeSA{}, childSA{}, err
	}
	sa, ch, err := establishedSA(sas)
	if err != nil {
		return ikeSA{}, childSA{}, fmt.Errorf("charon %s: %v; swanctl --list-sas:\n%s", c.name, err, out)
	}
	return sa, ch, nil
}

// logText returns charon's log file.
func (c *charon) logText() string {
	b, err := os.ReadFile(filepath.Join(c.dir, "charon.log"))
	if err != nil {
		return fmt.Sprintf("(no log: %v) %s", err, c.out)
	}
	return string(b)
}

func (c *charon) logTail(n int) string {
	lines := strings.Split(strings.TrimRight(c.logText(), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// ikeSA is one IKE_SA as `swanctl --list-sas` shows it.
type ikeSA struct {
	Name       string
	UniqueID   int
	State      string // ESTABLISHED, CONNECTING, REKEYED, DELETING, ...
	Version    int    // 1 or 2
	ISPI       string // initiator SPI (cookie), 16 hex digits
	RSPI       string
	LocalHost  netip.AddrPort
	RemoteHost netip.AddrPort
	VIP        netip.Addr // the virtual IP this end holds, if any
	Children   []childSA
}

// childSA is one CHILD_SA (IPsec SA pair) of an IKE_SA.
type childSA struct {
	Name     string
	UniqueID int
	State    string // INSTALLED, REKEYED, ...
	Mode     string // TUNNEL-in-UDP: ESP encapsulated in UDP
	SPIIn    string
	SPIOut   string
	LocalTS  []string
	RemoteTS []string
}

var (
	listIKERe   = regexp.MustCompile(`^(\S+): #(\d+), (\w+), IKEv(\d), ([0-9a-f]{16})_i\*? ([0-9a-f]{16})_r\*?`)
	listHostRe  = regexp.MustCompile(`^  (local|remote) +'[^']*' @ (\S+\[\d+\])(?: \[([0-9.]+)\])?`)
	listChildRe = regexp.MustCompile(`^  (\S+): #(\d+), reqid \d+, (\w+), (\S+), `)
	listSPIRe   = regexp.MustCompile(`^    (in|out) +([0-9a-f]{8})`)
	listTSRe    = regexp.MustCompile(`^    (local|remote) +([0-9./]+.*)$`)
)

// parseListSAs parses swanctl's default --list-sas output.
func parseListSAs(out string) ([]ikeSA, error) {
	var sas []ikeSA
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if m := listIKERe.FindStringSubmatch(line); m != nil {
			id, _ := strconv.Atoi(m[2])
			v, _ := strconv.Atoi(m[4])
			sas = append(sas, ikeSA{Name: m[1], UniqueID: id, State: m[3], Version: v, ISPI: m[5], RSPI: m[6]})
			continue
		}
		if len(sas) == 0 {
			continue
		}
		sa := &sas[len(sas)-1]
		if m := listHostRe.FindStringSubmatch(line); m != nil {
			ap, err := netip.ParseAddrPort(strings.Replace(strings.TrimSuffix(m[2], "]"), "[", ":", 1))
			if err != nil {
				return nil, fmt.Errorf("swanctl --list-sas: bad address in %q", line)
			}
			if m[1] == "local" {
				sa.LocalHost = ap
				if m[3] != "" {
					sa.VIP, _ = netip.ParseAddr(m[3])
				}
			} else {
				sa.RemoteHost = ap
			}
			continue
		}
		if m := listChildRe.FindStringSubmatch(line); m != nil {
			id, _ := strconv.Atoi(m[2])
			sa.Children = append(sa.Children, childSA{Name: m[1], UniqueID: id, State: m[3], Mode: m[4]})
			continue
		}
		if len(sa.Children) == 0 {
			continue
		}
		ch := &sa.Children[len(sa.Children)-1]
		if m := listSPIRe.FindStringSubmatch(line); m != nil {
			if m[1] == "in" {
				ch.SPIIn = m[2]
			} else {
				ch.SPIOut = m[2]
			}
			continue
		}
		if m := listTSRe.FindStringSubmatch(line); m != nil {
			ts := strings.Fields(m[2])
			if m[1] == "local" {
				ch.LocalTS = ts
			} else {
				ch.RemoteTS = ts
			}
		}
	}
	return sas, sc.Err()
}

// establishedSA returns the single ESTABLISHED IKE_SA and an INSTALLED
// CHILD_SA of it, or an error describing what there is instead.
func establishedSA(sas []ikeSA) (ikeSA, childSA, error) {
	var found []ikeSA
	for _, sa := range sas {
		if sa.State == "ESTABLISHED" {
			found = append(found, sa)
		}
	}
	if len(found) != 1 {
		return ikeSA{}, childSA{}, fmt.Errorf("%d ESTABLISHED IKE_SAs, want 1", len(found))
	}
	for _, ch := range found[0].Children {
		if ch.State == "INSTALLED" {
			return found[0], ch, nil
		}
	}
	return ikeSA{}, childSA{}, fmt.Errorf("IKE_SA %s #%d has no INSTALLED CHILD_SA", found[0].Name, found[0].UniqueID)
}

// pskSecret is the pre-shared key of every lab connection.
const pskSecret = "vpnmasq-lab-psk-0123456789abcdef"

// swanTimers sets rekeying of an initiator's IKE_SA and CHILD_SA; zero
// values keep strongSwan's defaults (hours), so nothing rekeys during a
// test.
type swanTimers struct {
	IKERekey, IKEOver, IKERand       time.Duration
	ChildRekey, ChildLife, ChildRand time.Duration
}

func swanDuration(d time.Duration) string { return strconv.Itoa(int(d.Seconds())) + "s" }

// ikeConnection is one swanctl.conf connection with PSK authentication,
// the lab's proposals (IKE aes256-sha256-modp2048, ESP aes256gcm16) and
// one CHILD_SA of the same name. Empty RemoteAddrs makes a responder that
// accepts any peer; Pool names a pool of virtual IPs to hand out
// (responder) and WantVIP asks for one (initiator).
type ikeConnection struct {
	Name        string
	Version     int
	LocalAddrs  string // "" for %any
	RemoteAddrs string // "" for a responder accepting %any
	LocalID     string
	RemoteID    string // "" accepts any
	Pool        string
	WantVIP     bool
	LocalTS     string // "" for dynamic (the virtual IP or own address)
	RemoteTS    string
	Timers      swanTimers
}

func (ic ikeConnection) String() string {
	var b strings.Builder
	p := func(indent int, format string, args ...any) {
		b.WriteString(strings.Repeat("\t", indent))
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}
	p(1, "%s {", ic.Name)
	p(2, "version = %d", ic.Version)
	if ic.Version == 1 {
		p(2, "aggressive = no")
	}
	if ic.LocalAddrs != "" {
		p(2, "local_addrs = %s", ic.LocalAddrs)
	}
	if ic.RemoteAddrs != "" {
		p(2, "remote_addrs = %s", ic.RemoteAddrs)
	}
	if ic.Pool != "" {
		p(2, "pools = %s", ic.Pool)
	}
	if ic.WantVIP {
		p(2, "vips = 0.0.0.0")
	}
	p(2, "proposals = aes256-sha256-modp2048")
	// IKEv2 rekeys its IKE_SA in place (CREATE_CHILD_SA); IKEv1 has no
	// such exchange, and strongSwan replaces the ISAKMP SA on rekey_time
	// with a fresh Main Mode (reauthentication) instead.
	p(2, "reauth_time = 0")
	if tm := ic.Timers; tm.IKERekey > 0 {
		p(2, "rekey_time = %s", swanDuration(tm.IKERekey))
		p(2, "over_time = %s", swanDuration(tm.IKEOver))
		p(2, "rand_time = %s", swanDuration(tm.IKERand))
	}
	p(2, "local {")
	p(3, "auth = psk")
	p(3, "id = %s", ic.LocalID)
	p(2, "}")
	p(2, "remote {")
	p(3, "auth = psk")
	if ic.RemoteID != "" {
		p(3, "id = %s", ic.RemoteID)
	}
	p(2, "}")
	p(2, "children {")
	p(3, "%s {", ic.Name)
	if ic.LocalTS != "" {
		p(4, "local_ts = %s", ic.LocalTS)
	}
	if ic.RemoteTS != "" {
		p(4, "remote_ts = %s", ic.RemoteTS)
	}
	p(4, "esp_proposals = aes256gcm16")
	if tm := ic.Timers; tm.ChildRekey > 0 {
		p(4, "rekey_time = %s", swanDuration(tm.ChildRekey))
		p(4, "life_time = %s", swanDuration(tm.ChildLife))
		p(4, "rand_time = %s", swanDuration(tm.ChildRand))
	}
	p(3, "}")
	p(2, "}")
	p(1, "}")
	return b.String()
}

// swanctlConf assembles a swanctl.conf from connections, an optional
// virtual IP pool, and the shared PSK. The secret has no id: IKEv1 Main
// Mode must pick the PSK before it learns the peer's identity.
func swanctlConf(pool string, poolAddrs netip.Prefix, conns ...ikeConnection) string {
	var b strings.Builder
	b.WriteString("connections {\n")
	for _, c := range conns {
		b.WriteString(c.String())
	}
	b.WriteString("}\n")
	if pool != "" {
		fmt.Fprintf(&b, "pools {\n\t%s {\n\t\taddrs = %s\n\t}\n}\n", pool, poolAddrs)
	}
	fmt.Fprintf(&b, "secrets {\n\tike-lab {\n\t\tsecret = %q\n\t}\n}\n", pskSecret)
	return b.String()
}

// pcapCapture is dumpcap (tshark's capture engine) writing a pcapng file
// inside a namespace; tshark reads it afterwards.
type pcapCapture struct {
	test    string // the test's name
	dropped int    // frames the capture itself lost, known after stop
	path    string
	cmd     *exec.Cmd
	out     *syncBuffer
	exited  chan struct{}
}

// startPcapCapture captures everything on ifname in ns into a pcap file in the
// test's temporary directory, until stop (at the latest when the test ends).
func startPcapCapture(t *testing.T, ns *lab.NS, ifname, name string) *pcapCapture {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".pcapng")
	// `ip netns exec` execs dumpcap in place, so the PID is dumpcap's.
	// dumpcap is tshark's capture engine; run alone it starts in a moment,
	// where tshark first loads every dissector. A large capture buffer: a
	// bulk download through a tunnel on two busy cores would otherwise
	// outrun it, and a frame missing from the capture looks like a frame
	// the router lost.
	cmd := exec.Command("ip", "netns", "exec", ns.Name, dumpcapBin, "-i", ifname, "-p", "-q", "-B", "64", "-w", path)
	c := &pcapCapture{test: t.Name(), path: path, cmd: cmd, out: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = c.out, c.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting dumpcap in %s: %v", ns.Name, err)
	}
	go func() {
		_ = cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() { c.stop() })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(c.out.String(), "Capturing on") {
		select {
		case <-c.exited:
			t.Fatalf("dumpcap on %s in %s exited at start (%s): %s", ifname, ns.Name, cmd.ProcessState, c.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dumpcap on %s in %s not capturing after 10s: %s", ifname, ns.Name, c.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// dumpcap prints "Capturing on" before it opens the interface, and
	// creates its file only once the interface is open: a short exchange
	// started in between would be missing from the capture.
	for {
		if _, err := os.Stat(path); err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("dumpcap on %s in %s has not created %s after 10s: %s", ifname, ns.Name, path, c.out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// capturedDrops matches dumpcap's summary of frames the capture lost:
// "Packets received/dropped on interface 'rtr-wan': 5011/0 (pcap:0/...".
var capturedDrops = regexp.MustCompile(`received/dropped on interface '[^']*': \d+/(\d+)`)

// stop ends the capture (after a moment for packets in flight) and returns
// the pcap file's path. With VPNMASQ_IPSEC_PCAP_DIR set, the file is also
// copied there (named after the test), for a look with Wireshark.
func (c *pcapCapture) stop() string {
	select {
	case <-c.exited:
		return c.path
	default:
	}
	defer func() {
		for _, m := range capturedDrops.FindAllStringSubmatch(c.out.String(), -1) {
			if n, _ := strconv.Atoi(m[1]); n > 0 {
				c.dropped += n
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	if dir := os.Getenv("VPNMASQ_IPSEC_PCAP_DIR"); dir != "" {
		name := strings.NewReplacer("/", "_", " ", "_").Replace(c.test) + "-" + filepath.Base(c.path)
		if b, err := os.ReadFile(c.path); err == nil {
			_ = os.WriteFile(filepath.Join(dir, name), b, 0o644)
		}
	}
	return c.path
}

// ikePacket is one captured frame, as far as IPsec is concerned.
type ikePacket struct {
	Frame         int
	FrameLen      int // bytes on the wire, more than the MTU for a GSO super-packet
	Src, Dst      netip.Addr
	SPort, DPort  int
	UDPLen        int      // the UDP header's length field
	Proto         int      // IP protocol: 17 UDP, 50 ESP
	ISPI, RSPI    []string // one per IKE message in the frame
	ExchangeTypes []int
	MessageIDs    []string
	NonESPMarker  bool
	NATKeepalive  bool
	ESPSPI        string
	ESPSeq        uint64 // of the first datagram, in a GSO super-packet
}

// IKE exchange types (RFC 2408, RFC 7296).
const (
	exchangeIdentityProtection = 2 // IKEv1 Main Mode
	exchangeIKESAInit          = 34
)

const zeroSPI = "0000000000000000"

// isFirstIKEMessage reports whether the frame carries the first message of
// an IKE_SA setup: IKE_SA_INIT request or IKEv1 Main Mode message 1, both
// recognisable by a zero responder SPI.
func (p ikePacket) isFirstIKEMessage() bool {
	for i, et := range p.ExchangeTypes {
		if (et == exchangeIKESAInit || et == exchangeIdentityProtection) && i < len(p.RSPI) && p.RSPI[i] == zeroSPI {
			return true
		}
	}
	return false
}

func (p ikePacket) isIKE() bool { return len(p.ISPI) > 0 }

func (p ikePacket) String() string {
	s := fmt.Sprintf("#%d %s:%d > %s:%d", p.Frame, p.Src, p.SPort, p.Dst, p.DPort)
	if p.Proto == 50 {
		s = fmt.Sprintf("#%d %s > %s esp", p.Frame, p.Src, p.Dst)
	}
	if p.isIKE() {
		s += fmt.Sprintf(" ike ispi=%s rspi=%s exch=%v msgid=%s", strings.Join(p.ISPI, ","), strings.Join(p.RSPI, ","), p.ExchangeTypes, strings.Join(p.MessageIDs, ","))
	}
	if p.NonESPMarker {
		s += " non-esp-marker"
	}
	if p.NATKeepalive {
		s += " nat-keepalive"
	}
	if p.ESPSPI != "" {
		s += " esp spi=" + p.ESPSPI
	}
	return s
}

var tsharkFields = []string{
	"frame.number", "frame.len", "ip.src", "ip.dst", "ip.proto", "udp.srcport", "udp.dstport", "udp.length",
	"isakmp.ispi", "isakmp.rspi", "isakmp.exchangetype", "isakmp.messageid",
	"udpencap.non_esp_marker", "udpencap.nat_keepalive", "esp.spi", "esp.sequence",
}

// readPcap decodes every IPv4 frame of a capture with tshark.
func readPcap(path string) ([]ikePacket, error) {
	args := []string{"-r", path, "-n", "-Y", "ip", "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=,"}
	for _, f := range tsharkFields {
		args = append(args, "-e", f)
	}
	out, err := exec.Command(tsharkBin, args...).Output()
	if err != nil {
		return nil, fmt.Errorf("tshark -r %s: %v", path, tsharkErr(err))
	}
	var pkts []ikePacket
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != len(tsharkFields) {
			return nil, fmt.Errorf("tshark -r %s: %d fields in %q, want %d", path, len(f), line, len(tsharkFields))
		}
		var p ikePacket
		p.Frame, _ = strconv.Atoi(f[0])
		p.FrameLen, _ = strconv.Atoi(f[1])
		// An ICMP error quotes an inner IP header: the first value is the
		// frame's own.
		p.Src, _ = netip.ParseAddr(tsharkFirst(f[2]))
		p.Dst, _ = netip.ParseAddr(tsharkFirst(f[3]))
		p.Proto, _ = strconv.Atoi(tsharkFirst(f[4]))
		p.SPort, _ = strconv.Atoi(tsharkFirst(f[5]))
		p.DPort, _ = strconv.Atoi(tsharkFirst(f[6]))
		p.UDPLen, _ = strconv.Atoi(tsharkFirst(f[7]))
		p.ISPI = tsharkList(f[8])
		p.RSPI = tsharkList(f[9])
		for _, et := range tsharkList(f[10]) {
			n, _ := strconv.Atoi(et)
			p.ExchangeTypes = append(p.ExchangeTypes, n)
		}
		p.MessageIDs = tsharkList(f[11])
		p.NonESPMarker = f[12] != ""
		p.NATKeepalive = f[13] != ""
		p.ESPSPI = strings.TrimPrefix(tsharkFirst(f[14]), "0x")
		p.ESPSeq, _ = strconv.ParseUint(tsharkFirst(f[15]), 10, 32)
		pkts = append(pkts, p)
	}
	return pkts, nil
}

// brokenPackets lists the frames tshark finds malformed or flags with an
// expert warning or error: what a broken rewrite produces. Expert messages
// starting with one of the ignored prefixes do not count.
func brokenPackets(path string, ignored ...string) ([]string, error) {
	out, err := exec.Command(tsharkBin, "-r", path, "-n",
		"-Y", "_ws.malformed || _ws.expert.severity >= 0x00600000",
		"-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=\x1f",
		"-e", "frame.number", "-e", "_ws.col.Protocol", "-e", "_ws.col.Info",
		"-e", "_ws.malformed", "-e", "_ws.expert.severity", "-e", "_ws.expert.message").Output()
	if err != nil {
		return nil, fmt.Errorf("tshark -r %s: %v", path, tsharkErr(err))
	}
	var broken []string
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		f := strings.Split(l, "\t")
		if len(f) != 6 {
			continue
		}
		severities, messages := strings.Split(f[4], "\x1f"), strings.Split(f[5], "\x1f")
		var bad []string
		if f[3] != "" {
			bad = append(bad, "malformed")
		}
		for i, msg := range messages {
			sev, _ := strconv.ParseUint(sevAt(severities, i), 0, 32) // decimal or 0x
			if sev < 0x00600000 || slices.ContainsFunc(ignored, func(p string) bool { return strings.HasPrefix(msg, p) }) {
				continue
			}
			bad = append(bad, msg)
		}
		if len(bad) > 0 {
			broken = append(broken, fmt.Sprintf("frame %s %s %s: %s", f[0], f[1], f[2], strings.Join(bad, "; ")))
		}
	}
	return broken, nil
}

func sevAt(list []string, i int) string {
	if i < len(list) {
		return list[i]
	}
	return ""
}

func tsharkErr(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("%v: %s", err, ee.Stderr)
	}
	return err
}

func tsharkFirst(list string) string {
	v, _, _ := strings.Cut(list, ",")
	return v
}

func tsharkList(list string) []string {
	if list == "" {
		return nil
	}
	return strings.Split(list, ",")
}

// udpExchange sends numbered datagrams from local (a virtual IP, so they
// enter the tunnel) to an echo server every interval until stop is closed,
// and counts the answers.
type udpExchange struct {
	mu         sync.Mutex
	sent, recv int
	lastAnswer time.Time
	stoppedAt  time.Time // when the sender stopped
	longestGap time.Duration
	errs       []string
}

func (e *udpExchange) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return fmt.Sprintf("%d/%d datagrams answered, longest time without an answer %v", e.recv, e.sent, e.longestGap.Round(time.Millisecond))
}

// runUDPExchange runs the exchange in the background; wait returns when
// it has ended after stop was closed.
func runUDPExchange(ns *lab.NS, local netip.Addr, remote netip.AddrPort, interval time.Duration, stop <-chan struct{}) (*udpExchange, func(), error) {
	var conn net.Conn
	err := ns.Do(func() (err error) {
		d := net.Dialer{LocalAddr: &net.UDPAddr{IP: local.AsSlice()}}
		conn, err = d.Dial("udp4", remote.String())
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("UDP socket %s -> %s in %s: %w", local, remote, ns.Name, err)
	}
	e := &udpExchange{lastAnswer: time.Now()}
	done := make(chan struct{})
	go func() { // receiver
		buf := make([]byte, 1500)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					e.mu.Lock()
					// ECONNREFUSED etc. from ICMP: note and keep reading.
					e.errs = append(e.errs, err.Error())
					e.mu.Unlock()
					if len(e.errs) < 1000 {
						continue
					}
				}
				close(done)
				return
			}
			if n > 0 && strings.HasPrefix(string(buf[:n]), "seq ") {
				now := time.Now()
				e.mu.Lock()
				e.recv++
				e.longestGap = max(e.longestGap, now.Sub(e.lastAnswer))
				e.lastAnswer = now
				e.mu.Unlock()
			}
		}
	}()
	sent := make(chan struct{})
	go func() { // sender
		defer func() {
			e.mu.Lock()
			e.stoppedAt = time.Now()
			e.mu.Unlock()
			close(sent)
		}()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for seq := 0; ; seq++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := conn.Write([]byte(fmt.Sprintf("seq %d from %s", seq, local))); err == nil {
				e.mu.Lock()
				e.sent++
				e.mu.Unlock()
			}
		}
	}()
	wait := func() {
		<-sent
		time.Sleep(time.Second) // answers in flight
		conn.Close()
		<-done
		e.mu.Lock()
		// Silence at the end counts up to the last datagram sent.
		e.longestGap = max(e.longestGap, e.stoppedAt.Sub(e.lastAnswer))
		e.mu.Unlock()
	}
	return e, wait, nil
}

package integration

// Debian's PPTP client (pptp-linux) on two LAN hosts and pptpd on the WAN
// host, dialing through the router at the same time. The machine has no
// kernel PPP, so each side's pppd fails as soon as the call is up: what
// is exercised is the control channel (TCP 1723) with its Call IDs, from
// Start-Control-Connection-Request to the client's Call-Clear-Request.
//
// What the peers do here, as observed with pptp-linux 1.10 and pptpd 1.4:
//   - the client sends SCCRQ, then (a second later) OCRQ with a Call ID it
//     reads from /dev/random; pptpd answers SCCRP and OCRP, giving the call
//     a Call ID of its own (0, 128, 256, ... per control connection);
//   - neither side sends Set-Link-Info, Echo or any GRE: both pppd exit
//     before PPP says a word;
//   - pptpd closes the control connection when its pppd dies, without
//     Call-Disconnect-Notify or Stop-Control-Connection-Request; the
//     client's call manager then sends Call-Clear-Request, which pptpd's
//     kernel answers with a TCP reset, and exits without Stop-Control-
//     Connection-Request.
//
// Each program runs with everything it forks in a PID namespace of its
// own (killing the one unshare process ends them all) and a mount
// namespace with a private /run, /etc/ppp and /dev: pid files, lock files
// and the call manager's socket stay apart from the host's and from the
// other instances', and /dev/log is a socket of the test, so their syslog
// messages are the test's to show. The private /dev also decides which
// Call ID pptp-linux picks: a /dev/random holding fixed bytes pins it.

import (
	"bytes"
	"encoding/binary"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// realPPTPTools are the programs the real-peer PPTP tests run, with the
// Debian package of each.
var realPPTPTools = []struct{ name, pkg string }{
	{"pptp", "pptp-linux"},
	{"pptpd", "pptpd"},
	{"pppd", "ppp"},
	{tsharkBin, "tshark"},
	{dumpcapBin, "wireshark-common (comes with tshark)"},
	{"unshare", "util-linux"},
	{"bash", "bash"},
	{"ss", "iproute2"},
}

// requireRealPPTPTools fails the test when a program of realPPTPTools is
// missing.
func requireRealPPTPTools(t *testing.T) {
	t.Helper()
	var missing []string
	for _, tool := range realPPTPTools {
		if _, err := exec.LookPath(tool.name); err != nil {
			missing = append(missing, fmt.Sprintf("%s (package %s)", tool.name, tool.pkg))
		}
	}
	if _, err := os.Stat("/etc/ppp"); err != nil {
		missing = append(missing, "/etc/ppp (package ppp)")
	}
	if len(missing) > 0 {
		t.Fatalf("the real-peer PPTP tests need Debian's pptp client, pptpd and tshark; missing: %s\n"+
			"install them with: apt-get install -y --no-install-recommends ppp pptp-linux pptpd tshark", strings.Join(missing, ", "))
	}
}

// realPPTPScenarios are the ways the two LAN hosts dial. pptp-linux takes
// its Call ID from /dev/random, so two hosts almost never collide; a
// masquerade that leaves Call IDs alone then goes unnoticed. Pinning both
// to the same Call ID makes a rewrite necessary: the server tells calls
// (and the GRE they will carry) apart by Call ID alone, and both arrive
// from 198.18.0.1.
var realPPTPScenarios = []struct {
	name string
	// pinnedCallID is the Call ID both clients choose; 0 leaves the choice
	// to pptp-linux.
	pinnedCallID uint16
}{
	{"lan1 and lan2 dial at once with Call IDs of their own choosing", 0},
	// Two equal bytes, so that the pin holds whatever byte order
	// pptp-linux reads them in.
	{"lan1 and lan2 dial at once with the same Call ID", 0x5a5a},
}

// Limits of a real-peer run.
const (
	realPPTPServerReady = 10 * time.Second
	// A call takes about a second (pptp-linux waits that long between
	// SCCRP and OCRQ), then both pppd fail at once.
	realPPTPClientDone = 30 * time.Second
)

func TestRealPPTPPeersThroughKernelHelper(t *testing.T) {
	testRealPPTPPeers(t, func(t *testing.T, l *lab.Lab) {
		loadKernelNAT(t, l, kernelMasquerade+pptpKernelHelper)
	})
}

func TestRealPPTPPeersThroughVpnmasq(t *testing.T) {
	testRealPPTPPeers(t, func(t *testing.T, l *lab.Lab) {
		startRouter(t, l, labConfig)
	})
}

// testRealPPTPPeers runs every scenario on a lab of its own whose router
// namespace startNAT has made a masquerade.
func testRealPPTPPeers(t *testing.T, startNAT func(*testing.T, *lab.Lab)) {
	requireRealPPTPTools(t)
	for _, sc := range realPPTPScenarios {
		t.Run(sc.name, func(t *testing.T) {
			l := newLab(t, lab.Options{})
			startNAT(t, l)
			runRealPPTP(t, l, sc.pinnedCallID)
		})
	}
}

// realPPTPClient is one LAN host's pptp.
type realPPTPClient struct {
	name string
	ns   *lab.NS
	addr netip.Addr
	proc *realPPTPProc
}

// runRealPPTP captures both sides of the router, starts pptpd on the WAN
// host and pptp on lan1 and lan2 together, waits for the clients to give
// up (their pppd cannot run) and checks the control messages on the wire.
func runRealPPTP(t *testing.T, l *lab.Lab, pinnedCallID uint16) {
	dir := realPPTPDir(t)
	lanCap := startPcapCapture(t, l.Router, lab.RouterLANIf, "br-lan")
	wanCap := startPcapCapture(t, l.Router, lab.RouterWANIf, "rtr-wan")
	server := startRealPptpd(t, l.WAN, dir)

	var env []string
	if pinnedCallID != 0 {
		// pptp-linux reads two bytes of /dev/random as its Call ID, in
		// host byte order (little-endian here).
		random := filepath.Join(dir, "random")
		if err := os.WriteFile(random, bytes.Repeat(binary.LittleEndian.AppendUint16(nil, pinnedCallID), 2048), 0o444); err != nil {
			t.Fatal(err)
		}
		env = append(env, "REALPPTP_RANDOM="+random)
	}
	clients := []*realPPTPClient{
		{name: "lan1", ns: l.LAN1, addr: lab.LAN1Addr},
		{name: "lan2", ns: l.LAN2, addr: lab.LAN2Addr},
	}
	for _, c := range clients {
		// The pppd options after the server's address are only for the
		// pppd that pptp launches, which fails on the missing /dev/ppp.
		c.proc = startRealPPTPProc(t, c.ns, "pptp-"+c.name, dir, env,
			"pptp", lab.WANAddr.String(), "--nohostroute", "--loglevel", "2", "nodetach", "noauth", "nodefaultroute")
	}
	deadline := time.After(realPPTPClientDone)
	for _, c := range clients {
		select {
		case <-c.proc.exited:
			t.Logf("%s: %s", c.name, strings.TrimSpace(c.proc.out.String()))
		case <-deadline:
			t.Errorf("pptp on %s still running %v after it started; killing it", c.name, realPPTPClientDone)
			c.proc.kill()
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, c := range clients {
				t.Logf("pptp on %s: output:\n%s\nsyslog:\n%s", c.name, c.proc.out, c.proc.log)
			}
			t.Logf("pptpd: output:\n%s\nsyslog:\n%s", server.out, server.log)
		}
	})

	lanPath, wanPath := lanCap.stop(), wanCap.stop()
	lan, err := pptpControlMessages(lanPath)
	if err != nil {
		t.Fatal(err)
	}
	wan, err := pptpControlMessages(wanPath)
	if err != nil {
		t.Fatal(err)
	}
	logPPTPWire(t, "LAN side (br-lan)", lan)
	logPPTPWire(t, "WAN side (rtr-wan)", wan)
	logPPTPWireCallIDs(t, lan, wan)

	t.Run("each LAN host sets up its call and clears it after pppd failed", func(t *testing.T) {
		var want []netip.Addr
		for _, c := range clients {
			want = append(want, c.addr)
		}
		reportPPTPWireProblems(t, "LAN side", checkPPTPWireCalls(lan, want))
		if pinnedCallID != 0 {
			for _, conn := range pptpWireConns(lan) {
				if id, ok := conn.clientCallID(); ok && id != int(pinnedCallID) {
					t.Errorf("%s chose Call ID %d, want the pinned %d: pptp-linux no longer takes its Call ID from /dev/random as this test assumes", conn.Client, id, pinnedCallID)
				}
			}
		}
	})
	t.Run("each direction carries the same control messages on both sides of the router", func(t *testing.T) {
		reportPPTPWireProblems(t, "LAN side against WAN side", checkPPTPWireSameMessages(lan, wan))
	})
	t.Run("the server sees every control connection from 198.18.0.1", func(t *testing.T) {
		reportPPTPWireProblems(t, "WAN side", checkPPTPWireMasqueraded(wan, lab.RouterWANAddr))
	})
	t.Run("the Call ID the server sees comes back in its OCRP and reaches the client as the client's own", func(t *testing.T) {
		reportPPTPWireProblems(t, "Call IDs", checkPPTPWireCallIDs(lan, wan))
	})
	t.Run("the server sees a distinct Call ID for every call", func(t *testing.T) {
		reportPPTPWireProblems(t, "WAN side", checkPPTPWireDistinctCallIDs(wan))
	})
	t.Run("no control packet on either side is malformed", func(t *testing.T) {
		// pptpd closes the connection as soon as its pppd dies, and its
		// kernel answers the client's Call-Clear-Request, which comes
		// after that, with a reset: the peers' doing, not the router's.
		for _, path := range []string{lanPath, wanPath} {
			broken, err := brokenPackets(path, "Connection reset (RST)")
			if err != nil {
				t.Fatal(err)
			}
			if len(broken) > 0 {
				t.Errorf("%s: %d frames malformed or with expert warnings:\n%s", path, len(broken), strings.Join(broken[:min(len(broken), 30)], "\n"))
			}
		}
	})
}

// realPPTPDir is a directory for the runs' files and syslog sockets,
// removed when the test ends. Not t.TempDir: a subtest's name makes that
// path too long for a Unix socket.
func realPPTPDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pptp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// realPPTPWrapper prepares the private mount namespace, runs the program
// ("$@") and, being the PID namespace's init, waits until every process
// the program left behind (pptp's call manager outlives pptp) has ended;
// bash reaps those orphans as they exit. REALPPTP_SYSLOG is the socket
// that becomes /dev/log; REALPPTP_RANDOM, if set, a file that becomes
// /dev/random.
const realPPTPWrapper = `set -e
mount -t tmpfs -o mode=0755 run /run
mount -t tmpfs -o mode=0755 etc-ppp /etc/ppp
mount -t tmpfs -o mode=0755 dev /dev
mknod -m 0666 /dev/null c 1 3
mknod -m 0666 /dev/zero c 1 5
mknod -m 0666 /dev/urandom c 1 9
mknod -m 0666 /dev/tty c 5 0
if [ -n "$REALPPTP_RANDOM" ]; then
	cp "$REALPPTP_RANDOM" /dev/random
else
	mknod -m 0666 /dev/random c 1 8
fi
mkdir /dev/pts
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
ln -s "$REALPPTP_SYSLOG" /dev/log
set +e
"$@"
echo "$1 exited with status $?"
while :; do
	set -- /proc/[0-9]*
	[ "$#" -le 1 ] && break
	sleep 0.1
done
`

// realPPTPProc is pptp or pptpd, with everything it forks, in a PID and
// mount namespace of its own inside a lab namespace.
type realPPTPProc struct {
	name   string
	cmd    *exec.Cmd
	out    *syncBuffer // the wrapper's and the programs' stdout and stderr
	log    *realPPTPSyslog
	exited chan struct{}
}

// startRealPPTPProc runs args through realPPTPWrapper in ns. It is killed
// when the test ends, if it has not exited by then.
func startRealPPTPProc(t *testing.T, ns *lab.NS, name, dir string, env []string, args ...string) *realPPTPProc {
	t.Helper()
	syslog := listenRealPPTPSyslog(t, filepath.Join(dir, name+".log"))
	// `ip netns exec` execs unshare in place, so the PID is unshare's.
	// unshare blocks SIGTERM while it waits for its child, the
	// namespace's init; SIGKILL to it kills that init (--kill-child), and
	// with it every process of the PID namespace.
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name,
		"unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc",
		"bash", "-c", realPPTPWrapper, name}, args...)...)
	cmd.Env = append(append(os.Environ(), "REALPPTP_SYSLOG="+syslog.path), env...)
	p := &realPPTPProc{name: name, cmd: cmd, out: &syncBuffer{}, log: syslog, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s in %s: %v", name, ns.Name, err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(p.kill)
	return p
}

// kill ends the process and everything it started, and waits for it.
func (p *realPPTPProc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// startRealPptpd runs pptpd on the WAN host, listening on its address, and
// waits until it accepts connections. Its pppd is the real one, and fails.
func startRealPptpd(t *testing.T, ns *lab.NS, dir string) *realPPTPProc {
	t.Helper()
	conf := filepath.Join(dir, "pptpd.conf")
	options := filepath.Join(dir, "pptpd-options")
	files := map[string]string{
		// The addresses are pppd's, which never gets to configure them.
		conf:    "localip 198.19.77.1\nremoteip 198.19.77.100-109\n",
		options: "name pptpd-lab\nnoauth\nnodefaultroute\n",
	}
	for path, text := range files {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := startRealPPTPProc(t, ns, "pptpd", dir, nil,
		"pptpd", "--fg", "--debug", "--conf", conf, "--option", options,
		"--listen", lab.WANAddr.String(), "--pidfile", "/run/pptpd.pid")
	listening := net.JoinHostPort(lab.WANAddr.String(), "1723")
	deadline := time.Now().Add(realPPTPServerReady)
	for {
		out, _ := runIn(t, ns, 5*time.Second, "ss", "-Hltn", "sport = :1723")
		if strings.Contains(out, listening) {
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("pptpd exited at start: %s\nsyslog:\n%s", p.out, p.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("pptpd not listening on %s after %v: %s\nsyslog:\n%s", listening, realPPTPServerReady, p.out, p.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// realPPTPSyslog collects the syslog datagrams sent to one socket.
type realPPTPSyslog struct {
	path string
	conn *net.UnixConn
	buf  syncBuffer
	done chan struct{}
}

func listenRealPPTPSyslog(t *testing.T, path string) *realPPTPSyslog {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("syslog socket: %v", err)
	}
	s := &realPPTPSyslog{path: path, conn: conn, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		b := make([]byte, 64<<10)
		for {
			n, err := conn.Read(b)
			if err != nil {
				return
			}
			// "<29>Nov 27 15:09:55 pptp[16]: text": the priority is noise.
			line := string(b[:n])
			if i := strings.IndexByte(line, '>'); strings.HasPrefix(line, "<") && i > 0 {
				line = line[i+1:]
			}
			s.buf.Write([]byte(strings.TrimRight(line, "\n") + "\n"))
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-s.done
	})
	return s
}

func (s *realPPTPSyslog) String() string { return s.buf.String() }

// PPTP control message types (RFC 2637 section 2).
const (
	pptpWireSCCRQ    = 1
	pptpWireSCCRP    = 2
	pptpWireStopCCRQ = 3
	pptpWireStopCCRP = 4
	pptpWireEchoRQ   = 5
	pptpWireEchoRP   = 6
	pptpWireOCRQ     = 7
	pptpWireOCRP     = 8
	pptpWireICRQ     = 9
	pptpWireICRP     = 10
	pptpWireICCN     = 11
	pptpWireCCRQ     = 12
	pptpWireCDN      = 13
	pptpWireWEN      = 14
	pptpWireSLI      = 15
)

var pptpWireNames = map[int]string{
	pptpWireSCCRQ: "SCCRQ", pptpWireSCCRP: "SCCRP", pptpWireStopCCRQ: "StopCCRQ", pptpWireStopCCRP: "StopCCRP",
	pptpWireEchoRQ: "EchoRQ", pptpWireEchoRP: "EchoRP", pptpWireOCRQ: "OCRQ", pptpWireOCRP: "OCRP",
	pptpWireICRQ: "ICRQ", pptpWireICRP: "ICRP", pptpWireICCN: "ICCN", pptpWireCCRQ: "CCRQ",
	pptpWireCDN: "CDN", pptpWireWEN: "WEN", pptpWireSLI: "SLI",
}

func pptpWireName(typ int) string {
	if n, ok := pptpWireNames[typ]; ok {
		return n
	}
	return "type" + strconv.Itoa(typ)
}

// pptpWirePort is the PPTP control channel's TCP port.
const pptpWirePort = 1723

// pptpWireMsg is one PPTP control message as a capture shows it.
type pptpWireMsg struct {
	Frame    int
	Src, Dst netip.AddrPort
	// Conn is the client's initial TCP sequence number. A masquerade
	// changes addresses and ports but not sequence numbers, so it names
	// the control connection on both sides of the router.
	Conn       uint32
	Type       int
	CallID     int // -1: the message has no Call ID field
	PeerCallID int // -1: no Peer's Call ID field
}

// fromClient tells whether the message goes to the server (the PAC).
func (m pptpWireMsg) fromClient() bool { return m.Dst.Port() == pptpWirePort }

// clientCallID returns the client's Call ID if the message carries it:
// the value a masquerade rewrites towards the server and restores towards
// the client. Call-Disconnect-Notify is left out: RFC 2637 has it carry
// the PAC's Call ID, Linux's helper rewrites it as the PNS's.
func (m pptpWireMsg) clientCallID() (int, bool) {
	switch {
	case m.fromClient() && (m.Type == pptpWireOCRQ || m.Type == pptpWireCCRQ || m.Type == pptpWireICRP):
		return m.CallID, m.CallID >= 0
	case !m.fromClient() && (m.Type == pptpWireOCRP || m.Type == pptpWireICCN || m.Type == pptpWireWEN || m.Type == pptpWireSLI):
		return m.PeerCallID, m.PeerCallID >= 0
	}
	return 0, false
}

// serverCallID returns the server's Call ID if the message carries it; no
// masquerade has reason to touch it.
func (m pptpWireMsg) serverCallID() (int, bool) {
	switch {
	case !m.fromClient() && (m.Type == pptpWireOCRP || m.Type == pptpWireICRQ):
		return m.CallID, m.CallID >= 0
	case m.fromClient() && (m.Type == pptpWireICRP || m.Type == pptpWireSLI):
		return m.PeerCallID, m.PeerCallID >= 0
	}
	return 0, false
}

func (m pptpWireMsg) String() string {
	s := fmt.Sprintf("#%d %s > %s %s", m.Frame, m.Src, m.Dst, pptpWireName(m.Type))
	if m.CallID >= 0 {
		s += fmt.Sprintf(" call=%d", m.CallID)
	}
	if m.PeerCallID >= 0 {
		s += fmt.Sprintf(" peer=%d", m.PeerCallID)
	}
	return s
}

// PDML, tshark's XML dissection: what pptpControlMessages reads of it.
type pptpPDMLField struct {
	Name   string          `xml:"name,attr"`
	Show   string          `xml:"show,attr"`
	Fields []pptpPDMLField `xml:"field"`
}

type pptpPDMLProto struct {
	Name   string          `xml:"name,attr"`
	Fields []pptpPDMLField `xml:"field"`
}

type pptpPDMLPacket struct {
	Protos []pptpPDMLProto `xml:"proto"`
}

// values collects the shown values of every field, nested ones included.
func (p pptpPDMLProto) values() map[string]string {
	v := map[string]string{}
	var walk func([]pptpPDMLField)
	walk = func(fs []pptpPDMLField) {
		for _, f := range fs {
			if _, seen := v[f.Name]; !seen && f.Name != "" {
				v[f.Name] = f.Show
			}
			walk(f.Fields)
		}
	}
	walk(p.Fields)
	return v
}

// pptpControlMessages returns the PPTP control messages of a capture in
// order, several per frame where a segment carries several. Frames whose
// TCP stream did not start inside the capture are not expected (captures
// start before the peers) and yield a wrong Conn.
func pptpControlMessages(pcap string) ([]pptpWireMsg, error) {
	cmd := exec.Command(tsharkBin, "-r", pcap, "-n", "-Y", "pptp", "-T", "pdml",
		"-o", "tcp.analyze_sequence_numbers:TRUE", "-o", "tcp.relative_sequence_numbers:TRUE")
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("tshark -r %s: %v", pcap, tsharkErr(err))
	}
	dec := xml.NewDecoder(bytes.NewReader(out))
	var msgs []pptpWireMsg
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return msgs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("tshark -r %s: PDML: %v", pcap, err)
		}
		start, ok := tok.(xml.StartElement)
		if !ok || start.Name.Local != "packet" {
			continue
		}
		var pkt pptpPDMLPacket
		if err := dec.DecodeElement(&pkt, &start); err != nil {
			return nil, fmt.Errorf("tshark -r %s: PDML: %v", pcap, err)
		}
		pm, err := pptpPacketMessages(pkt)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", pcap, err)
		}
		msgs = append(msgs, pm...)
	}
}

// pptpPacketMessages turns one dissected frame into its control messages.
func pptpPacketMessages(pkt pptpPDMLPacket) ([]pptpWireMsg, error) {
	var frame, ip, tcp map[string]string
	var pptps []map[string]string
	for _, p := range pkt.Protos {
		switch p.Name {
		case "frame":
			frame = p.values()
		case "ip":
			if ip == nil { // an ICMP error quotes an inner header
				ip = p.values()
			}
		case "tcp":
			if tcp == nil {
				tcp = p.values()
			}
		case "pptp":
			pptps = append(pptps, p.values())
		}
	}
	num, err := strconv.Atoi(frame["frame.number"])
	if err != nil || ip == nil || tcp == nil {
		return nil, fmt.Errorf("frame %q: PPTP without frame number, IPv4 or TCP", frame["frame.number"])
	}
	atoi := func(m map[string]string, key string) (int, error) {
		v, ok := m[key]
		if !ok {
			return -1, fmt.Errorf("frame %d: no %s", num, key)
		}
		n, err := strconv.ParseUint(v, 0, 32)
		if err != nil {
			return -1, fmt.Errorf("frame %d: %s=%q: %v", num, key, v, err)
		}
		return int(n), nil
	}
	addrPort := func(addrKey, portKey string) (netip.AddrPort, error) {
		a, err := netip.ParseAddr(ip[addrKey])
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("frame %d: %s=%q", num, addrKey, ip[addrKey])
		}
		port, err := atoi(tcp, portKey)
		if err != nil {
			return netip.AddrPort{}, err
		}
		return netip.AddrPortFrom(a, uint16(port)), nil
	}
	src, err := addrPort("ip.src", "tcp.srcport")
	if err != nil {
		return nil, err
	}
	dst, err := addrPort("ip.dst", "tcp.dstport")
	if err != nil {
		return nil, err
	}
	// The client's raw sequence number minus its relative one, or the
	// server's raw acknowledgment minus its relative one: either is the
	// client's initial sequence number.
	rawKey, relKey := "tcp.ack_raw", "tcp.ack"
	if dst.Port() == pptpWirePort {
		rawKey, relKey = "tcp.seq_raw", "tcp.seq"
	}
	raw, err := atoi(tcp, rawKey)
	if err != nil {
		return nil, err
	}
	rel, err := atoi(tcp, relKey)
	if err != nil {
		return nil, err
	}
	var msgs []pptpWireMsg
	for _, p := range pptps {
		typ, err := atoi(p, "pptp.control_message_type")
		if err != nil {
			return nil, err
		}
		m := pptpWireMsg{Frame: num, Src: src, Dst: dst, Conn: uint32(raw) - uint32(rel), Type: typ, CallID: -1, PeerCallID: -1}
		if _, ok := p["pptp.call_id"]; ok {
			if m.CallID, err = atoi(p, "pptp.call_id"); err != nil {
				return nil, err
			}
		}
		if _, ok := p["pptp.peer_call_id"]; ok {
			if m.PeerCallID, err = atoi(p, "pptp.peer_call_id"); err != nil {
				return nil, err
			}
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// pptpWireConn is one control connection as one side of the router sees it.
type pptpWireConn struct {
	Conn           uint32
	Client, Server netip.AddrPort
	Msgs           []pptpWireMsg
}

// pptpWireConns groups messages by control connection, in the order the
// connections first appear.
func pptpWireConns(msgs []pptpWireMsg) []*pptpWireConn {
	var conns []*pptpWireConn
	byConn := map[uint32]*pptpWireConn{}
	for _, m := range msgs {
		c := byConn[m.Conn]
		if c == nil {
			c = &pptpWireConn{Conn: m.Conn, Client: m.Src, Server: m.Dst}
			if !m.fromClient() {
				c.Client, c.Server = m.Dst, m.Src
			}
			byConn[m.Conn] = c
			conns = append(conns, c)
		}
		c.Msgs = append(c.Msgs, m)
	}
	return conns
}

// direction returns the messages one way.
func (c *pptpWireConn) direction(fromClient bool) []pptpWireMsg {
	var out []pptpWireMsg
	for _, m := range c.Msgs {
		if m.fromClient() == fromClient {
			out = append(out, m)
		}
	}
	return out
}

// clientCallID is the Call ID of the connection's (first) OCRQ.
func (c *pptpWireConn) clientCallID() (int, bool) {
	for _, m := range c.Msgs {
		if m.fromClient() && m.Type == pptpWireOCRQ {
			return m.clientCallID()
		}
	}
	return 0, false
}

func pptpWireTypes(msgs []pptpWireMsg) string {
	var names []string
	for _, m := range msgs {
		names = append(names, pptpWireName(m.Type))
	}
	return "[" + strings.Join(names, " ") + "]"
}

// pptpWireInOrder reports whether want occurs in msgs' types in that order,
// other messages allowed in between.
func pptpWireInOrder(msgs []pptpWireMsg, want ...int) bool {
	i := 0
	for _, m := range msgs {
		if i < len(want) && m.Type == want[i] {
			i++
		}
	}
	return i == len(want)
}

// checkPPTPWireCalls checks one side's connections against what the
// clients at addrs do: one control connection each, SCCRQ then OCRQ then
// CCRQ from the client, SCCRP then OCRP from the server.
func checkPPTPWireCalls(msgs []pptpWireMsg, clients []netip.Addr) []string {
	var problems []string
	conns := pptpWireConns(msgs)
	for _, addr := range clients {
		var mine []*pptpWireConn
		for _, c := range conns {
			if c.Client.Addr() == addr {
				mine = append(mine, c)
			}
		}
		if len(mine) != 1 {
			problems = append(problems, fmt.Sprintf("%s has %d control connections, want 1", addr, len(mine)))
		}
		for _, c := range mine {
			if up := c.direction(true); !pptpWireInOrder(up, pptpWireSCCRQ, pptpWireOCRQ, pptpWireCCRQ) {
				problems = append(problems, fmt.Sprintf("%s sent %s, want SCCRQ, OCRQ and CCRQ in that order", c.Client, pptpWireTypes(up)))
			}
			if down := c.direction(false); !pptpWireInOrder(down, pptpWireSCCRP, pptpWireOCRP) {
				problems = append(problems, fmt.Sprintf("%s received %s, want SCCRP and OCRP in that order", c.Client, pptpWireTypes(down)))
			}
		}
	}
	for _, c := range conns {
		if !slices.Contains(clients, c.Client.Addr()) {
			problems = append(problems, fmt.Sprintf("control connection from unexpected client %s: %s", c.Client, pptpWireTypes(c.Msgs)))
		}
	}
	return problems
}

// pairPPTPWireConns pairs each LAN-side connection with the WAN-side one
// of the same client sequence numbers; unpaired ones are problems.
func pairPPTPWireConns(lan, wan []pptpWireMsg) (pairs [][2]*pptpWireConn, problems []string) {
	wanConns := pptpWireConns(wan)
	paired := map[uint32]bool{}
	for _, l := range pptpWireConns(lan) {
		i := slices.IndexFunc(wanConns, func(w *pptpWireConn) bool { return w.Conn == l.Conn })
		if i < 0 {
			problems = append(problems, fmt.Sprintf("control connection %s -> %s (%s) never appears on the WAN side", l.Client, l.Server, pptpWireTypes(l.Msgs)))
			continue
		}
		pairs = append(pairs, [2]*pptpWireConn{l, wanConns[i]})
		paired[l.Conn] = true
	}
	for _, w := range wanConns {
		if !paired[w.Conn] {
			problems = append(problems, fmt.Sprintf("control connection %s -> %s (%s) on the WAN side comes from no LAN connection", w.Client, w.Server, pptpWireTypes(w.Msgs)))
		}
	}
	return pairs, problems
}

// checkPPTPWireSameMessages checks that every connection carries the same
// message types in the same order on both sides, in each direction.
func checkPPTPWireSameMessages(lan, wan []pptpWireMsg) []string {
	pairs, problems := pairPPTPWireConns(lan, wan)
	for _, p := range pairs {
		for _, up := range []bool{true, false} {
			l, w := p[0].direction(up), p[1].direction(up)
			if lt, wt := pptpWireTypes(l), pptpWireTypes(w); lt != wt {
				dir := "server to client"
				if up {
					dir = "client to server"
				}
				problems = append(problems, fmt.Sprintf("%s, %s: LAN side %s, WAN side %s", p[0].Client, dir, lt, wt))
			}
		}
	}
	return problems
}

// checkPPTPWireMasqueraded checks the WAN side: every control connection
// runs between masq and the server's port 1723.
func checkPPTPWireMasqueraded(wan []pptpWireMsg, masq netip.Addr) []string {
	var problems []string
	for _, c := range pptpWireConns(wan) {
		if c.Client.Addr() != masq || c.Server.Port() != pptpWirePort {
			problems = append(problems, fmt.Sprintf("control connection %s -> %s, want %s -> server:%d", c.Client, c.Server, masq, pptpWirePort))
		}
	}
	return problems
}

// checkPPTPWireCallIDs checks the Call IDs of every connection: each side
// carries one client Call ID throughout (the client's own on the LAN side,
// whatever the router chose on the WAN side, which the server's OCRP must
// echo), and the server's Call ID is the same on both sides.
func checkPPTPWireCallIDs(lan, wan []pptpWireMsg) []string {
	pairs, problems := pairPPTPWireConns(lan, wan)
	for _, p := range pairs {
		l, w := p[0], p[1]
		lanID, lok := l.clientCallID()
		wanID, wok := w.clientCallID()
		if !lok || !wok {
			problems = append(problems, fmt.Sprintf("%s: no OCRQ with a Call ID on both sides", l.Client))
			continue
		}
		for _, side := range []struct {
			name string
			conn *pptpWireConn
			want int
		}{{"LAN", l, lanID}, {"WAN", w, wanID}} {
			for _, m := range side.conn.Msgs {
				if id, ok := m.clientCallID(); ok && id != side.want {
					problems = append(problems, fmt.Sprintf("%s side: %s carries client Call ID %d, want %d (the %s side's OCRQ)", side.name, m, id, side.want, side.name))
				}
			}
		}
		// The server's Call IDs, message by message where both sides
		// carry the same messages (checkPPTPWireSameMessages reports it
		// where they do not).
		if len(l.Msgs) == len(w.Msgs) {
			for i, lm := range l.Msgs {
				wm := w.Msgs[i]
				lid, lok := lm.serverCallID()
				wid, wok := wm.serverCallID()
				if lm.Type == wm.Type && lok && wok && lid != wid {
					problems = append(problems, fmt.Sprintf("server's Call ID changed: WAN side %s, LAN side %s", wm, lm))
				}
			}
		}
	}
	return problems
}

// checkPPTPWireDistinctCallIDs checks the WAN side: no two calls to one
// server carry the same client Call ID. Both come from the one masquerade
// address, so the server (and the router, for the server's GRE, whose key
// is that Call ID) could not tell them apart.
func checkPPTPWireDistinctCallIDs(wan []pptpWireMsg) []string {
	var problems []string
	type key struct {
		server netip.Addr
		id     int
	}
	first := map[key]*pptpWireConn{}
	for _, c := range pptpWireConns(wan) {
		id, ok := c.clientCallID()
		if !ok {
			continue
		}
		k := key{c.Server.Addr(), id}
		if other := first[k]; other != nil {
			problems = append(problems, fmt.Sprintf("calls of %s and %s to %s both carry Call ID %d", other.Client, c.Client, c.Server.Addr(), id))
			continue
		}
		first[k] = c
	}
	return problems
}

// logPPTPWire logs one side's control connections, message by message.
func logPPTPWire(t *testing.T, side string, msgs []pptpWireMsg) {
	t.Helper()
	var b strings.Builder
	for _, c := range pptpWireConns(msgs) {
		fmt.Fprintf(&b, "\n  %s -> %s:", c.Client, c.Server)
		for _, m := range c.Msgs {
			b.WriteString("\n    " + m.String())
		}
	}
	t.Logf("%s: %d control messages%s", side, len(msgs), b.String())
}

// logPPTPWireCallIDs logs, per call, the Call IDs on both sides: what the
// router chose shows here.
func logPPTPWireCallIDs(t *testing.T, lan, wan []pptpWireMsg) {
	t.Helper()
	pairs, _ := pairPPTPWireConns(lan, wan)
	for _, p := range pairs {
		lanID, _ := p[0].clientCallID()
		wanID, _ := p[1].clientCallID()
		serverID := -1
		for _, m := range p[1].Msgs {
			if id, ok := m.serverCallID(); ok {
				serverID = id
				break
			}
		}
		t.Logf("%s (%s on the WAN side): client Call ID %d on the LAN side, %d on the WAN side; server's Call ID %d",
			p[0].Client, p[1].Client, lanID, wanID, serverID)
	}
}

// reportPPTPWireProblems fails the test with the problems found, if any.
func reportPPTPWireProblems(t *testing.T, what string, problems []string) {
	t.Helper()
	if len(problems) > 0 {
		t.Errorf("%s:\n  %s", what, strings.Join(problems, "\n  "))
	}
}

// TestPPTPWireChecksCatchBrokenCallIDs feeds the checks of the real-peer
// tests hand-made captures: the kernel helper's rewrite passes, and every
// kind of broken masquerade is caught.
func TestPPTPWireChecksCatchBrokenCallIDs(t *testing.T) {
	server := netip.AddrPortFrom(lab.WANAddr, pptpWirePort)
	lan1 := netip.AddrPortFrom(lab.LAN1Addr, 40001)
	lan2 := netip.AddrPortFrom(lab.LAN2Addr, 40002)
	masq1 := netip.AddrPortFrom(lab.RouterWANAddr, 40001)
	masq2 := netip.AddrPortFrom(lab.RouterWANAddr, 40002)
	// call builds one connection's exchange: the client's Call ID
	// clientID, the server's serverID, and the server's OCRP answering
	// with echoed as Peer's Call ID.
	call := func(conn uint32, client netip.AddrPort, clientID, serverID, echoed int) []pptpWireMsg {
		up := func(typ, id int) pptpWireMsg {
			return pptpWireMsg{Src: client, Dst: server, Conn: conn, Type: typ, CallID: id, PeerCallID: -1}
		}
		down := func(typ, id, peer int) pptpWireMsg {
			return pptpWireMsg{Src: server, Dst: client, Conn: conn, Type: typ, CallID: id, PeerCallID: peer}
		}
		return []pptpWireMsg{
			up(pptpWireSCCRQ, -1), down(pptpWireSCCRP, -1, -1),
			up(pptpWireOCRQ, clientID), down(pptpWireOCRP, serverID, echoed),
			up(pptpWireCCRQ, clientID),
		}
	}
	lanSide := slices.Concat(call(1, lan1, 0x5a5a, 0, 0x5a5a), call(2, lan2, 0x5a5a, 128, 0x5a5a))
	checks := map[string]func(lan, wan []pptpWireMsg) []string{
		"calls": func(lan, _ []pptpWireMsg) []string {
			return checkPPTPWireCalls(lan, []netip.Addr{lab.LAN1Addr, lab.LAN2Addr})
		},
		"same messages": checkPPTPWireSameMessages,
		"masqueraded": func(_, wan []pptpWireMsg) []string {
			return checkPPTPWireMasqueraded(wan, lab.RouterWANAddr)
		},
		"call IDs": checkPPTPWireCallIDs,
		"distinct": func(_, wan []pptpWireMsg) []string { return checkPPTPWireDistinctCallIDs(wan) },
	}
	for _, tc := range []struct {
		name     string
		lan, wan []pptpWireMsg
		failing  []string // the checks that must report a problem
	}{
		{
			name: "a rewrite to distinct Call IDs, restored for each client, passes",
			lan:  lanSide,
			wan:  slices.Concat(call(1, masq1, 40001, 0, 40001), call(2, masq2, 40002, 128, 40002)),
		},
		{
			name:    "Call IDs left alone when both clients chose the same one are caught",
			lan:     lanSide,
			wan:     slices.Concat(call(1, masq1, 0x5a5a, 0, 0x5a5a), call(2, masq2, 0x5a5a, 128, 0x5a5a)),
			failing: []string{"distinct"},
		},
		{
			name: "an OCRP whose Peer's Call ID is not restored is caught",
			lan:  slices.Concat(call(1, lan1, 0x5a5a, 0, 40001), call(2, lan2, 0x5a5a, 128, 0x5a5a)),
			wan:  slices.Concat(call(1, masq1, 40001, 0, 40001), call(2, masq2, 40002, 128, 40002)),
			// The LAN side carries two client Call IDs in one connection.
			failing: []string{"call IDs"},
		},
		{
			name:    "an OCRQ rewritten but its CCRQ not is caught",
			lan:     lanSide,
			wan:     slices.Concat(call(1, masq1, 40001, 0, 40001)[:4], []pptpWireMsg{{Src: masq1, Dst: server, Conn: 1, Type: pptpWireCCRQ, CallID: 0x5a5a, PeerCallID: -1}}, call(2, masq2, 40002, 128, 40002)),
			failing: []string{"call IDs"},
		},
		{
			name:    "a server Call ID changed on the way is caught",
			lan:     slices.Concat(call(1, lan1, 0x5a5a, 7, 0x5a5a), call(2, lan2, 0x5a5a, 128, 0x5a5a)),
			wan:     slices.Concat(call(1, masq1, 40001, 0, 40001), call(2, masq2, 40002, 128, 40002)),
			failing: []string{"call IDs"},
		},
		{
			name:    "a message lost on the way is caught",
			lan:     lanSide,
			wan:     slices.Concat(call(1, masq1, 40001, 0, 40001)[:4], call(2, masq2, 40002, 128, 40002)),
			failing: []string{"same messages"},
		},
		{
			name:    "a connection leaving unmasqueraded is caught",
			lan:     lanSide,
			wan:     slices.Concat(call(1, lan1, 40001, 0, 40001), call(2, masq2, 40002, 128, 40002)),
			failing: []string{"masqueraded"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for name, check := range checks {
				problems := check(tc.lan, tc.wan)
				if want := slices.Contains(tc.failing, name); want != (len(problems) > 0) {
					t.Errorf("check %q: problems %q, want some: %v", name, problems, want)
				}
			}
		})
	}
}

package integration

import (
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
	"github.com/vpnmasq/vpnmasq/internal/pptppeer"
)

// The PPTP differential test runs one fixed exchange between a scripted
// client in lan1 and a scripted server on the WAN host, once through the
// kernel's PPTP NAT helper (the reference, here) and once through vpnmasq,
// and compares what each side received, modulo Call ID values.

// pptpClientCallID is the Call ID the script's client gives its call.
const pptpClientCallID = 0x0101

// pptpGREPackets is how many GRE packets each side sends in the script.
const pptpGREPackets = 3

// pptpPeerTimeout bounds every wait of the script.
const pptpPeerTimeout = 5 * time.Second

// pptpKernelHelper attaches the kernel's PPTP conntrack and NAT helper to
// control connections from the LAN. A namespace's conntrack only runs once
// it has a NAT rule, so it is loaded together with kernelMasquerade.
const pptpKernelHelper = `table ip pptphelper {
	ct helper pptp-1723 {
		type "pptp" protocol tcp;
	}
	chain pre {
		type filter hook prerouting priority filter; policy accept;
		iifname "br-lan" tcp dport 1723 ct helper set "pptp-1723"
	}
}
`

// pptpTranscript is what each side of the script received.
type pptpTranscript struct {
	// ServerCall is the server's record of the call: its own Call ID (ID)
	// and the client's Call ID as it reached the server (PeerID).
	ServerCall pptppeer.ServerCall
	ClientTCP  netip.AddrPort     // the client's end of the control connection
	ServerSaw  netip.AddrPort     // that end as the server sees it
	ClientGot  []pptppeer.Message // control messages, in order
	ServerGot  []pptppeer.Message
	// ClientGRE is the GRE delivered to the client's call; ClientStrays is
	// GRE whose key was not the call's Call ID.
	ClientGRE    []pptppeer.GREPacket
	ClientStrays []pptppeer.GREPacket
	ServerGRE    []pptppeer.GREPacket // every GRE packet the server received
	Errors       []string             // the peers' own complaints (malformed GRE, unknown calls)
}

// runPPTPScript runs the fixed exchange through whatever the lab's router
// namespace is set up as: SCCRQ/SCCRP, Echo, OCRQ/OCRP followed by the
// server's SLI and WEN, 3 GRE packets each way, CCRQ/CDN, StopCCRQ/
// StopCCRP. Each message goes in its own segment and every request waits
// for its reply, because the kernel's helper only parses a message at the
// start of a segment. It fails the test when a step cannot go on; a wrong
// value it only records, for the caller to judge.
func runPPTPScript(t *testing.T, l *lab.Lab) pptpTranscript {
	t.Helper()
	srv, err := pptppeer.StartServer(l.WAN, lab.WANAddr, pptppeer.SendWANErrorNotify())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := srv.Close(); err != nil {
			t.Errorf("closing the PPTP server: %v", err)
		}
	}()
	cl, err := pptppeer.Dial(l.LAN1, lab.LAN1Addr, lab.WANAddr, pptpPeerTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Abort()
	var tr pptpTranscript
	tr.ClientTCP = cl.LocalAddr()

	if err := cl.Echo(); err != nil {
		t.Fatal(err)
	}
	call, err := cl.Call(pptpClientCallID)
	if err != nil {
		t.Fatal(err)
	}
	// Taken whatever their Peer's Call ID, which the caller checks.
	for _, typ := range []uint16{pptppeer.TypeSLI, pptppeer.TypeWEN} {
		if _, err := cl.WaitMessage(typ); err != nil {
			t.Fatal(err)
		}
	}

	for i := 1; i <= pptpGREPackets; i++ {
		payload := fmt.Sprintf("pptp script packet %d", i)
		if err := call.SendGRE([]byte(payload)); err != nil {
			t.Fatal(err)
		}
		p, err := call.ReceiveGRE(time.Now().Add(pptpPeerTimeout))
		if err != nil {
			t.Errorf("GRE packet %d: %v; the server received %d GRE packets, the client %d strays", i, err, len(srv.GREReceived()), len(cl.Strays()))
			continue
		}
		tr.ClientGRE = append(tr.ClientGRE, p)
		if string(p.Payload) != pptppeer.EchoPrefix+payload {
			t.Errorf("GRE packet %d: the client's call got %q, want %q", i, p.Payload, pptppeer.EchoPrefix+payload)
		}
	}

	// CCRQ and CDN by hand rather than with call.Clear, so that a CDN with
	// any Call ID is recorded rather than waited out.
	if err := cl.Send(pptppeer.NewCCRQ(call.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.WaitMessage(pptppeer.TypeCDN); err != nil {
		t.Fatal(err)
	}
	if err := cl.Close(); err != nil {
		t.Errorf("stopping the control connection: %v", err)
	}

	tr.ClientGot = cl.Received()
	tr.ClientStrays = cl.Strays()
	for _, err := range cl.GREErrors() {
		tr.Errors = append(tr.Errors, "client: "+err.Error())
	}
	conns := srv.Conns()
	if len(conns) != 1 {
		t.Fatalf("the server has %d control connections, want 1", len(conns))
	}
	tr.ServerGot = conns[0].Received
	tr.ServerSaw = conns[0].Remote
	if len(conns[0].Calls) != 1 {
		t.Fatalf("the server has %d calls, want 1: %+v", len(conns[0].Calls), conns[0].Calls)
	}
	tr.ServerCall = conns[0].Calls[0]
	tr.ServerGRE = srv.GREReceived()
	for _, err := range srv.Errors() {
		tr.Errors = append(tr.Errors, "server: "+err.Error())
	}
	return tr
}

// log writes the transcript to the test log.
func (tr pptpTranscript) log(t *testing.T, name string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%s transcript: client %s (call %#04x), server sees %s, server call %#04x, client's call as the server sees it %#04x\n",
		name, tr.ClientTCP, pptpClientCallID, tr.ServerSaw, tr.ServerCall.ID, tr.ServerCall.PeerID)
	for _, m := range tr.ClientGot {
		fmt.Fprintf(&b, "  client got %s\n", m)
	}
	for _, m := range tr.ServerGot {
		fmt.Fprintf(&b, "  server got %s\n", m)
	}
	for _, p := range tr.ClientGRE {
		fmt.Fprintf(&b, "  client got %s\n", p)
	}
	for _, p := range tr.ServerGRE {
		fmt.Fprintf(&b, "  server got %s\n", p)
	}
	for _, e := range tr.Errors {
		fmt.Fprintf(&b, "  error: %s\n", e)
	}
	t.Log(b.String())
}

// firstOf returns the first message of type typ, if any.
func firstOf(ms []pptppeer.Message, typ uint16) (pptppeer.Message, bool) {
	for _, m := range ms {
		if m.Type == typ {
			return m, true
		}
	}
	return pptppeer.Message{}, false
}

// idRole names what a Call ID value is to one side of a transcript, so
// that transcripts with different values can be compared.
func (tr pptpTranscript) idRole(server bool, id uint16) string {
	own, seen, srv := uint16(pptpClientCallID), tr.ServerCall.PeerID, tr.ServerCall.ID
	if server {
		// The server knows the client's call only by the translated ID.
		switch id {
		case seen:
			return "the client's Call ID as the server sees it"
		case srv:
			return "the server's own Call ID"
		case own:
			return "the client's untranslated Call ID"
		}
		return "an unknown Call ID"
	}
	switch id {
	case own:
		return "the client's own Call ID"
	case srv:
		return "the server's Call ID"
	case seen:
		return "the client's Call ID as the server sees it"
	}
	return "an unknown Call ID"
}

// problems checks that the transcript is consistent in itself: each side
// sees one Call ID for each end of the call, and everything arrived.
func (tr pptpTranscript) problems() []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	own, seen, srv := uint16(pptpClientCallID), tr.ServerCall.PeerID, tr.ServerCall.ID

	if ocrq, ok := firstOf(tr.ServerGot, pptppeer.TypeOCRQ); !ok {
		add("the server received no OCRQ")
	} else if id, _ := ocrq.CallID(); id != seen {
		add("the server's OCRP names %#04x as the client's call, but its OCRQ carried %#04x", seen, id)
	}
	if ccrq, ok := firstOf(tr.ServerGot, pptppeer.TypeCCRQ); !ok {
		add("the server received no CCRQ")
	} else if id, _ := ccrq.CallID(); id != seen {
		add("the server's CCRQ carries %#04x, its OCRQ carried %#04x", id, seen)
	}
	if ocrp, ok := firstOf(tr.ClientGot, pptppeer.TypeOCRP); !ok {
		add("the client received no OCRP")
	} else {
		if id, _ := ocrp.CallID(); id != srv {
			add("the client's OCRP carries Call ID %#04x, the server sent its own %#04x", id, srv)
		}
		if peer, _ := ocrp.PeerCallID(); peer != own {
			add("the client's OCRP carries Peer's Call ID %#04x, want its own %#04x", peer, own)
		}
	}
	for _, typ := range []uint16{pptppeer.TypeSLI, pptppeer.TypeWEN} {
		if m, ok := firstOf(tr.ClientGot, typ); !ok {
			add("the client received no %s", pptppeer.TypeName(typ))
		} else if peer, _ := m.PeerCallID(); peer != own {
			add("the client's %s carries Peer's Call ID %#04x, want its own %#04x", m.Name(), peer, own)
		}
	}
	// RFC 2637 puts the server's Call ID in the CDN; the kernel's helper
	// turns it into the client's. Either is a consistent translation.
	if cdn, ok := firstOf(tr.ClientGot, pptppeer.TypeCDN); !ok {
		add("the client received no CDN")
	} else if id, _ := cdn.CallID(); id != srv && id != own {
		add("the client's CDN carries %#04x, neither the server's %#04x nor its own %#04x", id, srv, own)
	}
	if len(tr.ServerGRE) != pptpGREPackets {
		add("the server received %d GRE packets, want %d", len(tr.ServerGRE), pptpGREPackets)
	}
	for _, p := range tr.ServerGRE {
		if p.CallID != srv {
			add("the server received GRE keyed %#04x, want its own Call ID %#04x", p.CallID, srv)
		}
		if p.From != tr.ServerSaw.Addr() {
			add("the server received GRE from %s, but the control connection from %s", p.From, tr.ServerSaw.Addr())
		}
	}
	if len(tr.ClientGRE) != pptpGREPackets {
		add("the client's call got %d GRE packets, want %d", len(tr.ClientGRE), pptpGREPackets)
	}
	for _, p := range tr.ClientGRE {
		if p.From != lab.WANAddr {
			add("the client received GRE from %s, want the server %s", p.From, lab.WANAddr)
		}
	}
	for _, p := range tr.ClientStrays {
		add("the client received stray GRE: %s", p)
	}
	out = append(out, tr.Errors...)
	return out
}

// pptpExpectedCDNDifference is what compareTranscripts reports when the
// kernel's transcript is compared with that of a router that follows RFC
// 2637 for the Call-Disconnect-Notify. The kernel's helper handles the
// CDN's Call ID field as if it were the Peer's Call ID and overwrites it
// with the client's Call ID; RFC 2637 §2.13 has the server put its own
// Call ID there, and a router that translates only the client's Call ID
// leaves it alone. For the script's transcripts this line, exactly, is the
// one difference expected between the kernel and vpnmasq; any other line
// is a difference in behaviour. The vpnmasq half runs
//
//	kernel := kernelPPTPTranscript(t)
//	l := newLab(t, lab.Options{})
//	startRouter(t, l, config) // a configuration with PPTP enabled
//	diffs := compareTranscripts(kernel, runPPTPScript(t, l))
//
// and expects diffs to be exactly []string{pptpExpectedCDNDifference}.
const pptpExpectedCDNDifference = "client received CDN (#6) Call ID: kernel has the client's own Call ID, vpnmasq has the server's Call ID"

// compareTranscripts returns the differences between the kernel's and
// vpnmasq's transcripts: message sequences compared by Summary (every
// field but the Call IDs), Call IDs compared by role (whose ID each is,
// see idRole), GRE compared by everything but the key value, and the
// consistency problems of each transcript on its own. See
// pptpExpectedCDNDifference for the one difference expected.
func compareTranscripts(kernel, vpnmasq pptpTranscript) []string {
	var diffs []string
	for _, p := range kernel.problems() {
		diffs = append(diffs, "kernel: "+p)
	}
	for _, p := range vpnmasq.problems() {
		diffs = append(diffs, "vpnmasq: "+p)
	}
	sides := []struct {
		name   string
		server bool
		k, v   []pptppeer.Message
	}{
		{"client", false, kernel.ClientGot, vpnmasq.ClientGot},
		{"server", true, kernel.ServerGot, vpnmasq.ServerGot},
	}
	for _, s := range sides {
		for i := range max(len(s.k), len(s.v)) {
			at := fmt.Sprintf("%s received #%d", s.name, i+1)
			if i >= len(s.k) || i >= len(s.v) {
				diffs = append(diffs, fmt.Sprintf("%s: kernel %s, vpnmasq %s", at, summaryAt(s.k, i), summaryAt(s.v, i)))
				continue
			}
			km, vm := s.k[i], s.v[i]
			if km.Summary() != vm.Summary() {
				diffs = append(diffs, fmt.Sprintf("%s: kernel %s, vpnmasq %s", at, km.Summary(), vm.Summary()))
				continue
			}
			at = fmt.Sprintf("%s received %s (#%d)", s.name, km.Name(), i+1)
			if kid, ok := km.CallID(); ok {
				vid, _ := vm.CallID()
				if kr, vr := kernel.idRole(s.server, kid), vpnmasq.idRole(s.server, vid); kr != vr {
					diffs = append(diffs, fmt.Sprintf("%s Call ID: kernel has %s, vpnmasq has %s", at, kr, vr))
				}
			}
			if kid, ok := km.PeerCallID(); ok {
				vid, _ := vm.PeerCallID()
				if kr, vr := kernel.idRole(s.server, kid), vpnmasq.idRole(s.server, vid); kr != vr {
					diffs = append(diffs, fmt.Sprintf("%s Peer's Call ID: kernel has %s, vpnmasq has %s", at, kr, vr))
				}
			}
		}
	}
	gre := []struct {
		name   string
		server bool
		k, v   []pptppeer.GREPacket
	}{
		{"client", false, kernel.ClientGRE, vpnmasq.ClientGRE},
		{"server", true, kernel.ServerGRE, vpnmasq.ServerGRE},
	}
	for _, g := range gre {
		for i := range max(len(g.k), len(g.v)) {
			at := fmt.Sprintf("%s GRE #%d", g.name, i+1)
			if i >= len(g.k) || i >= len(g.v) {
				diffs = append(diffs, fmt.Sprintf("%s: kernel %s, vpnmasq %s", at, greAt(g.k, i), greAt(g.v, i)))
				continue
			}
			kp, vp := g.k[i], g.v[i]
			if kd, vd := greSummary(kp), greSummary(vp); kd != vd {
				diffs = append(diffs, fmt.Sprintf("%s: kernel %s, vpnmasq %s", at, kd, vd))
			}
			if kr, vr := kernel.idRole(g.server, kp.CallID), vpnmasq.idRole(g.server, vp.CallID); kr != vr {
				diffs = append(diffs, fmt.Sprintf("%s key: kernel has %s, vpnmasq has %s", at, kr, vr))
			}
		}
	}
	return diffs
}

func summaryAt(ms []pptppeer.Message, i int) string {
	if i < len(ms) {
		return ms[i].Summary()
	}
	return "(nothing)"
}

// greSummary is a GRE packet without its key and arrival time.
func greSummary(p pptppeer.GREPacket) string {
	return fmt.Sprintf("from=%s seq=%d/%v ack=%d/%v payload=%q", p.From, p.Seq, p.HasSeq, p.Ack, p.HasAck, p.Payload)
}

func greAt(ps []pptppeer.GREPacket, i int) string {
	if i < len(ps) {
		return greSummary(ps[i])
	}
	return "(nothing)"
}

// pptpWireFrame is one captured frame carrying PPTP control messages or
// GRE, as tshark dissects it.
type pptpWireFrame struct {
	Frame    int
	Types    []int // control message types, one per message in the frame
	CallIDs  []int
	PeerIDs  []int
	GREKey   int // -1: no GRE
	Src, Dst string
}

// readPPTPFrames lists the PPTP and GRE frames of a capture with tshark's
// own dissectors: an independent reading of what went over the wire.
func readPPTPFrames(path string) ([]pptpWireFrame, error) {
	out, err := exec.Command(tsharkBin, "-r", path, "-n", "-Y", "pptp || gre",
		"-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=,",
		"-e", "frame.number", "-e", "ip.src", "-e", "ip.dst",
		"-e", "pptp.control_message_type", "-e", "pptp.call_id", "-e", "pptp.peer_call_id",
		"-e", "gre.key.call_id").Output()
	if err != nil {
		return nil, fmt.Errorf("tshark -r %s: %v", path, tsharkErr(err))
	}
	ints := func(list string) []int {
		var out []int
		for _, s := range tsharkList(list) {
			n, _ := strconv.Atoi(s)
			out = append(out, n)
		}
		return out
	}
	var frames []pptpWireFrame
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 7 {
			continue
		}
		fr := pptpWireFrame{Src: f[1], Dst: f[2], Types: ints(f[3]), CallIDs: ints(f[4]), PeerIDs: ints(f[5]), GREKey: -1}
		fr.Frame, _ = strconv.Atoi(f[0])
		if f[6] != "" {
			fr.GREKey, _ = strconv.Atoi(f[6])
		}
		frames = append(frames, fr)
	}
	return frames, nil
}

// kernelPPTPTranscript runs the script through a fresh lab whose router
// namespace is the kernel's NAT with its PPTP helper: the reference
// transcript for compareTranscripts.
func kernelPPTPTranscript(t *testing.T) pptpTranscript {
	t.Helper()
	l := newLab(t, lab.Options{})
	loadKernelNAT(t, l, kernelMasquerade+pptpKernelHelper)
	return runPPTPScript(t, l)
}

func TestKernelPPTPHelperReference(t *testing.T) {
	l := newLab(t, lab.Options{})
	loadKernelNAT(t, l, kernelMasquerade+pptpKernelHelper)
	wanCap := startPcapCapture(t, l.Router, lab.RouterWANIf, "pptp-wan")
	lanCap := startPcapCapture(t, l.Router, lab.RouterLANIf, "pptp-lan")
	tr := runPPTPScript(t, l)
	tr.log(t, "kernel")
	lanPcap, wanPcap := lanCap.stop(), wanCap.stop()

	cdn, _ := firstOf(tr.ClientGot, pptppeer.TypeCDN)
	cdnID, _ := cdn.CallID()
	ocrp, _ := firstOf(tr.ClientGot, pptppeer.TypeOCRP)
	ocrpPeer, _ := ocrp.PeerCallID()
	ocrpID, _ := ocrp.CallID()
	peerOf := func(typ uint16) uint16 {
		m, _ := firstOf(tr.ClientGot, typ)
		id, _ := m.PeerCallID()
		return id
	}
	t.Logf("observed Call IDs: client %#04x (TCP %s), as the server sees it %#04x (TCP %s), server's own %#04x, OCRP at the client %#04x/peer %#04x, CDN at the client %#04x",
		pptpClientCallID, tr.ClientTCP, tr.ServerCall.PeerID, tr.ServerSaw, tr.ServerCall.ID, ocrpID, ocrpPeer, cdnID)

	checks := []struct {
		name string
		ok   bool
		got  string
	}{
		{"the server sees a Call ID other than the client's 0x0101 (the kernel rewrites it)",
			tr.ServerCall.PeerID != pptpClientCallID, fmt.Sprintf("%#04x", tr.ServerCall.PeerID)},
		// The kernel has no Call ID allocator: it reuses the control
		// connection's translated source port, hence one call per
		// connection at most.
		{"the kernel uses the translated TCP source port as the Call ID",
			tr.ServerCall.PeerID == tr.ServerSaw.Port(), fmt.Sprintf("Call ID %#04x, port %d", tr.ServerCall.PeerID, tr.ServerSaw.Port())},
		{"the server sees the control connection from the router's WAN address",
			tr.ServerSaw.Addr() == lab.RouterWANAddr, tr.ServerSaw.String()},
		{"the client gets 0x0101 back in the OCRP's Peer's Call ID", ocrpPeer == pptpClientCallID, fmt.Sprintf("%#04x", ocrpPeer)},
		{"the client gets the server's Call ID unchanged in the OCRP", ocrpID == tr.ServerCall.ID, fmt.Sprintf("%#04x", ocrpID)},
		{"the server's SLI reaches the client with 0x0101 as Peer's Call ID", peerOf(pptppeer.TypeSLI) == pptpClientCallID, fmt.Sprintf("%#04x", peerOf(pptppeer.TypeSLI))},
		{"the server's WEN reaches the client with 0x0101 as Peer's Call ID", peerOf(pptppeer.TypeWEN) == pptpClientCallID, fmt.Sprintf("%#04x", peerOf(pptppeer.TypeWEN))},
		{"the CDN reaches the client with 0x0101 instead of the server's own Call ID (the kernel departs from RFC 2637 here)",
			cdnID == pptpClientCallID, fmt.Sprintf("%#04x (server's own %#04x)", cdnID, tr.ServerCall.ID)},
		{"GRE from the client reaches the server, keyed with the server's Call ID",
			len(tr.ServerGRE) == pptpGREPackets && !slices.ContainsFunc(tr.ServerGRE, func(p pptppeer.GREPacket) bool { return p.CallID != tr.ServerCall.ID }),
			fmt.Sprint(tr.ServerGRE)},
		{"GRE from the server reaches the client's call, keyed 0x0101",
			len(tr.ClientGRE) == pptpGREPackets && !slices.ContainsFunc(tr.ClientGRE, func(p pptppeer.GREPacket) bool { return p.CallID != pptpClientCallID }),
			fmt.Sprint(tr.ClientGRE)},
		{"the transcript is consistent in itself", len(tr.problems()) == 0, strings.Join(tr.problems(), "; ")},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if !c.ok {
				t.Errorf("got %s", c.got)
			}
		})
	}

	t.Run("the transcript compared with itself shows no difference", func(t *testing.T) {
		if d := compareTranscripts(tr, tr); len(d) != 0 {
			t.Errorf("differences: %q", d)
		}
	})
	t.Run("a second run through another kernel NAT, with other translated values, shows no difference", func(t *testing.T) {
		again := kernelPPTPTranscript(t)
		if d := compareTranscripts(tr, again); len(d) != 0 {
			again.log(t, "second kernel")
			t.Errorf("differences: %q", d)
		}
	})
	t.Run("a transcript whose CDN carries the server's own Call ID differs from the kernel's exactly by the documented line", func(t *testing.T) {
		rfc := tr
		rfc.ClientGot = slices.Clone(tr.ClientGot)
		for i, m := range rfc.ClientGot {
			if m.Type == pptppeer.TypeCDN {
				rfc.ClientGot[i] = m.WithCallID(tr.ServerCall.ID)
			}
		}
		if d := compareTranscripts(tr, rfc); !slices.Equal(d, []string{pptpExpectedCDNDifference}) {
			t.Errorf("differences %q, want exactly %q", d, pptpExpectedCDNDifference)
		}
	})

	t.Run("tshark reads every control message alone at the start of its segment, with the Call IDs each side saw", func(t *testing.T) {
		for _, side := range []struct {
			name, path   string
			clientCallID uint16
		}{
			{"LAN", lanPcap, pptpClientCallID},
			{"WAN", wanPcap, tr.ServerCall.PeerID},
		} {
			frames, err := readPPTPFrames(side.path)
			if err != nil {
				t.Fatal(err)
			}
			var control []string
			var gre int
			for _, f := range frames {
				if len(f.Types) > 1 {
					t.Errorf("%s frame %d carries %d control messages, want 1", side.name, f.Frame, len(f.Types))
				}
				if len(f.Types) == 1 {
					ids := ""
					for _, id := range f.CallIDs {
						ids += fmt.Sprintf(" call=%#04x", id)
					}
					for _, id := range f.PeerIDs {
						ids += fmt.Sprintf(" peer=%#04x", id)
					}
					control = append(control, pptppeer.TypeName(uint16(f.Types[0]))+ids)
				}
				if f.GREKey >= 0 {
					gre++
				}
			}
			c, s := side.clientCallID, tr.ServerCall.ID
			// On the LAN the CDN carries the client's ID (kernel), on the
			// WAN the server's own.
			cdnID := s
			if side.name == "LAN" {
				cdnID = pptpClientCallID
			}
			want := []string{
				"SCCRQ", "SCCRP", "EchoRQ", "EchoRP",
				fmt.Sprintf("OCRQ call=%#04x", c), fmt.Sprintf("OCRP call=%#04x peer=%#04x", s, c),
				fmt.Sprintf("SLI peer=%#04x", c), fmt.Sprintf("WEN peer=%#04x", c),
				fmt.Sprintf("CCRQ call=%#04x", c), fmt.Sprintf("CDN call=%#04x", cdnID),
				"StopCCRQ", "StopCCRP",
			}
			if !slices.Equal(control, want) {
				t.Errorf("%s control messages:\n got %q\nwant %q", side.name, control, want)
			}
			if gre != 2*pptpGREPackets {
				t.Errorf("%s: %d GRE frames, want %d", side.name, gre, 2*pptpGREPackets)
			}
			broken, err := brokenPackets(side.path)
			if err != nil {
				t.Fatal(err)
			}
			if len(broken) > 0 {
				t.Errorf("%s: tshark finds broken frames: %s", side.name, strings.Join(broken, "\n"))
			}
		}
	})
}

// TestPPTPTranscriptComparisonNamesCallIDRolesNotValues checks
// compareTranscripts on made-up transcripts, without a lab: translated
// Call ID values alone are no difference, a Call ID of another role is.
func TestPPTPTranscriptComparisonNamesCallIDRolesNotValues(t *testing.T) {
	build := func(seen, server, cdnID uint16) pptpTranscript {
		tr := pptpTranscript{
			ServerCall: pptppeer.ServerCall{ID: server, PeerID: seen, Cleared: true},
			ClientTCP:  netip.MustParseAddrPort("192.168.77.10:40000"),
			ServerSaw:  netip.MustParseAddrPort("198.18.0.1:40000"),
			ClientGot: []pptppeer.Message{
				pptppeer.NewSCCRP(pptppeer.ResultOK), pptppeer.NewEchoReply(1, pptppeer.ResultOK),
				pptppeer.NewOCRP(server, pptpClientCallID, pptppeer.ResultOK), pptppeer.NewSLI(pptpClientCallID),
				pptppeer.NewWEN(pptpClientCallID), pptppeer.NewCDN(cdnID, pptppeer.ResultCDNRequest),
				pptppeer.NewStopCCRP(pptppeer.ResultOK),
			},
			ServerGot: []pptppeer.Message{
				pptppeer.NewSCCRQ(), pptppeer.NewEchoRequest(1), pptppeer.NewOCRQ(seen, 1),
				pptppeer.NewCCRQ(seen), pptppeer.NewStopCCRQ(pptppeer.StopReasonNone),
			},
		}
		for i := 1; i <= pptpGREPackets; i++ {
			payload := []byte(fmt.Sprintf("pptp script packet %d", i))
			tr.ServerGRE = append(tr.ServerGRE, pptppeer.GREPacket{From: lab.RouterWANAddr, CallID: server, Seq: uint32(i), HasSeq: true, Ack: uint32(i - 1), HasAck: i > 1, Payload: payload})
			tr.ClientGRE = append(tr.ClientGRE, pptppeer.GREPacket{From: lab.WANAddr, CallID: pptpClientCallID, Seq: uint32(i), HasSeq: true, Ack: uint32(i), HasAck: true, Payload: append([]byte("echo:"), payload...)})
		}
		return tr
	}
	kernel := build(40000, 0x5000, pptpClientCallID)
	tests := []struct {
		name    string
		vpnmasq pptpTranscript
		want    []string
	}{
		{"other translated Call ID values in the same roles are no difference",
			build(0x8001, 0x5000, pptpClientCallID), nil},
		{"an RFC 2637 CDN is exactly the documented difference",
			build(0x8001, 0x5000, 0x5000), []string{pptpExpectedCDNDifference}},
		{"a CDN with a foreign Call ID is a problem and a difference",
			build(0x8001, 0x5000, 0x0999), []string{
				"vpnmasq: the client's CDN carries 0x0999, neither the server's 0x5000 nor its own 0x0101",
				"client received CDN (#6) Call ID: kernel has the client's own Call ID, vpnmasq has an unknown Call ID",
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := compareTranscripts(kernel, tc.vpnmasq); !slices.Equal(got, tc.want) {
				t.Errorf("differences:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
	t.Run("a WEN that loses a counter and an OCRP peer left untranslated are both reported", func(t *testing.T) {
		v := build(0x8001, 0x5000, pptpClientCallID)
		v.ClientGot = slices.Clone(v.ClientGot)
		v.ClientGot[2] = v.ClientGot[2].WithPeerCallID(0x8001)
		wen := pptppeer.Message{Type: pptppeer.TypeWEN, Raw: bytes.Clone(v.ClientGot[4].Raw)}
		wen.Raw[39] = 0
		v.ClientGot[4] = wen
		got := compareTranscripts(kernel, v)
		want := []string{
			"vpnmasq: the client's OCRP carries Peer's Call ID 0x8001, want its own 0x0101",
			"client received OCRP (#3) Peer's Call ID: kernel has the client's own Call ID, vpnmasq has the client's Call ID as the server sees it",
			"client received #5: kernel " + kernel.ClientGot[4].Summary() + ", vpnmasq " + wen.Summary(),
		}
		if !slices.Equal(got, want) {
			t.Errorf("differences:\n got %q\nwant %q", got, want)
		}
	})
}

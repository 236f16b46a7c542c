package integration

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
	"github.com/vpnmasq/vpnmasq/internal/pptppeer"
)

// pptpConfig is the lab configuration with a short teardown grace, so that
// the tests see calls released.
const pptpConfig = labConfig + `
[pptp]
teardown_grace = "1s"
`

// TestPPTPScriptThroughVpnmasqMatchesTheKernelHelper is the differential
// test: the same scripted exchange through the kernel's PPTP helper and
// through vpnmasq gives each side the same message sequence with the same
// fields, up to the Call ID values and the one documented difference — the
// Call-Disconnect-Notify the client receives carries the server's own Call
// ID behind vpnmasq (RFC 2637 section 2.13) and the client's behind Linux.
func TestPPTPScriptThroughVpnmasqMatchesTheKernelHelper(t *testing.T) {
	kernel := kernelPPTPTranscript(t)
	kernel.log(t, "kernel")

	l := newLab(t, lab.Options{})
	r := startRouter(t, l, pptpConfig)
	wanCap := startPcapCapture(t, l.Router, lab.RouterWANIf, "pptp-diff-wan")
	lanCap := startPcapCapture(t, l.Router, lab.RouterLANIf, "pptp-diff-lan")
	tr := runPPTPScript(t, l)
	tr.log(t, "vpnmasq")
	pcaps := []string{lanCap.stop(), wanCap.stop()}

	t.Run("each side receives what it receives behind the kernel's helper, but for the CDN's Call ID", func(t *testing.T) {
		if d := compareTranscripts(kernel, tr); !slices.Equal(d, []string{pptpExpectedCDNDifference}) {
			t.Errorf("differences:\n  %s\nwant exactly:\n  %s", strings.Join(d, "\n  "), pptpExpectedCDNDifference)
		}
	})
	t.Run("the server sees a masqueraded Call ID and the client gets its own back", func(t *testing.T) {
		ocrp, _ := firstOf(tr.ClientGot, pptppeer.TypeOCRP)
		peer, _ := ocrp.PeerCallID()
		if tr.ServerCall.PeerID == pptpClientCallID || peer != pptpClientCallID {
			t.Errorf("server saw %#04x, client got %#04x back", tr.ServerCall.PeerID, peer)
		}
	})
	t.Run("the CDN reaches the client with the server's own Call ID", func(t *testing.T) {
		cdn, _ := firstOf(tr.ClientGot, pptppeer.TypeCDN)
		if id, _ := cdn.CallID(); id != tr.ServerCall.ID {
			t.Errorf("CDN Call ID %#04x, server's own %#04x", id, tr.ServerCall.ID)
		}
	})
	t.Run("tshark finds nothing malformed on either side", func(t *testing.T) {
		checkPPTPCaptures(t, pcaps...)
	})
	t.Run("the call is released after the teardown grace", func(t *testing.T) {
		waitReleased(t, r, 1)
	})
}

// tcpRetransmissionNotes are tshark's expert notes about a TCP segment sent
// twice. On a busy machine a peer's retransmission timer can fire before
// the ACK arrives; the copy crossing the router is not a broken packet (the
// unit tests check a retransmission is rewritten exactly like the original).
var tcpRetransmissionNotes = []string{
	"D-SACK Sequence",
	"This frame is a (suspected) retransmission",
	"This frame is a (suspected) spurious retransmission",
	"This frame is a (suspected) fast retransmission",
}

// checkPPTPCaptures runs tshark over captures and requires every packet to
// decode without malformed marks or expert warnings.
func checkPPTPCaptures(t *testing.T, pcaps ...string) {
	t.Helper()
	for _, pcap := range pcaps {
		broken, err := brokenPackets(pcap, tcpRetransmissionNotes...)
		if err != nil {
			t.Fatal(err)
		}
		if len(broken) > 0 {
			t.Errorf("%s:\n  %s", pcap, strings.Join(broken, "\n  "))
		}
		frames, err := readPPTPFrames(pcap)
		if err != nil {
			t.Fatal(err)
		}
		if len(frames) == 0 {
			t.Errorf("%s: no PPTP control message captured", pcap)
		}
	}
}

// waitReleased waits for n "pptp call released" lines in the router log.
func waitReleased(t *testing.T, r *router, n int) []logLine {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		released := r.log.find("pptp call released")
		if len(released) >= n {
			return released
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d calls released after 10s", len(released), n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pptpCallLines asks the router for its tables (SIGUSR1) and returns the
// "pptp call" lines of that dump.
func pptpCallLines(t *testing.T, r *router) []logLine {
	t.Helper()
	from := r.log.len()
	if _, err := r.natMappings(); err != nil {
		t.Fatal(err)
	}
	lines, _, _ := r.log.since(from)
	var calls []logLine
	for _, l := range lines {
		if l.Message() == "pptp call" {
			calls = append(calls, l)
		}
	}
	return calls
}

// pptpClient is a scripted client with its calls, for the multi-client tests.
type pptpClient struct {
	name  string
	addr  netip.Addr
	c     *pptppeer.Client
	calls []*pptppeer.Call
}

// exchangeGRE sends n GRE packets on every call and checks that each call
// gets back exactly the server's echoes of its own packets.
func (pc *pptpClient) exchangeGRE(t *testing.T, n int) {
	t.Helper()
	for _, call := range pc.calls {
		for i := range n {
			payload := fmt.Sprintf("%s call %d packet %d", pc.name, call.ID, i)
			if err := call.SendGRE([]byte(payload)); err != nil {
				t.Fatal(err)
			}
			p, err := call.ReceiveGRE(time.Now().Add(5 * time.Second))
			if err != nil {
				t.Errorf("%s call %d: %v (strays %v)", pc.name, call.ID, err, pc.c.Strays())
				continue
			}
			if string(p.Payload) != pptppeer.EchoPrefix+payload || p.CallID != call.ID {
				t.Errorf("%s call %d got %q keyed %d", pc.name, call.ID, p.Payload, p.CallID)
			}
		}
	}
	if s := pc.c.Strays(); len(s) > 0 {
		t.Errorf("%s received GRE for calls it does not have: %v", pc.name, s)
	}
}

func TestPPTPTwoClientsWithTwoCallsEachToOneServer(t *testing.T) {
	const lan2Port = 25002
	l := newLab(t, lab.Options{})
	r := startRouter(t, l, pptpConfig)
	wanCap := startPcapCapture(t, l.Router, lab.RouterWANIf, "pptp-two-wan")
	lanCap := startPcapCapture(t, l.Router, lab.RouterLANIf, "pptp-two-lan")
	srv, err := pptppeer.StartServer(l.WAN, lab.WANAddr, pptppeer.SendWANErrorNotify())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })

	// Both clients choose the same Call IDs, 1 and 2: only masquerading
	// tells their calls apart at the server.
	clients := []*pptpClient{{name: "lan1", addr: lab.LAN1Addr}, {name: "lan2", addr: lab.LAN2Addr}}
	for i, pc := range clients {
		ns := []*lab.NS{l.LAN1, l.LAN2}[i]
		var opts []pptppeer.Option
		if i == 1 {
			opts = append(opts, pptppeer.LocalPort(lan2Port))
		}
		if pc.c, err = pptppeer.Dial(ns, pc.addr, lab.WANAddr, 5*time.Second, opts...); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.c.Abort() })
		for _, id := range []uint16{1, 2} {
			call, err := pc.c.Call(id)
			if err != nil {
				t.Fatalf("%s: %v", pc.name, err)
			}
			pc.calls = append(pc.calls, call)
		}
	}
	if err := srv.WaitConns(2, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	t.Run("the server sees four distinct Call IDs from the router's address", func(t *testing.T) {
		seen := map[uint16]bool{}
		for _, conn := range srv.Conns() {
			if conn.Remote.Addr() != lab.RouterWANAddr {
				t.Errorf("control connection from %s", conn.Remote)
			}
			for _, call := range conn.Calls {
				seen[call.PeerID] = true
			}
		}
		if len(seen) != 4 {
			t.Errorf("Call IDs at the server: %v", seen)
		}
	})
	t.Run("each client receives the Peer's Call IDs of its own calls", func(t *testing.T) {
		for _, pc := range clients {
			for _, m := range pc.c.Received() {
				if peer, ok := m.PeerCallID(); ok && peer != 1 && peer != 2 {
					t.Errorf("%s received %s", pc.name, m)
				}
			}
		}
	})
	t.Run("GRE both ways reaches the right call of the right client", func(t *testing.T) {
		for _, pc := range clients {
			pc.exchangeGRE(t, 3)
		}
	})
	t.Run("an incoming call placed by the server reaches its client with the client's Call ID", func(t *testing.T) {
		// The server places a call on lan2's connection (lan2 dialled
		// from port 25002, inside the NAT range, which the router keeps);
		// lan2 answers with Call ID 3, which the server must see
		// masqueraded, and the server's ICCN must reach lan2 with 3.
		conn := slices.IndexFunc(srv.Conns(), func(c pptppeer.ServerConn) bool { return c.Remote.Port() == lan2Port })
		if conn < 0 {
			t.Fatalf("no control connection from port %d: %+v", lan2Port, srv.Conns())
		}
		done := make(chan error, 1)
		var in *pptppeer.Call
		go func() {
			var err error
			in, err = clients[1].c.AcceptIncoming(3)
			done <- err
		}()
		placed, err := srv.PlaceIncomingCall(conn, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("lan2 accepting: %v (server placed %+v)", err, placed)
		}
		if placed.PeerID == 3 || placed.PeerID == 0 {
			t.Errorf("server saw the incoming call's Call ID as %d", placed.PeerID)
		}
		clients[1].calls = append(clients[1].calls, in)
		clients[1].exchangeGRE(t, 2)
	})
	t.Run("the router lists every call with its original and masqueraded Call IDs", func(t *testing.T) {
		lines := pptpCallLines(t, r)
		if len(lines) != 5 {
			t.Fatalf("%d calls listed: %v", len(lines), lines)
		}
		masq := map[string]bool{}
		for _, ln := range lines {
			masq[ln.Str("masq_call_id")] = true
			if ln.Str("state") != "established" || ln.Str("gre_in") == "0" || ln.Str("gre_out") == "0" {
				t.Errorf("call line %s", ln.Raw)
			}
		}
		if len(masq) != 5 {
			t.Errorf("masqueraded Call IDs %v, want 5 distinct", masq)
		}
	})
	t.Run("clearing the calls and stopping the connections frees every GRE mapping", func(t *testing.T) {
		for _, pc := range clients {
			for _, call := range pc.calls {
				if err := call.Clear(); err != nil {
					t.Errorf("%s clearing call %d: %v", pc.name, call.ID, err)
				}
			}
			if err := pc.c.Close(); err != nil {
				t.Errorf("%s stopping: %v", pc.name, err)
			}
		}
		waitReleased(t, r, 5)
		if lines := pptpCallLines(t, r); len(lines) != 0 {
			t.Errorf("calls left: %v", lines)
		}
	})
	pcaps := []string{lanCap.stop(), wanCap.stop()}
	t.Run("tshark decodes every packet on both sides without malformed marks", func(t *testing.T) {
		checkPPTPCaptures(t, pcaps...)
	})
}

// TestPPTPServerBehindTheRouter forwards TCP 1723 and GRE to a PPTP server
// on lan1 and connects two outside clients at once.
func TestPPTPServerBehindTheRouter(t *testing.T) {
	l := newLab(t, lab.Options{})
	startRouter(t, l, labConfig+`
[[forward]]
proto = "tcp"
port = 1723
to = "192.168.77.10:1723"

[[forward]]
proto = "gre"
to = "192.168.77.10"
`)
	second := netip.MustParseAddr("198.18.0.3")
	if err := l.WAN.AddAddress("eth0", netip.PrefixFrom(second, 24)); err != nil {
		t.Fatal(err)
	}
	srv, err := pptppeer.StartServer(l.LAN1, lab.LAN1Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	var clients []*pptpClient
	for i, addr := range []netip.Addr{lab.WANAddr, second} {
		c, err := pptppeer.Dial(l.WAN, addr, lab.RouterWANAddr, 5*time.Second)
		if err != nil {
			t.Fatalf("outside client %s: %v", addr, err)
		}
		t.Cleanup(func() { c.Abort() })
		call, err := c.Call(uint16(0x10 + i))
		if err != nil {
			t.Fatalf("outside client %s: %v", addr, err)
		}
		clients = append(clients, &pptpClient{name: addr.String(), addr: addr, c: c, calls: []*pptppeer.Call{call}})
	}
	t.Run("the server sees both outside clients by their own addresses", func(t *testing.T) {
		var remotes []netip.Addr
		for _, conn := range srv.Conns() {
			remotes = append(remotes, conn.Remote.Addr())
		}
		slices.SortFunc(remotes, netip.Addr.Compare)
		if !slices.Equal(remotes, []netip.Addr{lab.WANAddr, second}) {
			t.Errorf("control connections from %v", remotes)
		}
	})
	t.Run("GRE both ways reaches each outside client's call", func(t *testing.T) {
		for _, pc := range clients {
			pc.exchangeGRE(t, 3)
		}
	})
	t.Run("the server's GRE leaves from the router's address", func(t *testing.T) {
		for _, p := range srv.GREReceived() {
			if p.From != lab.WANAddr && p.From != second {
				t.Errorf("server got GRE from %v", p.From)
			}
		}
		for _, pc := range clients {
			for _, call := range pc.calls {
				for _, p := range call.GREReceived() {
					if p.From != lab.RouterWANAddr {
						t.Errorf("%s got GRE from %v", pc.name, p.From)
					}
				}
			}
		}
	})
	for _, pc := range clients {
		if err := pc.c.Close(); err != nil {
			t.Errorf("%s stopping: %v", pc.name, err)
		}
	}
}

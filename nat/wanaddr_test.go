package nat

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

var newWAN = netip.MustParseAddr("198.18.0.5")

func TestSetWANAddr(t *testing.T) {
	fwd := Forward{Proto: ProtoTCP, Ports: PortRange{First: 8080, Last: 8080}, To: lanB, ToPort: 80}
	// busy is an engine with UDP, TCP and ICMP mappings of two hosts and a
	// forwarded connection, all on the old address.
	busy := func(t *testing.T) (*lab, uint16) {
		l := newLab(t, Config{Forwards: []Forward{fwd}})
		p := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN)
		l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, p.SrcPort), "a"), VerdictToLAN)
		l.mustOut(tcpPkt(ap(lanA, 40000), ap(remote1, 443), syn), VerdictToWAN)
		l.mustOut(echoPkt(header.ICMPv4Echo, lanB, remote2, 7, 1), VerdictToWAN)
		l.mustIn(tcpPkt(ap(remote2, 50000), ap(wanAddr, 8080), syn), VerdictToLAN)
		return l, p.SrcPort
	}

	t.Run("new flows leave from the new address", func(t *testing.T) {
		l, _ := busy(t)
		l.e.SetWANAddr(newWAN)
		if got := netip.AddrFrom4(l.e.WANAddr()); got != newWAN {
			t.Fatalf("WANAddr() = %v, want %v", got, newWAN)
		}
		for _, b := range [][]byte{
			udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"),
			tcpPkt(ap(lanA, 40001), ap(remote1, 443), syn),
			echoPkt(header.ICMPv4Echo, lanB, remote2, 8, 1),
			grePkt(lanA, remote1, 0x4242, nil),
		} {
			if p := l.mustOut(b, VerdictToWAN); p.SrcAddr() != newWAN {
				t.Errorf("proto %d left from %v, want %v", p.Proto, p.SrcAddr(), newWAN)
			}
		}
	})
	t.Run("the old mappings are gone and their port answers no more", func(t *testing.T) {
		l, ext := busy(t)
		if n := l.e.SetWANAddr(newWAN); n != 3 {
			t.Errorf("SetWANAddr dropped %d mappings, want 3 (udp, tcp, icmp)", n)
		}
		if ms := l.e.Mappings(); len(ms) != 0 {
			t.Errorf("mappings left after the change: %+v", ms)
		}
		// The remote's answer, to the new address on the old port, finds
		// nothing; to the old address it is not for this router anymore.
		r, _ := l.in(udpPkt(ap(remote1, 53), ap(newWAN, ext), "a"))
		if r.Verdict != VerdictDrop {
			t.Errorf("an answer on the dropped mapping got through: %v", verdictName(r.Verdict))
		}
	})
	t.Run("a forward stays and answers on the new address", func(t *testing.T) {
		l, _ := busy(t)
		l.e.SetWANAddr(newWAN)
		client := ap(remote2, 50001)
		p := l.mustIn(tcpPkt(client, ap(newWAN, 8080), syn), VerdictToLAN)
		if dstAP(p) != ap(lanB, 80) {
			t.Fatalf("forwarded to %v, want %v", dstAP(p), ap(lanB, 80))
		}
		r := l.mustOut(tcpPkt(ap(lanB, 80), client, synAck), VerdictToWAN)
		if srcAP(r) != ap(newWAN, 8080) {
			t.Errorf("forward's reply left from %v, want %v", srcAP(r), ap(newWAN, 8080))
		}
	})
	t.Run("the forward's old flows are dropped with the dynamic ones", func(t *testing.T) {
		l, _ := busy(t)
		l.e.SetWANAddr(newWAN)
		// The forwarded connection's remote spoke to the old address: its
		// next segment is no longer part of a flow.
		r, _ := l.in(tcpPkt(ap(remote2, 50000), ap(newWAN, 8080), ack))
		wantDrop(t, r, DropUnsolicited)
	})
	t.Run("counts and per-host accounting go to zero", func(t *testing.T) {
		l, _ := busy(t)
		l.e.SetWANAddr(newWAN)
		s := l.e.Stats()
		if s.Flows != 0 || len(s.Mappings) != 0 || s.PortsInUse["udp"] != 0 || s.PortsInUse["tcp"] != 0 || s.PortsInUse["icmp"] != 0 {
			t.Errorf("stats after the change: flows %d mappings %v ports %v", s.Flows, s.Mappings, s.PortsInUse)
		}
		for _, fc := range s.FlowsByState {
			if fc.Flows != 0 {
				t.Errorf("%s %s flows: %d", fc.Proto, fc.State, fc.Flows)
			}
		}
		for _, h := range s.Hosts {
			if h.Flows != 0 || h.Mappings != 0 {
				t.Errorf("host %v still holds %d flows, %d mappings", h.Host, h.Flows, h.Mappings)
			}
		}
		if n := len(l.e.table.hostLists); n != 0 || l.e.table.expendable.head != nil {
			t.Errorf("expendable lists not empty: %d hosts", n)
		}
		if n := len(l.e.table.byRemote); n != 0 {
			t.Errorf("%d remote-address entries left", n)
		}
		// The sweep after it finds nothing wrong on the timer wheel.
		l.advance(3 * 60 * 60 * 1e9)
		if s := l.e.Stats(); s.Flows != 0 {
			t.Errorf("flows after a sweep: %d", s.Flows)
		}
	})
	t.Run("the counters and the log line say what was dropped", func(t *testing.T) {
		var buf bytes.Buffer
		l := newLab(t, Config{Log: zerolog.New(&buf)})
		l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN)
		l.mustOut(udpPkt(ap(lanA, 5001), ap(remote1, 53), "q"), VerdictToWAN)
		l.e.SetWANAddr(newWAN)
		if c := l.e.WANChanges.Changes.Load(); c != 1 {
			t.Errorf("changes %d, want 1", c)
		}
		if m := l.e.WANChanges.MappingsDropped.Load(); m != 2 {
			t.Errorf("mappings dropped %d, want 2", m)
		}
		for _, want := range []string{`"old":"198.18.0.1"`, `"new":"198.18.0.5"`, `"mappings":2`, "WAN address changed"} {
			if !bytes.Contains(buf.Bytes(), []byte(want)) {
				t.Errorf("log %q lacks %s", buf.String(), want)
			}
		}
	})
	t.Run("setting the same address changes nothing", func(t *testing.T) {
		l, _ := busy(t)
		if n := l.e.SetWANAddr(wanAddr); n != 0 {
			t.Errorf("dropped %d", n)
		}
		if len(l.e.Mappings()) != 4 || l.e.WANChanges.Changes.Load() != 0 {
			t.Errorf("state changed: %d mappings, %d changes", len(l.e.Mappings()), l.e.WANChanges.Changes.Load())
		}
	})
	t.Run("the old mappings' ports are free again", func(t *testing.T) {
		l, ext := busy(t)
		l.e.SetWANAddr(newWAN)
		p := l.mustOut(udpPkt(ap(lanB, ext), ap(remote1, 53), "q"), VerdictToWAN)
		if p.SrcPort != ext {
			t.Errorf("port %d, want %d: the old mapping still holds it", p.SrcPort, ext)
		}
	})
	t.Run("IPsec state bound to the old address is gone", func(t *testing.T) {
		l := newLab(t, Config{})
		l.ikeExchange(lanA, remote1, 0x1111)
		l.espPairSPIs(lanA, remote1, 0xa1, 0xb1)
		l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), 0x1111, 0x1111^0xffff), VerdictToWAN)
		if len(l.e.ike.natt) == 0 {
			t.Fatal("no NAT-T flow before the change")
		}
		if len(l.e.ESPPairs()) == 0 {
			t.Fatal("no ESP pair before the change")
		}
		l.e.SetWANAddr(newWAN)
		if n := len(l.e.ESPPairs()); n != 0 {
			t.Errorf("%d ESP pairs left", n)
		}
		if len(l.e.ike.byI)+len(l.e.ike.byR)+len(l.e.ike.natt)+len(l.e.ike.lastIKE) != 0 {
			t.Errorf("IKE state left: %d sessions, %d NAT-T flows", len(l.e.ike.byI), len(l.e.ike.natt))
		}
		if u := l.e.hosts.m[lanA.As4()]; u != nil && !u.empty() {
			t.Errorf("lanA still holds %v", u.held)
		}
		// The remote's ESP, to the new address, belongs to no one now.
		r, _ := l.in(espPkt(remote1, newWAN, 0xb1, espTestSeq.Add(1)))
		if r.Verdict != VerdictDrop {
			t.Errorf("ESP on the old SA delivered: %s", verdictName(r.Verdict))
		}
		// The host starts over from the new address.
		if p := l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), 0x2222, 0), VerdictToWAN); p.SrcAddr() != newWAN {
			t.Errorf("IKE left from %v", p.SrcAddr())
		}
	})
	t.Run("PPTP connections and calls bound to the old address are gone", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		c.fromClient(pptpMsg(PPTPOutgoingCallRequest, 0x0101, 0))
		if len(s.e.PPTPCalls()) != 1 {
			t.Fatal("no call before the change")
		}
		l := s.lab
		l.mustOut(greV0Pkt(lanB, remote2, []byte("x")), VerdictToWAN)
		l.e.SetWANAddr(newWAN)
		if n := len(l.e.PPTPCalls()); n != 0 {
			t.Errorf("%d calls left", n)
		}
		if len(l.e.pptp.conns)+len(l.e.pptp.calls)+len(l.e.pptp.byPeer)+len(l.e.pptp.byOrig)+len(l.e.pptp.perServer) != 0 {
			t.Error("PPTP indexes not empty")
		}
		if n := len(l.e.gre.bindings); n != 0 {
			t.Errorf("%d GRE bindings left", n)
		}
		if len(l.e.hosts.m) != 0 {
			for h, u := range l.e.hosts.m {
				if !u.empty() {
					t.Errorf("host %v still holds %v", netip.AddrFrom4(h), u.held)
				}
			}
		}
	})
}

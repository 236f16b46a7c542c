package nat

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

func TestSeqHealthEstimatesLossAndReordering(t *testing.T) {
	const none = ^uint32(0) // an unnumbered packet (a GRE acknowledgement)
	for _, tc := range []struct {
		name       string
		seqs       []uint32
		lost, late uint64
	}{
		{"packets in order lose nothing", []uint32{1, 2, 3, 4, 5}, 0, 0},
		{"a gap is loss", []uint32{1, 2, 5, 6}, 2, 0},
		{"a late packet fills its gap and counts as late, not lost", []uint32{1, 2, 4, 3, 5}, 0, 1},
		{"a repeated packet is late", []uint32{1, 2, 2, 3}, 0, 1},
		{"the count starts at the first number seen", []uint32{1000, 1001, 1003}, 1, 0},
		{"numbers wrap around 2^32 as a step forward", []uint32{0xfffffffe, 0, 1, 3}, 2, 0},
		{"unnumbered packets neither fill gaps nor count late", []uint32{1, none, none, 4}, 2, 0},
		{"only unnumbered packets: nothing to estimate", []uint32{none, none}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s seqHealth
			for i, seq := range tc.seqs {
				s.note(seq, seq != none, 100, int64(i))
			}
			h := s.snapshot(int64(len(tc.seqs)) + 9)
			if h.Lost != tc.lost || h.Late != tc.late || h.Packets != uint64(len(tc.seqs)) || h.Bytes != 100*uint64(len(tc.seqs)) {
				t.Fatalf("got %+v, want lost %d late %d", h, tc.lost, tc.late)
			}
			if h.Idle != 10 {
				t.Errorf("idle %v since the last packet, want 10ns", h.Idle)
			}
		})
	}
}

func TestESPPairsShowTheirHealthEachWay(t *testing.T) {
	l := newLab(t, Config{})
	first := espTestSeq.Load() + 1 // the remote's first packet in espPairSPIs
	l.espPairSPIs(lanA, remote1, 0xa1, 0xb1)
	// Outbound: after packet 1, which made the pair, 2, 3, 5, then 4 late.
	for _, seq := range []uint32{2, 3, 5, 4} {
		l.mustOut(espPkt(lanA, remote1, 0xa1, seq), VerdictToWAN)
	}
	// Inbound: the remote skips two numbers after the ones espPairSPIs sent.
	base := espTestSeq.Add(10)
	for _, seq := range []uint32{base, base + 3} {
		l.mustIn(espPkt(remote1, wanAddr, 0xb1, seq), VerdictToLAN)
	}
	pr, ok := l.pairOf(lanA, 0xa1, 0)
	if !ok {
		t.Fatal("no pair")
	}
	t.Run("outbound: five packets from the first, none lost, one late", func(t *testing.T) {
		if pr.Out.Packets != 5 || pr.Out.Lost != 0 || pr.Out.Late != 1 || !pr.Out.Sequenced {
			t.Fatalf("%+v", pr.Out)
		}
	})
	t.Run("inbound: from the candidate's first packet on, every number skipped is lost", func(t *testing.T) {
		// first and first+1 (the candidate and its confirmation), then
		// base and base+3: four of the numbers first..base+3.
		want := uint64(base+3-first+1) - 4
		if pr.In.Packets != 4 || pr.In.Lost != want || pr.In.Late != 0 {
			t.Fatalf("%+v, want 4 packets and %d lost", pr.In, want)
		}
	})
}

// greSeqPkt is enhanced GRE with sequence number seq, or with only an
// acknowledgement when ackOnly is set.
func greSeqPkt(src, dst netip.Addr, callID uint16, seq uint32, ackOnly bool) []byte {
	b := make([]byte, 12, 40)
	flags := uint16(greFlagKey | greFlagSeq | 1)
	if ackOnly {
		flags = greFlagKey | greFlagAck | 1
	}
	binary.BigEndian.PutUint16(b[0:], flags)
	binary.BigEndian.PutUint16(b[2:], GREProtoPPP)
	binary.BigEndian.PutUint16(b[6:], callID)
	binary.BigEndian.PutUint32(b[8:], seq)
	if !ackOnly {
		b = append(b, "ppp frame"...)
		binary.BigEndian.PutUint16(b[4:], uint16(len(b)-12))
	}
	return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: ProtoGRE, ID: uint16(seq)}, b)
}

func TestPPTPCallsShowTheirHealthEachWay(t *testing.T) {
	s := newPPTPLab(t, Config{})
	c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
	masq := c.setUpCall(7, 0x100)
	for _, seq := range []uint32{1, 2, 4} {
		s.mustOut(greSeqPkt(lanA, remote1, 0x100, seq, false), VerdictToWAN)
	}
	s.mustOut(greSeqPkt(lanA, remote1, 0x100, 0, true), VerdictToWAN)
	for _, seq := range []uint32{10, 12, 11} {
		s.mustIn(greSeqPkt(remote1, wanAddr, masq, seq, false), VerdictToLAN)
	}
	call, ok := s.call(lanA, 7)
	if !ok {
		t.Fatal("no call")
	}
	t.Run("client to server: one number skipped, the acknowledgement counted but not numbered", func(t *testing.T) {
		if call.Out.Packets != 4 || call.Out.Lost != 1 || call.Out.Late != 0 {
			t.Fatalf("%+v", call.Out)
		}
	})
	t.Run("server to client: a late packet, nothing lost", func(t *testing.T) {
		if call.In.Packets != 3 || call.In.Lost != 0 || call.In.Late != 1 {
			t.Fatalf("%+v", call.In)
		}
	})
}

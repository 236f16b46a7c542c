// Package datapath is vpnmasq's packet path: the routing decision for each
// packet, the ICMP errors and fragments the router makes itself, and the two
// loops that move packets between the TUN device (the LAN side) and the WAN
// transport. It makes no system calls: the transports behind the TUN and WAN
// interfaces (transport.go) do the I/O, the NAT engine (package nat) does
// the translation.
//
// This file is the path in packet order. From the LAN to the WAN (RunLAN):
//
//  1. Read a batch from the TUN: wire packets, or TCP and UDP super-packets
//     whole with their virtio-net header when the device offers them.
//  2. fromTUN: send a super-packet whole (sendSuperPacket) when nothing
//     about it needs work per segment; else split it into wire packets
//     (offload.Split) or complete a checksum left to offload.
//  3. fromLAN: parse each packet once into a nat.Packet and decide its
//     route (routeLAN): drop, the services, another LAN, a no-NAT network,
//     or masquerade.
//  4. routeOut: answer a too-big packet with DF set with Fragmentation
//     Needed; translate (nat.Engine.Outbound, or track a no-NAT flow); a
//     hairpin goes back to the LAN.
//  5. sendWAN: queue the packet in the pass's outbox, fragmented when it is
//     too big for the WAN MTU.
//  6. flushReleased: queue the fragments the engine held until their first
//     fragment passed, then flush: one batched write per side, ordinary
//     packets to WAN.Write, super-packets to WriteSuperPackets.
//
// From the WAN to the LAN (RunWAN):
//
//  1. Read a batch from the WAN transport (its kernel filter passes only
//     packets for the WAN address on NAT-owned ports and protocols, and
//     packets for the LAN prefixes).
//  2. fromWAN: parse once; drop martians and spoofed LAN sources; admit
//     traffic for a LAN address only as return traffic of a no-NAT flow;
//     translate the rest (nat.Engine.Inbound); answer a packet that would
//     expire on the way to the LAN with Time Exceeded.
//  3. deliverLAN: queue it for the TUN (a super-packet whole).
//  4. flushReleased, as above: the batch goes into the TUN, and the kernel
//     forwards it to the LAN host.
package datapath

import (
	"errors"
	"fmt"
	"iter"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/offload"
)

// Devices are the transports the loops move packets between.
type Devices struct {
	TUN TUN
	WAN WAN
	// Closed reports whether an I/O error only means that the devices are
	// being closed: the loops then return nil.
	Closed func(error) bool
}

// devices is Devices with the optional capabilities resolved once.
type devices struct {
	Devices
	// superTUN is set when the TUN moves super-packets whole.
	superTUN SuperPacketTUN
	// superWAN is set when super-packets read from the TUN can leave
	// whole: the TUN gives them and the WAN sends them.
	superWAN SuperPacketWAN
}

// Attach gives the path its transports; call it once, before the loops.
func (p *Path) Attach(d Devices) {
	p.dev = devices{Devices: d}
	if s, ok := d.TUN.(SuperPacketTUN); ok && s.SuperPackets() {
		p.dev.superTUN = s
	}
	if s, ok := d.WAN.(SuperPacketWAN); ok && s.SendsSuperPackets() && p.dev.superTUN != nil {
		p.dev.superWAN = s
	}
	p.log.Debug().Bool("tun_super_packets", p.dev.superTUN != nil).Bool("wan_sends_super_packets", p.dev.superWAN != nil).Msg("data path")
}

// RunLAN moves packets from the TUN to the WAN until the devices close.
func (p *Path) RunLAN() error {
	batch := p.dev.TUN.BatchSize()
	bufs, sizes := newBuffers(batch)
	hdrs := make([]offload.Header, batch) // stay zero without super-packets
	o := newOutbox(batch, 2*batch, max(p.wanMTU, maxICMPErrorLen))
	segs := &offload.Segments{Headroom: Headroom}
	released := &offload.Segments{Headroom: Headroom}
	var pk nat.Packet
	for {
		var n int
		var err error
		if p.dev.superTUN != nil {
			n, err = p.dev.superTUN.ReadSuperPackets(bufs, sizes, hdrs, Headroom)
		} else {
			n, err = p.dev.TUN.Read(bufs, sizes, Headroom)
		}
		if err != nil {
			if p.dev.Closed(err) {
				return nil
			}
			if !errors.Is(err, ErrDropped) {
				return fmt.Errorf("reading TUN: %w", err)
			}
			p.log.Debug().Err(err).Msg("tun read")
		}
		o.reset()
		segs.Reset()
		for i := range n {
			p.fromTUN(bufs[i], sizes[i], hdrs[i], &pk, o, segs)
		}
		p.flushReleased(o, released, &pk, true, batch)
	}
}

// fromTUN handles one packet read from the TUN, buf[Headroom:Headroom+n],
// described by h.
func (p *Path) fromTUN(buf []byte, n int, h offload.Header, pk *nat.Packet, o *outbox, segs *offload.Segments) {
	pkt := buf[Headroom : Headroom+n]
	switch {
	case h.IsSuperPacket():
		if p.dev.superWAN != nil && p.sendSuperPacket(buf, n, h, pk, o) {
			return
		}
		from := len(segs.Out)
		first, _, err := offload.Split(pkt, h, segs.Next)
		if err != nil {
			p.drop(nat.DropMalformed)
			return
		}
		p.fromLAN(buf, first, pk, o)
		for _, seg := range segs.Out[from:] {
			p.fromLAN(seg, len(seg)-Headroom, pk, o)
		}
	case h.NeedsChecksum():
		if len(pkt) < header.IPv4MinimumSize {
			p.drop(nat.DropMalformed)
			return
		}
		if err := offload.CompleteChecksum(pkt, int(h.CsumStart), int(h.CsumOffset), header.IPv4(pkt).Protocol()); err != nil {
			p.drop(nat.DropMalformed)
			return
		}
		p.fromLAN(buf, n, pk, o)
	default:
		p.fromLAN(buf, n, pk, o)
	}
}

// sendSuperPacket translates and queues a TCP or UDP super-packet for the
// WAN whole, or reports false when it must be split: its checksum is not a
// partial one, a NAT helper reads its payload packet by packet
// (offload.Whole: PPTP control, IKE, NAT-T), its destination is not out on
// the WAN (local, service, hairpin), or its segments would not fit the WAN
// MTU (the segments then get Fragmentation Needed, or fragmentation, one by
// one).
func (p *Path) sendSuperPacket(buf []byte, n int, h offload.Header, pk *nat.Packet, o *outbox) bool {
	var proto uint8
	var csumOffset uint16
	switch {
	case h.IsTCPv4():
		proto, csumOffset = nat.ProtoTCP, header.TCPChecksumOffset
	case h.IsUDP():
		proto, csumOffset = nat.ProtoUDP, offload.UDPChecksumOffset
	default:
		return false
	}
	if !h.NeedsChecksum() || h.GSOSize == 0 {
		return false
	}
	if pk.Parse(buf[Headroom:Headroom+n]) != nat.DropNone || pk.Proto != proto || pk.IsFragment() {
		return false
	}
	ihl := int(pk.IP.HeaderLength())
	if int(h.CsumStart) != ihl || h.CsumOffset != csumOffset || !offload.Whole(pk.Buf, ihl, proto) {
		return false
	}
	route := p.routeLAN(pk)
	if (route != routeMasquerade && route != routeNoNAT) || pk.Dst == p.wan() {
		return false // local, service or hairpin: per segment
	}
	l4Len := header.UDPMinimumSize
	if proto == nat.ProtoTCP {
		l4Len = int(header.TCP(pk.L4).DataOffset())
	}
	if ihl+l4Len+int(h.GSOSize) > p.wanMTU {
		return false
	}
	pk.PartialChecksum = true
	if p.translateOut(buf, pk, o, route) {
		p.stats.Traffic[LANToWAN][pk.Proto].addSuper(len(pk.Buf))
		o.toWANSuper(buf, len(pk.Buf), h)
	}
	return true
}

// fromLAN handles one wire packet from the LAN, buf[Headroom:Headroom+n].
func (p *Path) fromLAN(buf []byte, n int, pk *nat.Packet, o *outbox) {
	if r := pk.Parse(buf[Headroom : Headroom+n]); r != nat.DropNone {
		p.drop(r)
		return
	}
	switch route := p.routeLAN(pk); route {
	case routeMartian:
		p.drop(nat.DropMartian)
	case routeService:
		if p.local == nil {
			p.drop(nat.DropNoService)
			return
		}
		p.stats.ServicePackets.Add(1)
		p.local(pk.Buf)
	case routeLocal:
		// Between LAN interfaces: route unchanged.
		p.stats.LocalPackets.Add(1)
		o.toLAN(buf, len(pk.Buf))
	case routeNoNAT, routeMasquerade:
		p.routeOut(buf, pk, o, route)
	}
}

// route is what the path does with a packet from the LAN.
type route uint8

const (
	routeMartian    route = iota // drop: cannot be routed, or not from a LAN prefix
	routeService                 // to the service address (the netstack)
	routeLocal                   // to another LAN prefix: routed unchanged
	routeNoNAT                   // to a no-NAT network: routed out unchanged
	routeMasquerade              // everything else: masqueraded out
)

// routeLAN decides a LAN packet's way, for wire packets and super-packets
// alike.
func (p *Path) routeLAN(pk *nat.Packet) route {
	switch {
	case isMartian(pk.Src) || isMartian(pk.Dst):
		return routeMartian
	case !p.lan.contains(pk.Src):
		// Not one of ours: masquerading it would hide a misconfiguration
		// (or a spoofer) behind the WAN address.
		return routeMartian
	case pk.Dst == p.service:
		return routeService
	case p.lan.contains(pk.Dst):
		return routeLocal
	case p.noNAT.contains(pk.Dst):
		return routeNoNAT
	}
	return routeMasquerade
}

// routeOut sends a wire packet from the LAN to the WAN (route is
// routeMasquerade or routeNoNAT), handling the WAN MTU: too big with DF set
// is answered with Fragmentation Needed quoting the packet as the LAN host
// sent it; too big without DF is fragmented after translation.
func (p *Path) routeOut(buf []byte, pk *nat.Packet, o *outbox, route route) {
	tooBig := len(pk.Buf) > p.wanMTU && pk.Dst != p.wan()
	if tooBig && pk.IP.Flags()&header.IPv4FlagDontFragment != 0 {
		p.drop(nat.DropTooBig)
		p.answerLAN(pk, o, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, uint16(p.wanMTU))
		return
	}
	if p.translateOut(buf, pk, o, route) {
		p.sendWAN(buf, pk, o, tooBig)
	}
}

// translateOut masquerades a packet leaving for the WAN, or tracks its flow
// on a no-NAT route. It reports whether the packet goes out; a hairpinned
// one it has queued back to the LAN, and one the engine refused it has
// answered (when the engine says so) or dropped.
func (p *Path) translateOut(buf []byte, pk *nat.Packet, o *outbox, route route) bool {
	if route == routeNoNAT {
		if !p.routed.note(pk, p.now()) {
			p.stats.RoutedUntracked.Add(1)
		}
		return true
	}
	r := p.nat.Outbound(pk)
	switch r.Verdict {
	case nat.VerdictToWAN:
		return true
	case nat.VerdictToLAN: // hairpin
		p.stats.HairpinPackets.Add(1)
		o.toLAN(buf, len(pk.Buf))
	default:
		if r.Unreachable {
			p.answerLAN(pk, o, header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited, 0)
		}
	}
	return false
}

// sendWAN queues a packet for the WAN, fragmented after translation when
// it is too big for the WAN MTU (DF clear: routeOut answered the others).
func (p *Path) sendWAN(buf []byte, pk *nat.Packet, o *outbox, tooBig bool) {
	p.stats.Traffic[LANToWAN][pk.Proto].add(len(pk.Buf))
	if !tooBig {
		o.toWAN(buf, len(pk.Buf))
		return
	}
	var frag []byte
	ok := fragment(pk.Buf, p.wanMTU,
		func() []byte {
			frag = o.newBuffer()
			if frag == nil {
				return nil
			}
			return frag[Headroom:]
		},
		func(n int) {
			p.stats.FragmentsSent.Add(1)
			o.toWAN(frag, n)
		})
	if !ok {
		p.drop(nat.DropTooBig)
	}
}

// flushReleased writes what one pass queued together with the fragments
// the pass released from the engine's hold (outbound: the LAN loop's, else
// the WAN loop's), which follow their first fragments in the same write;
// more than max of them take further writes.
func (p *Path) flushReleased(o *outbox, pool *offload.Segments, pk *nat.Packet, outbound bool, max int) {
	pool.Reset()
	more := p.sendReleased(outbound, o, pool, pk, max)
	p.flush(o)
	for more {
		o.reset()
		pool.Reset()
		more = p.sendReleased(outbound, o, pool, pk, max)
		p.flush(o)
	}
}

// flush writes what one pass queued: runs of wire packets to the WAN
// transport's Write, super-packets to WriteSuperPackets, in queue order;
// then the LAN side the same way.
func (p *Path) flush(o *outbox) {
	for start, end := range runs(o.wanHdrs) {
		if !o.wanHdrs[start].IsSuperPacket() {
			p.writeWAN(o.wan[start:end])
			continue
		}
		// Queued only when superWAN is set (sendSuperPacket).
		if _, err := p.dev.superWAN.WriteSuperPackets(o.wan[start:end], o.wanHdrs[start:end], Headroom); err != nil && !p.dev.Closed(err) {
			p.drop(nat.DropWriteFailed)
			p.log.Debug().Err(err).Msg("wan super-packet write")
		}
	}
	for start, end := range runs(o.lanHdrs) {
		if !o.lanHdrs[start].IsSuperPacket() {
			if _, err := p.dev.TUN.Write(o.lan[start:end], Headroom); err != nil && !p.dev.Closed(err) {
				p.drop(nat.DropWriteFailed)
				p.log.Debug().Err(err).Msg("tun write")
			}
			continue
		}
		// Queued only when superTUN is set (fromWAN).
		for i, b := range o.lan[start:end] {
			if err := p.dev.superTUN.WriteSuperPacket(b, o.lanHdrs[start+i], Headroom); err != nil && !p.dev.Closed(err) {
				p.drop(nat.DropWriteFailed)
				p.log.Debug().Err(err).Msg("tun super-packet write")
			}
		}
	}
}

// writeWAN sends wire packets through the WAN transport's Write.
func (p *Path) writeWAN(bufs [][]byte) {
	_, err := p.dev.WAN.Write(bufs, Headroom)
	if err == nil || p.dev.Closed(err) {
		return
	}
	var we *WriteError
	if errors.As(err, &we) {
		for range we.Refused {
			p.drop(nat.DropWriteFailed)
		}
	} else {
		p.drop(nat.DropWriteFailed)
	}
	p.log.Debug().Err(err).Msg("wan write")
}

// RunWAN moves packets from the WAN to the TUN until the devices close.
func (p *Path) RunWAN() error {
	batch := p.dev.WAN.BatchSize()
	bufs, sizes := newBuffers(batch)
	hdrs := make([]offload.Header, batch)
	o := newOutbox(batch, batch, maxICMPErrorLen)
	released := &offload.Segments{Headroom: Headroom}
	var pk nat.Packet
	for {
		n, err := p.dev.WAN.Read(bufs, sizes, hdrs, Headroom)
		if err != nil {
			if p.dev.Closed(err) {
				return nil
			}
			return fmt.Errorf("reading WAN: %w", err)
		}
		o.reset()
		for i := range n {
			h := hdrs[i]
			if p.dev.superTUN == nil {
				h = offload.Header{} // the transport keeps none whole for such a TUN
			}
			p.fromWAN(bufs[i], sizes[i], h, &pk, o)
		}
		p.flushReleased(o, released, &pk, false, batch)
	}
}

// fromWAN handles one packet captured on the WAN interface,
// buf[Headroom:Headroom+n]: a wire packet, or, when h says so, a TCP or UDP
// super-packet with a partial checksum to be delivered to the TUN whole.
func (p *Path) fromWAN(buf []byte, n int, h offload.Header, pk *nat.Packet, o *outbox) {
	if r := pk.Parse(buf[Headroom : Headroom+n]); r != nat.DropNone {
		p.drop(r)
		return
	}
	pk.PartialChecksum = h.IsSuperPacket()
	switch {
	case isMartian(pk.Src) || pk.Src == p.wan():
		p.drop(nat.DropMartian)
		return
	case p.lan.contains(pk.Src):
		p.drop(nat.DropSpoofedLAN)
		return
	case p.lan.contains(pk.Dst):
		// Routed traffic for the LAN is accepted only from no-NAT networks,
		// and only as return traffic of a flow the LAN host opened there
		// (routed.go): the source address alone is forgeable. Everyone
		// else must come through a mapping.
		if !p.noNAT.contains(pk.Src) || !p.routed.admits(pk, p.now()) {
			p.drop(nat.DropUnsolicited)
			return
		}
		if pk.IP.TTL() <= 1 {
			p.drop(nat.DropTTLExceeded)
			p.expiredFromWAN(pk.Buf, o)
			return
		}
		p.deliverLAN(buf, pk, o, h)
		return
	case pk.Dst != p.wan():
		p.drop(nat.DropMartian)
		return
	}
	// Keep the packet as the remote sent it when it is about to expire:
	// Time Exceeded must quote the original, not the translation.
	var orig []byte
	if pk.IP.TTL() <= 1 {
		if orig = o.newBuffer(); orig != nil {
			orig = orig[Headroom : Headroom+copy(orig[Headroom:], pk.Buf)]
		}
	}
	r := p.nat.Inbound(pk)
	if r.Verdict != nat.VerdictToLAN {
		return // dropped (counted by the engine) or the host's own
	}
	if pk.IP.TTL() <= 1 {
		if orig != nil {
			p.expiredFromWAN(orig, o)
		}
		p.drop(nat.DropTTLExceeded)
		return
	}
	p.deliverLAN(buf, pk, o, h)
}

// deliverLAN queues a packet from the WAN for the TUN; a super-packet (h)
// whole.
func (p *Path) deliverLAN(buf []byte, pk *nat.Packet, o *outbox, h offload.Header) {
	if h.IsSuperPacket() {
		p.stats.Traffic[WANToLAN][pk.Proto].addSuper(len(pk.Buf))
		o.toLANSuper(buf, len(pk.Buf), h)
		return
	}
	p.stats.Traffic[WANToLAN][pk.Proto].add(len(pk.Buf))
	o.toLAN(buf, len(pk.Buf))
}

// runs yields the [start, end) bounds of each maximal run of queued
// packets that are all super-packets or all wire packets, in order: the two
// go to different writers, and order within a flow is kept.
func runs(hdrs []offload.Header) iter.Seq2[int, int] {
	return func(yield func(int, int) bool) {
		for start := 0; start < len(hdrs); {
			super := hdrs[start].IsSuperPacket()
			end := start + 1
			for end < len(hdrs) && hdrs[end].IsSuperPacket() == super {
				end++
			}
			if !yield(start, end) {
				return
			}
			start = end
		}
	}
}

func newBuffers(batch int) ([][]byte, []int) {
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, Headroom+MaxPacket)
	}
	return bufs, make([]int, batch)
}

// Package testpacket builds IPv4 packets for tests: an IPv4 header in front
// of a UDP, TCP or ICMP message, every checksum correct, every field a test
// may want to set settable. It is for tests only: each call allocates the
// packet it returns, and nothing on the packet path imports it.
//
// A builder writes one layer and returns it; a whole packet is the IPv4
// header around the transport layer:
//
//	pkt := testpacket.IPv4(testpacket.IPv4Header{Src: a, Dst: b, Proto: 17},
//		testpacket.UDP(src, dst, []byte("payload")))
//
// The transport checksums cover the pseudo-header of the addresses given to
// the transport builder, so they must be the IPv4 header's.
//
// Beside the builders are the checks the tests make of what the code under
// test wrote: TransportChecksumValid for a finished packet, and
// PartialChecksum and PartialChecksumCompletes for a packet whose checksum
// is left to offload.
package testpacket

import (
	"cmp"
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// IPv4Header is the IPv4 header IPv4 writes. The zero value of a field is
// what a plain packet has, except TTL, which is 64 when zero.
type IPv4Header struct {
	Src, Dst netip.Addr // IPv4 addresses
	Proto    uint8
	ID       uint16
	Flags    uint8  // header.IPv4FlagDontFragment, header.IPv4FlagMoreFragments
	FragOff  uint16 // fragment offset in bytes, a multiple of 8
	TTL      uint8
	OptWords int // 4-byte option words, NOP-filled, after the 20-byte header
	// Options are option bytes written as given after the 20-byte header,
	// before any NOP words, and padded with End of Option List (zero)
	// bytes to a 4-byte boundary: a test of option handling needs real
	// options (a Router Alert, a source route), not NOPs.
	Options []byte
}

// IPv4 returns the header h in front of payload, with its total length and
// header checksum set.
func IPv4(h IPv4Header, payload []byte) []byte {
	optLen := (len(h.Options) + 3) &^ 3
	hlen := header.IPv4MinimumSize + optLen + 4*h.OptWords
	b := make([]byte, hlen+len(payload))
	ip := header.IPv4(b)
	ttl := h.TTL
	if ttl == 0 {
		ttl = 64
	}
	ip.Encode(&header.IPv4Fields{
		TotalLength:    uint16(len(b)),
		ID:             h.ID,
		Flags:          h.Flags,
		FragmentOffset: h.FragOff,
		TTL:            ttl,
		Protocol:       h.Proto,
		SrcAddr:        addr(h.Src),
		DstAddr:        addr(h.Dst),
	})
	copy(b[header.IPv4MinimumSize:], h.Options)
	for i := header.IPv4MinimumSize + optLen; i < hlen; i++ {
		b[i] = byte(header.IPv4OptionNOPType)
	}
	ip.SetHeaderLength(uint8(hlen))
	copy(b[hlen:], payload)
	ip.SetChecksum(^ip.CalculateChecksum())
	return b
}

// UDP returns a UDP header and payload from src to dst with its length and
// checksum set. A checksum that sums to zero is sent as 0xffff: zero means
// "no checksum" in UDP (RFC 768).
func UDP(src, dst netip.AddrPort, payload []byte) []byte {
	b := make([]byte, header.UDPMinimumSize+len(payload))
	u := header.UDP(b)
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(b))})
	copy(b[header.UDPMinimumSize:], payload)
	xsum := ^checksum.Checksum(b, pseudo(header.UDPProtocolNumber, src, dst, len(b)))
	if xsum == 0 {
		xsum = 0xffff
	}
	u.SetChecksum(xsum)
	return b
}

// TCPHeader is the TCP header TCP writes.
type TCPHeader struct {
	Src, Dst netip.AddrPort
	Seq, Ack uint32
	Flags    header.TCPFlags
	Window   uint16
	OptWords int // 4-byte option words, NOP-filled, after the 20-byte header
}

// TCP returns the header h and payload with the data offset and checksum
// set.
func TCP(h TCPHeader, payload []byte) []byte {
	hlen := header.TCPMinimumSize + 4*h.OptWords
	b := make([]byte, hlen+len(payload))
	tcp := header.TCP(b)
	tcp.Encode(&header.TCPFields{
		SrcPort:    h.Src.Port(),
		DstPort:    h.Dst.Port(),
		SeqNum:     h.Seq,
		AckNum:     h.Ack,
		DataOffset: uint8(hlen),
		Flags:      h.Flags,
		WindowSize: h.Window,
	})
	for i := header.TCPMinimumSize; i < hlen; i++ {
		b[i] = 1 // TCP option NOP (RFC 9293)
	}
	copy(b[hlen:], payload)
	tcp.SetChecksum(^checksum.Checksum(b, pseudo(header.TCPProtocolNumber, h.Src, h.Dst, len(b))))
	return b
}

// ICMP returns an ICMP message: type, code, the 4 bytes after the checksum
// (identifier and sequence number of a query, unused or the next-hop MTU of
// an error) and the body, with the checksum set.
func ICMP(typ header.ICMPv4Type, code header.ICMPv4Code, rest [4]byte, body []byte) []byte {
	b := make([]byte, header.ICMPv4MinimumSize+len(body))
	icmp := header.ICMPv4(b)
	icmp.SetType(typ)
	icmp.SetCode(code)
	copy(b[4:header.ICMPv4MinimumSize], rest[:])
	copy(b[header.ICMPv4MinimumSize:], body)
	icmp.SetChecksum(^checksum.Checksum(b, 0))
	return b
}

// pseudo is the sum of the IPv4 pseudo-header of a transport message of n
// bytes from src to dst.
func pseudo(proto tcpip.TransportProtocolNumber, src, dst netip.AddrPort, n int) uint16 {
	return header.PseudoHeaderChecksum(proto, addr(src.Addr()), addr(dst.Addr()), uint16(n))
}

func addr(a netip.Addr) tcpip.Address { return tcpip.AddrFrom4(a.As4()) }

// udpChecksumOffset is where the UDP checksum is: after the source port,
// destination port and length (RFC 768).
const udpChecksumOffset = 6

// transport returns the TCP or UDP message of an unfragmented IPv4 packet
// (up to the total length) and the offset of its checksum field, or ok
// false for another protocol or lengths that do not fit the buffer.
func transport(pkt []byte) (ip header.IPv4, l4 []byte, field int, ok bool) {
	ip = header.IPv4(pkt)
	if len(pkt) < header.IPv4MinimumSize || int(ip.HeaderLength()) < header.IPv4MinimumSize ||
		int(ip.TotalLength()) > len(pkt) || int(ip.HeaderLength()) > int(ip.TotalLength()) {
		return ip, nil, 0, false
	}
	l4 = pkt[ip.HeaderLength():ip.TotalLength()]
	switch tcpip.TransportProtocolNumber(ip.Protocol()) {
	case header.TCPProtocolNumber:
		if len(l4) < header.TCPMinimumSize {
			return ip, nil, 0, false
		}
		if off := int(header.TCP(l4).DataOffset()); off < header.TCPMinimumSize || off > len(l4) {
			return ip, nil, 0, false
		}
		return ip, l4, header.TCPChecksumOffset, true
	case header.UDPProtocolNumber:
		if len(l4) < header.UDPMinimumSize {
			return ip, nil, 0, false
		}
		return ip, l4, udpChecksumOffset, true
	}
	return ip, l4, 0, false
}

// TransportChecksumValid reports whether the TCP or UDP checksum of an
// unfragmented IPv4 packet verifies over its pseudo-header. It is false
// for any other protocol.
func TransportChecksumValid(pkt []byte) bool {
	ip, l4, _, ok := transport(pkt)
	if !ok {
		return false
	}
	if ip.Protocol() == uint8(header.TCPProtocolNumber) {
		tcp := header.TCP(l4)
		payload := l4[tcp.DataOffset():]
		return tcp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(payload, 0), uint16(len(payload)))
	}
	udp := header.UDP(l4)
	return udp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(udp.Payload(), 0))
}

// PartialChecksum leaves only the pseudo-header sum in the TCP or UDP
// checksum field of an unfragmented IPv4 packet, as a stack relying on
// checksum offload hands a packet over (virtio-net NEEDS_CSUM), and returns
// where the sum is to start (the transport header) and the field's offset
// from there. Another protocol is left alone, with start and offset zero.
func PartialChecksum(pkt []byte) (start, offset int) {
	ip, l4, field, ok := transport(pkt)
	if !ok {
		return 0, 0
	}
	binary.BigEndian.PutUint16(l4[field:], header.PseudoHeaderChecksum(tcpip.TransportProtocolNumber(ip.Protocol()),
		ip.SourceAddress(), ip.DestinationAddress(), uint16(len(l4))))
	return int(ip.HeaderLength()), field
}

// PartialChecksumCompletes reports whether the TCP or UDP message of an
// unfragmented IPv4 packet whose checksum field holds a partial sum (see
// PartialChecksum) verifies once completed as checksum offload completes
// it: the complement of the sum over the whole message, field included,
// written into the field. pkt is not changed.
func PartialChecksumCompletes(pkt []byte) bool {
	_, l4, field, ok := transport(pkt)
	if !ok {
		return false
	}
	done := append([]byte(nil), pkt...)
	_, l4done, _, _ := transport(done)
	binary.BigEndian.PutUint16(l4done[field:], ^checksum.Checksum(l4, 0))
	return TransportChecksumValid(done)
}

// Spec describes one IPv4 packet for Build, every checksum valid: for UDP
// and TCP (SYN unless TCPFlags says otherwise, ack 1, window 1024) a
// transport header from the ports in front of Payload; for any other
// protocol Payload is the whole transport part.
type Spec struct {
	Src, Dst         netip.Addr
	Proto            uint8
	SrcPort, DstPort uint16
	TCPFlags         header.TCPFlags // SYN when zero
	Seq              uint32
	ID               uint16 // 7 when zero
	FragOff          uint16 // in bytes, a multiple of 8
	MoreFrags        bool
	Options          []byte // IPv4 options, as IPv4Header.Options
	Payload          []byte
}

// Build writes the packet s describes, starting at the IPv4 header.
func Build(s Spec) []byte {
	src, dst := netip.AddrPortFrom(s.Src, s.SrcPort), netip.AddrPortFrom(s.Dst, s.DstPort)
	l4 := s.Payload
	switch s.Proto {
	case uint8(header.UDPProtocolNumber):
		l4 = UDP(src, dst, s.Payload)
	case uint8(header.TCPProtocolNumber):
		l4 = TCP(TCPHeader{Src: src, Dst: dst, Seq: s.Seq, Ack: 1,
			Flags: cmp.Or(s.TCPFlags, header.TCPFlagSyn), Window: 1024}, s.Payload)
	}
	var flags uint8
	if s.MoreFrags {
		flags = header.IPv4FlagMoreFragments
	}
	return IPv4(IPv4Header{Src: s.Src, Dst: s.Dst, Proto: s.Proto, ID: cmp.Or(s.ID, 7),
		Flags: flags, FragOff: s.FragOff, Options: s.Options}, l4)
}

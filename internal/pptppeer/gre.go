package pptppeer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// Enhanced GRE (RFC 2637 §4.1): the data channel of a PPTP call.
//
//	|C|R|K|S|s|Recur|A| Flags | Ver |  Protocol Type (0x880B)   |
//	|  Key (HW) Payload Length      |  Key (LW) Call ID          |
//	|  Sequence Number (present when S is set)                   |
//	|  Acknowledgment Number (present when A is set)             |
const (
	GREProtocolPPP = 0x880B
	GREVersion     = 1
	greBaseLen     = 8

	greFlagC    = 0x80 // checksum present: never in PPTP
	greFlagR    = 0x40 // routing present: never in PPTP
	greFlagK    = 0x20 // key present: always in PPTP
	greFlagS    = 0x10 // sequence number present
	greFlagSSR  = 0x08 // strict source route: never in PPTP
	greRecur    = 0x07 // recursion control: 0 in PPTP
	greFlagA    = 0x80 // acknowledgment number present (second byte)
	greFlags    = 0x78 // reserved flags (second byte): 0
	greVerMask  = 0x07
	greIPProto  = "ip4:47"
	maxGREInput = 65536
)

// ErrMalformedGRE is wrapped by every error about a packet that is not
// valid PPTP enhanced GRE.
var ErrMalformedGRE = errors.New("pptppeer: malformed enhanced GRE packet")

// GREPacket is one enhanced GRE packet, received or sent.
type GREPacket struct {
	// From is the source of a received packet (the destination of a sent
	// one).
	From    netip.Addr
	CallID  uint16 // the key's low half: the receiver's Call ID
	Seq     uint32
	HasSeq  bool
	Ack     uint32
	HasAck  bool
	Payload []byte
	At      time.Time
}

// MarshalGRE encodes a GRE v1 packet (without IP header) for the call
// whose receiver knows it as callID. A non-empty payload gets a sequence
// number, as RFC 2637 requires; an empty one makes an acknowledgment-only
// packet and seq is not sent. ack 0 means no acknowledgment field.
func MarshalGRE(callID uint16, seq, ack uint32, payload []byte) ([]byte, error) {
	if len(payload) > 0xFFFF {
		return nil, fmt.Errorf("pptppeer: GRE payload of %d bytes does not fit the 16-bit payload length", len(payload))
	}
	n := greBaseLen
	b0, b1 := byte(greFlagK), byte(GREVersion)
	if len(payload) > 0 {
		b0 |= greFlagS
		n += 4
	}
	if ack != 0 {
		b1 |= greFlagA
		n += 4
	}
	b := make([]byte, n, n+len(payload))
	b[0], b[1] = b0, b1
	binary.BigEndian.PutUint16(b[2:4], GREProtocolPPP)
	binary.BigEndian.PutUint16(b[4:6], uint16(len(payload)))
	binary.BigEndian.PutUint16(b[6:8], callID)
	off := greBaseLen
	if len(payload) > 0 {
		binary.BigEndian.PutUint32(b[off:], seq)
		off += 4
	}
	if ack != 0 {
		binary.BigEndian.PutUint32(b[off:], ack)
	}
	return append(b, payload...), nil
}

// ParseGRE decodes a GRE packet (without IP header). Anything RFC 2637
// does not allow is an error wrapping ErrMalformedGRE: checksum, routing,
// strict source route or recursion bits, reserved flags, a version other
// than 1, a protocol other than PPP, a missing key, a payload length that
// disagrees with the bytes present, a payload without sequence number.
func ParseGRE(b []byte) (GREPacket, error) {
	bad := func(format string, args ...any) (GREPacket, error) {
		return GREPacket{}, fmt.Errorf("%w: %s", ErrMalformedGRE, fmt.Sprintf(format, args...))
	}
	if len(b) < greBaseLen {
		return bad("%d bytes, shorter than the 8-byte header", len(b))
	}
	b0, b1 := b[0], b[1]
	if b0&(greFlagC|greFlagR|greFlagSSR|greRecur) != 0 {
		return bad("flags %#02x%02x set C, R, s or recursion", b0, b1)
	}
	if b0&greFlagK == 0 {
		return bad("no key (K clear)")
	}
	if b1&greFlags != 0 {
		return bad("reserved flags %#02x set", b1&greFlags)
	}
	if v := b1 & greVerMask; v != GREVersion {
		return bad("version %d, want %d", v, GREVersion)
	}
	if p := binary.BigEndian.Uint16(b[2:4]); p != GREProtocolPPP {
		return bad("protocol %#04x, want %#04x", p, GREProtocolPPP)
	}
	p := GREPacket{CallID: binary.BigEndian.Uint16(b[6:8])}
	payloadLen := int(binary.BigEndian.Uint16(b[4:6]))
	off := greBaseLen
	if b0&greFlagS != 0 {
		if len(b) < off+4 {
			return bad("S set but no room for the sequence number in %d bytes", len(b))
		}
		p.Seq, p.HasSeq = binary.BigEndian.Uint32(b[off:]), true
		off += 4
	}
	if b1&greFlagA != 0 {
		if len(b) < off+4 {
			return bad("A set but no room for the acknowledgment number in %d bytes", len(b))
		}
		p.Ack, p.HasAck = binary.BigEndian.Uint32(b[off:]), true
		off += 4
	}
	if rest := len(b) - off; rest != payloadLen {
		return bad("payload length field %d, but %d bytes follow the header", payloadLen, rest)
	}
	if payloadLen > 0 && !p.HasSeq {
		return bad("%d bytes of payload without a sequence number", payloadLen)
	}
	p.Payload = append([]byte(nil), b[off:]...)
	return p, nil
}

// GREConn is a raw IPPROTO_GRE socket inside a lab namespace, bound to one
// local address: it sends from that address and sees every GRE packet to
// it (every socket bound there sees every packet, as raw sockets do).
type GREConn struct {
	c *net.IPConn
}

// ListenGRE opens a raw GRE socket in ns bound to local.
func ListenGRE(ns *lab.NS, local netip.Addr) (*GREConn, error) {
	if !local.Is4() {
		return nil, fmt.Errorf("pptppeer: GRE socket address %s is not IPv4", local)
	}
	var c *net.IPConn
	err := ns.Do(func() (err error) {
		c, err = net.ListenIP(greIPProto, &net.IPAddr{IP: net.IP(local.AsSlice())})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pptppeer: raw GRE socket on %s in %s: %w", local, ns.Name, err)
	}
	return &GREConn{c: c}, nil
}

// Send sends one packet to dst; see MarshalGRE for the arguments.
func (g *GREConn) Send(dst netip.Addr, callID uint16, seq, ack uint32, payload []byte) error {
	if !dst.Is4() {
		return fmt.Errorf("pptppeer: GRE destination %s is not IPv4", dst)
	}
	b, err := MarshalGRE(callID, seq, ack, payload)
	if err != nil {
		return err
	}
	if _, err := g.c.WriteToIP(b, &net.IPAddr{IP: net.IP(dst.AsSlice())}); err != nil {
		return fmt.Errorf("pptppeer: send GRE to %s: %w", dst, err)
	}
	return nil
}

// Receive waits for the next GRE packet until deadline (zero: none). A
// malformed packet is returned as an error wrapping ErrMalformedGRE, with
// From set and the socket still usable; a closed socket returns
// net.ErrClosed.
func (g *GREConn) Receive(deadline time.Time) (GREPacket, error) {
	if err := g.c.SetReadDeadline(deadline); err != nil {
		return GREPacket{}, err
	}
	buf := make([]byte, maxGREInput)
	// IPConn strips the IPv4 header the kernel delivers on raw sockets.
	n, from, err := g.c.ReadFromIP(buf)
	if err != nil {
		return GREPacket{}, err
	}
	src, _ := netip.AddrFromSlice(from.IP)
	src = src.Unmap()
	p, err := ParseGRE(buf[:n])
	p.From, p.At = src, time.Now()
	if err != nil {
		return GREPacket{From: src, At: p.At}, fmt.Errorf("from %s: %w", src, err)
	}
	return p, nil
}

// Close closes the socket; a Receive in progress returns net.ErrClosed.
func (g *GREConn) Close() error { return g.c.Close() }

// String is a one-line description for logs.
func (p GREPacket) String() string {
	s := fmt.Sprintf("GRE from %s key=%#04x len=%d", p.From, p.CallID, len(p.Payload))
	if p.HasSeq {
		s += fmt.Sprintf(" seq=%d", p.Seq)
	}
	if p.HasAck {
		s += fmt.Sprintf(" ack=%d", p.Ack)
	}
	return s + fmt.Sprintf(" payload=%q", p.Payload)
}

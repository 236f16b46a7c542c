// Package pptppeer is a scripted PPTP peer (RFC 2637) for the integration
// tests and `vpnmasq demo`: a control-message codec, enhanced GRE over raw sockets, a server
// playing the PAC and a client playing the PNS. It is written from the RFC
// alone and shares no code with vpnmasq's NAT, so that it can check the
// router's PPTP translation rather than repeat its mistakes.
package pptppeer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Control message types (RFC 2637 §2).
const (
	TypeSCCRQ    uint16 = 1  // Start-Control-Connection-Request
	TypeSCCRP    uint16 = 2  // Start-Control-Connection-Reply
	TypeStopCCRQ uint16 = 3  // Stop-Control-Connection-Request
	TypeStopCCRP uint16 = 4  // Stop-Control-Connection-Reply
	TypeEchoRQ   uint16 = 5  // Echo-Request
	TypeEchoRP   uint16 = 6  // Echo-Reply
	TypeOCRQ     uint16 = 7  // Outgoing-Call-Request
	TypeOCRP     uint16 = 8  // Outgoing-Call-Reply
	TypeICRQ     uint16 = 9  // Incoming-Call-Request
	TypeICRP     uint16 = 10 // Incoming-Call-Reply
	TypeICCN     uint16 = 11 // Incoming-Call-Connected
	TypeCCRQ     uint16 = 12 // Call-Clear-Request
	TypeCDN      uint16 = 13 // Call-Disconnect-Notify
	TypeWEN      uint16 = 14 // WAN-Error-Notify
	TypeSLI      uint16 = 15 // Set-Link-Info
)

// Header constants.
const (
	HeaderLen          = 12         // length, message type, magic cookie, control type, reserved
	MessageTypeControl = 1          // the PPTP Message Type of every control message
	MagicCookie        = 0x1A2B3C4D // RFC 2637 §2: receivers must check it
	Port               = 1723       // the control connection's TCP port
	ProtocolVersion    = 0x0100     // version 1, revision 0
)

// Result codes used by the constructors' callers.
const (
	ResultOK         uint8 = 1 // SCCRP, StopCCRP, Echo-Reply, OCRP ("Connected"), ICRP ("Connect")
	ResultCDNRequest uint8 = 4 // CDN: "Disconnect due to receipt of a Call-Clear-Request"
	StopReasonNone   uint8 = 1 // StopCCRQ: general request to clear the control connection
)

// ErrMalformed is wrapped by every error about a message that is not a
// valid RFC 2637 control message.
var ErrMalformed = errors.New("pptppeer: malformed PPTP control message")

// Message is one control message: its control message type and its whole
// encoding, header included.
type Message struct {
	Type uint16
	Raw  []byte
}

// fieldKind says how a field is rendered and which role it plays.
type fieldKind int

const (
	kindDec    fieldKind = iota // an unsigned number
	kindHex                     // a bit field or version, clearer in hex
	kindText                    // NUL-padded ASCII
	kindCallID                  // the sender's own Call ID
	kindPeerID                  // the Peer's Call ID
)

type field struct {
	name string
	off  int
	size int // 1, 2, 4 for numbers; any for text
	kind fieldKind
}

type msgSpec struct {
	name   string
	length int
	fields []field // after the 12-byte header, in wire order
}

// specs describes every control message, indexed by type, with the fixed
// lengths and layouts of RFC 2637 §2.1-2.15.
var specs = [16]msgSpec{
	TypeSCCRQ: {"SCCRQ", 156, []field{
		{"version", 12, 2, kindHex}, {"rsv1", 14, 2, kindDec}, {"framing", 16, 4, kindHex}, {"bearer", 20, 4, kindHex},
		{"maxch", 24, 2, kindDec}, {"firmware", 26, 2, kindHex}, {"host", 28, 64, kindText}, {"vendor", 92, 64, kindText},
	}},
	TypeSCCRP: {"SCCRP", 156, []field{
		{"version", 12, 2, kindHex}, {"result", 14, 1, kindDec}, {"error", 15, 1, kindDec}, {"framing", 16, 4, kindHex},
		{"bearer", 20, 4, kindHex}, {"maxch", 24, 2, kindDec}, {"firmware", 26, 2, kindHex}, {"host", 28, 64, kindText},
		{"vendor", 92, 64, kindText},
	}},
	TypeStopCCRQ: {"StopCCRQ", 16, []field{
		{"reason", 12, 1, kindDec}, {"rsv1", 13, 1, kindDec}, {"rsv2", 14, 2, kindDec},
	}},
	TypeStopCCRP: {"StopCCRP", 16, []field{
		{"result", 12, 1, kindDec}, {"error", 13, 1, kindDec}, {"rsv1", 14, 2, kindDec},
	}},
	TypeEchoRQ: {"EchoRQ", 16, []field{
		{"ident", 12, 4, kindDec},
	}},
	TypeEchoRP: {"EchoRP", 20, []field{
		{"ident", 12, 4, kindDec}, {"result", 16, 1, kindDec}, {"error", 17, 1, kindDec}, {"rsv1", 18, 2, kindDec},
	}},
	TypeOCRQ: {"OCRQ", 168, []field{
		{"callid", 12, 2, kindCallID}, {"serial", 14, 2, kindDec}, {"minbps", 16, 4, kindDec}, {"maxbps", 20, 4, kindDec},
		{"bearer", 24, 4, kindDec}, {"framing", 28, 4, kindDec}, {"window", 32, 2, kindDec}, {"delay", 34, 2, kindDec},
		{"phonelen", 36, 2, kindDec}, {"rsv1", 38, 2, kindDec}, {"phone", 40, 64, kindText}, {"subaddr", 104, 64, kindText},
	}},
	TypeOCRP: {"OCRP", 32, []field{
		{"callid", 12, 2, kindCallID}, {"peer", 14, 2, kindPeerID}, {"result", 16, 1, kindDec}, {"error", 17, 1, kindDec},
		{"cause", 18, 2, kindDec}, {"speed", 20, 4, kindDec}, {"window", 24, 2, kindDec}, {"delay", 26, 2, kindDec},
		{"channel", 28, 4, kindDec},
	}},
	TypeICRQ: {"ICRQ", 220, []field{
		{"callid", 12, 2, kindCallID}, {"serial", 14, 2, kindDec}, {"bearer", 16, 4, kindDec}, {"channel", 20, 4, kindDec},
		{"dialedlen", 24, 2, kindDec}, {"dialinglen", 26, 2, kindDec}, {"dialed", 28, 64, kindText},
		{"dialing", 92, 64, kindText}, {"subaddr", 156, 64, kindText},
	}},
	TypeICRP: {"ICRP", 24, []field{
		{"callid", 12, 2, kindCallID}, {"peer", 14, 2, kindPeerID}, {"result", 16, 1, kindDec}, {"error", 17, 1, kindDec},
		{"window", 18, 2, kindDec}, {"delay", 20, 2, kindDec}, {"rsv1", 22, 2, kindDec},
	}},
	TypeICCN: {"ICCN", 28, []field{
		{"peer", 12, 2, kindPeerID}, {"rsv1", 14, 2, kindDec}, {"speed", 16, 4, kindDec}, {"window", 20, 2, kindDec},
		{"delay", 22, 2, kindDec}, {"framing", 24, 4, kindDec},
	}},
	TypeCCRQ: {"CCRQ", 16, []field{
		{"callid", 12, 2, kindCallID}, {"rsv1", 14, 2, kindDec},
	}},
	TypeCDN: {"CDN", 148, []field{
		{"callid", 12, 2, kindCallID}, {"result", 14, 1, kindDec}, {"error", 15, 1, kindDec}, {"cause", 16, 2, kindDec},
		{"rsv1", 18, 2, kindDec}, {"stats", 20, 128, kindText},
	}},
	TypeWEN: {"WEN", 40, []field{
		{"peer", 12, 2, kindPeerID}, {"rsv1", 14, 2, kindDec}, {"crc", 16, 4, kindDec}, {"framingerr", 20, 4, kindDec},
		{"hwoverrun", 24, 4, kindDec}, {"bufoverrun", 28, 4, kindDec}, {"timeout", 32, 4, kindDec},
		{"alignment", 36, 4, kindDec},
	}},
	TypeSLI: {"SLI", 24, []field{
		{"peer", 12, 2, kindPeerID}, {"rsv1", 14, 2, kindDec}, {"sendaccm", 16, 4, kindHex}, {"recvaccm", 20, 4, kindHex},
	}},
}

func validType(t uint16) bool { return t >= TypeSCCRQ && t <= TypeSLI }

// Length returns the fixed length RFC 2637 gives control message type t,
// or 0 for an unknown type.
func Length(t uint16) int {
	if !validType(t) {
		return 0
	}
	return specs[t].length
}

// TypeName returns the usual abbreviation of control message type t
// ("OCRQ"), or "type<N>" for an unknown one.
func TypeName(t uint16) string {
	if !validType(t) {
		return "type" + strconv.Itoa(int(t))
	}
	return specs[t].name
}

// Types returns the 15 control message types in numeric order.
func Types() []uint16 {
	out := make([]uint16, 0, TypeSLI)
	for t := TypeSCCRQ; t <= TypeSLI; t++ {
		out = append(out, t)
	}
	return out
}

// New returns a control message of type t with a valid header and every
// other field zero. It panics on an unknown type: that is a bug in the
// calling test, not data.
func New(t uint16) Message {
	if !validType(t) {
		panic(fmt.Sprintf("pptppeer: New(%d): no such control message type", t))
	}
	b := make([]byte, specs[t].length)
	binary.BigEndian.PutUint16(b[0:2], uint16(len(b)))
	binary.BigEndian.PutUint16(b[2:4], MessageTypeControl)
	binary.BigEndian.PutUint32(b[4:8], MagicCookie)
	binary.BigEndian.PutUint16(b[8:10], t)
	return Message{Type: t, Raw: b}
}

// Parse checks that b is exactly one valid control message and returns it
// (with its own copy of the bytes).
func Parse(b []byte) (Message, error) {
	if len(b) < HeaderLen {
		return Message{}, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrMalformed, len(b), HeaderLen)
	}
	t, err := checkHeader(b[:HeaderLen])
	if err != nil {
		return Message{}, err
	}
	if len(b) != specs[t].length {
		return Message{}, fmt.Errorf("%w: %s in %d bytes, want %d", ErrMalformed, specs[t].name, len(b), specs[t].length)
	}
	return Message{Type: t, Raw: append([]byte(nil), b...)}, nil
}

// checkHeader validates a 12-byte header and returns the control type.
func checkHeader(h []byte) (uint16, error) {
	length := binary.BigEndian.Uint16(h[0:2])
	mtype := binary.BigEndian.Uint16(h[2:4])
	magic := binary.BigEndian.Uint32(h[4:8])
	t := binary.BigEndian.Uint16(h[8:10])
	if magic != MagicCookie {
		return 0, fmt.Errorf("%w: magic cookie %#08x, want %#08x", ErrMalformed, magic, MagicCookie)
	}
	if mtype != MessageTypeControl {
		return 0, fmt.Errorf("%w: PPTP message type %d, want %d (control)", ErrMalformed, mtype, MessageTypeControl)
	}
	if !validType(t) {
		return 0, fmt.Errorf("%w: control message type %d, want 1-15", ErrMalformed, t)
	}
	if int(length) != specs[t].length {
		return 0, fmt.Errorf("%w: %s with length field %d, want %d", ErrMalformed, specs[t].name, length, specs[t].length)
	}
	return t, nil
}

// ReadMessage reads the next control message from a stream. It checks the
// header (length, message type, magic cookie, control type) before reading
// the body, so a corrupt stream is reported instead of being read out of
// step. A stream that ends cleanly between messages returns io.EOF; one
// that ends inside a message returns io.ErrUnexpectedEOF.
func ReadMessage(r io.Reader) (Message, error) {
	var h [HeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return Message{}, err
	}
	t, err := checkHeader(h[:])
	if err != nil {
		return Message{}, err
	}
	b := make([]byte, specs[t].length)
	copy(b, h[:])
	if _, err := io.ReadFull(r, b[HeaderLen:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Message{}, fmt.Errorf("pptppeer: reading the body of %s: %w", specs[t].name, err)
	}
	return Message{Type: t, Raw: b}, nil
}

// Name is the message's type abbreviation, e.g. "OCRQ".
func (m Message) Name() string { return TypeName(m.Type) }

// Len is the length of the encoding.
func (m Message) Len() int { return len(m.Raw) }

// lookup finds the field of the given kind, or the named field.
func (m Message) lookup(match func(field) bool) (field, bool) {
	if !validType(m.Type) {
		return field{}, false
	}
	for _, f := range specs[m.Type].fields {
		if match(f) && f.off+f.size <= len(m.Raw) {
			return f, true
		}
	}
	return field{}, false
}

func (m Message) uint(f field) uint32 {
	b := m.Raw[f.off : f.off+f.size]
	switch f.size {
	case 1:
		return uint32(b[0])
	case 2:
		return uint32(binary.BigEndian.Uint16(b))
	default:
		return binary.BigEndian.Uint32(b)
	}
}

// CallID returns the sender's own Call ID, for the types that carry one
// (OCRQ, OCRP, ICRQ, ICRP, CCRQ, CDN).
func (m Message) CallID() (uint16, bool) {
	f, ok := m.lookup(func(f field) bool { return f.kind == kindCallID })
	if !ok {
		return 0, false
	}
	return uint16(m.uint(f)), true
}

// PeerCallID returns the Peer's Call ID, for the types that carry one
// (OCRP, ICRP, ICCN, WEN, SLI).
func (m Message) PeerCallID() (uint16, bool) {
	f, ok := m.lookup(func(f field) bool { return f.kind == kindPeerID })
	if !ok {
		return 0, false
	}
	return uint16(m.uint(f)), true
}

// Field returns a numeric field by the name Summary shows it under
// ("serial", "result", "ident", ...).
func (m Message) Field(name string) (uint32, bool) {
	f, ok := m.lookup(func(f field) bool { return f.name == name && f.kind != kindText })
	if !ok {
		return 0, false
	}
	return m.uint(f), true
}

// Text returns a text field (host, vendor, phone, ...) up to its padding.
func (m Message) Text(name string) (string, bool) {
	f, ok := m.lookup(func(f field) bool { return f.name == name && f.kind == kindText })
	if !ok {
		return "", false
	}
	return strings.TrimRight(string(m.Raw[f.off:f.off+f.size]), "\x00"), true
}

// WithCallID returns a copy with the Call ID set; it panics for a type
// without one, which is a bug in the calling test.
func (m Message) WithCallID(id uint16) Message {
	return m.withID(kindCallID, id)
}

// WithPeerCallID returns a copy with the Peer's Call ID set; it panics for
// a type without one.
func (m Message) WithPeerCallID(id uint16) Message {
	return m.withID(kindPeerID, id)
}

func (m Message) withID(kind fieldKind, id uint16) Message {
	f, ok := m.lookup(func(f field) bool { return f.kind == kind })
	if !ok {
		panic(fmt.Sprintf("pptppeer: %s has no such Call ID field", m.Name()))
	}
	out := Message{Type: m.Type, Raw: append([]byte(nil), m.Raw...)}
	binary.BigEndian.PutUint16(out.Raw[f.off:], id)
	return out
}

// Summary renders every field of the message on one line, in wire order,
// except the values of the Call ID and Peer's Call ID, which show as "*":
// two messages with equal summaries differ at most in those values, which
// is what a NAT is allowed to change.
func (m Message) Summary() string {
	var b strings.Builder
	b.WriteString(m.Name())
	if len(m.Raw) < HeaderLen {
		fmt.Fprintf(&b, " truncated=%x", m.Raw)
		return b.String()
	}
	fmt.Fprintf(&b, " len=%d mtype=%d magic=%#08x rsv0=%d",
		binary.BigEndian.Uint16(m.Raw[0:2]), binary.BigEndian.Uint16(m.Raw[2:4]),
		binary.BigEndian.Uint32(m.Raw[4:8]), binary.BigEndian.Uint16(m.Raw[10:12]))
	if ct := binary.BigEndian.Uint16(m.Raw[8:10]); ct != m.Type {
		// Type and the encoded type disagree: show both, so such a
		// message never compares equal to a consistent one.
		fmt.Fprintf(&b, " ctype=%d", ct)
	}
	if !validType(m.Type) {
		fmt.Fprintf(&b, " body=%x", m.Raw[HeaderLen:])
		return b.String()
	}
	for _, f := range specs[m.Type].fields {
		if f.off+f.size > len(m.Raw) {
			fmt.Fprintf(&b, " %s=<missing>", f.name)
			continue
		}
		switch f.kind {
		case kindCallID, kindPeerID:
			fmt.Fprintf(&b, " %s=*", f.name)
		case kindText:
			// %q shows embedded NULs and any other byte, so only the
			// trailing padding is left out.
			fmt.Fprintf(&b, " %s=%q", f.name, strings.TrimRight(string(m.Raw[f.off:f.off+f.size]), "\x00"))
		case kindHex:
			fmt.Fprintf(&b, " %s=%#x", f.name, m.uint(f))
		default:
			fmt.Fprintf(&b, " %s=%d", f.name, m.uint(f))
		}
	}
	return b.String()
}

// String is Summary with the Call ID values filled in, for logs.
func (m Message) String() string {
	s := m.Summary()
	if id, ok := m.CallID(); ok {
		s = strings.Replace(s, " callid=*", fmt.Sprintf(" callid=%#04x", id), 1)
	}
	if id, ok := m.PeerCallID(); ok {
		s = strings.Replace(s, " peer=*", fmt.Sprintf(" peer=%#04x", id), 1)
	}
	return s
}

// put writes a numeric field by name; the constructors below only name
// fields that exist.
func (m Message) put(name string, v uint32) Message {
	f, ok := m.lookup(func(f field) bool { return f.name == name && f.kind != kindText })
	if !ok {
		panic(fmt.Sprintf("pptppeer: %s has no numeric field %q", m.Name(), name))
	}
	switch f.size {
	case 1:
		m.Raw[f.off] = uint8(v)
	case 2:
		binary.BigEndian.PutUint16(m.Raw[f.off:], uint16(v))
	default:
		binary.BigEndian.PutUint32(m.Raw[f.off:], v)
	}
	return m
}

// putText writes a text field by name; text longer than the field is cut.
func (m Message) putText(name, s string) Message {
	f, ok := m.lookup(func(f field) bool { return f.name == name && f.kind == kindText })
	if !ok {
		panic(fmt.Sprintf("pptppeer: %s has no text field %q", m.Name(), name))
	}
	copy(m.Raw[f.off:f.off+f.size], s)
	return m
}

// Values the constructors fill in: those of a plain PPTP server and client
// on a LAN, so that the messages look like the real thing to a router.
const (
	HostName      = "vpnmasq-test"
	VendorName    = "vpnmasq"
	framingCaps   = 3 // asynchronous and synchronous framing
	bearerCaps    = 3 // analog and digital access
	firmware      = 0x0001
	maxChannels   = 16
	windowSize    = 64
	processDelay  = 0
	minBPS        = 300
	maxBPS        = 100_000_000
	connectSpeed  = 100_000_000
	bearerAny     = 3
	bearerDigital = 2
	framingAny    = 3
	framingSync   = 2
	accmAll       = 0xFFFFFFFF
	dialedNumber  = "5550100"
	dialingNumber = "5550199"
	firstCountWEN = 1
)

// NewSCCRQ is the PNS's Start-Control-Connection-Request. Maximum
// channels is 0 as RFC 2637 asks of a PNS.
func NewSCCRQ() Message {
	return New(TypeSCCRQ).put("version", ProtocolVersion).put("framing", framingCaps).put("bearer", bearerCaps).
		put("maxch", 0).put("firmware", firmware).putText("host", HostName).putText("vendor", VendorName)
}

// NewSCCRP is the PAC's Start-Control-Connection-Reply.
func NewSCCRP(result uint8) Message {
	return New(TypeSCCRP).put("version", ProtocolVersion).put("result", uint32(result)).put("framing", framingCaps).
		put("bearer", bearerCaps).put("maxch", maxChannels).put("firmware", firmware).
		putText("host", HostName).putText("vendor", VendorName)
}

// NewStopCCRQ is a Stop-Control-Connection-Request.
func NewStopCCRQ(reason uint8) Message { return New(TypeStopCCRQ).put("reason", uint32(reason)) }

// NewStopCCRP is a Stop-Control-Connection-Reply.
func NewStopCCRP(result uint8) Message { return New(TypeStopCCRP).put("result", uint32(result)) }

// NewEchoRequest is an Echo-Request with the given identifier.
func NewEchoRequest(ident uint32) Message { return New(TypeEchoRQ).put("ident", ident) }

// NewEchoReply answers the Echo-Request with identifier ident.
func NewEchoReply(ident uint32, result uint8) Message {
	return New(TypeEchoRP).put("ident", ident).put("result", uint32(result))
}

// NewOCRQ is the PNS's Outgoing-Call-Request for its call callID.
func NewOCRQ(callID, serial uint16) Message {
	return New(TypeOCRQ).put("callid", uint32(callID)).put("serial", uint32(serial)).put("minbps", minBPS).
		put("maxbps", maxBPS).put("bearer", bearerAny).put("framing", framingAny).put("window", windowSize).
		put("delay", processDelay)
}

// NewOCRP is the PAC's Outgoing-Call-Reply: callID is the PAC's own Call
// ID, peerCallID the PNS's from the OCRQ.
func NewOCRP(callID, peerCallID uint16, result uint8) Message {
	return New(TypeOCRP).put("callid", uint32(callID)).put("peer", uint32(peerCallID)).put("result", uint32(result)).
		put("speed", connectSpeed).put("window", windowSize).put("delay", processDelay)
}

// NewICRQ is the PAC's Incoming-Call-Request for its call callID.
func NewICRQ(callID, serial uint16) Message {
	return New(TypeICRQ).put("callid", uint32(callID)).put("serial", uint32(serial)).put("bearer", bearerDigital).
		put("dialedlen", uint32(len(dialedNumber))).put("dialinglen", uint32(len(dialingNumber))).
		putText("dialed", dialedNumber).putText("dialing", dialingNumber)
}

// NewICRP is the PNS's Incoming-Call-Reply: callID is the PNS's own Call
// ID, peerCallID the PAC's from the ICRQ.
func NewICRP(callID, peerCallID uint16, result uint8) Message {
	return New(TypeICRP).put("callid", uint32(callID)).put("peer", uint32(peerCallID)).put("result", uint32(result)).
		put("window", windowSize).put("delay", processDelay)
}

// NewICCN is the PAC's Incoming-Call-Connected, carrying the PNS's Call ID.
func NewICCN(peerCallID uint16) Message {
	return New(TypeICCN).put("peer", uint32(peerCallID)).put("speed", connectSpeed).put("window", windowSize).
		put("delay", processDelay).put("framing", framingSync)
}

// NewCCRQ is the PNS's Call-Clear-Request for its own call callID.
func NewCCRQ(callID uint16) Message { return New(TypeCCRQ).put("callid", uint32(callID)) }

// NewCDN is the PAC's Call-Disconnect-Notify; RFC 2637 puts the PAC's own
// Call ID in it.
func NewCDN(callID uint16, result uint8) Message {
	return New(TypeCDN).put("callid", uint32(callID)).put("result", uint32(result))
}

// NewWEN is the PAC's WAN-Error-Notify for the PNS's call peerCallID. The
// counters are 1 to 6 rather than 0, so that a rewrite at a wrong offset
// shows in Summary.
func NewWEN(peerCallID uint16) Message {
	m := New(TypeWEN).put("peer", uint32(peerCallID))
	for i, name := range []string{"crc", "framingerr", "hwoverrun", "bufoverrun", "timeout", "alignment"} {
		m = m.put(name, uint32(firstCountWEN+i))
	}
	return m
}

// NewSLI is a Set-Link-Info for the call peerCallID of the receiving side,
// with the PPP default ACCMs.
func NewSLI(peerCallID uint16) Message {
	return New(TypeSLI).put("peer", uint32(peerCallID)).put("sendaccm", accmAll).put("recvaccm", accmAll)
}

package nat

import "encoding/binary"

// PPTP control messages (RFC 2637 section 2). Every message starts with the
// same 12-byte header — Length, PPTP Message Type (1 = control), Magic Cookie
// 0x1A2B3C4D, Control Message Type, Reserved0 — and has a fixed length per
// control message type.

// PortPPTP is the TCP port of the PPTP control connection.
const PortPPTP = 1723

// PPTPMagic is the magic cookie every PPTP message carries.
const PPTPMagic = 0x1A2B3C4D

// PPTPControlType is a PPTP control message type.
type PPTPControlType uint16

// The 15 control message types of RFC 2637 section 1.4.
const (
	PPTPStartControlRequest PPTPControlType = iota + 1 // SCCRQ
	PPTPStartControlReply                              // SCCRP
	PPTPStopControlRequest                             // StopCCRQ
	PPTPStopControlReply                               // StopCCRP
	PPTPEchoRequest
	PPTPEchoReply
	PPTPOutgoingCallRequest   // OCRQ
	PPTPOutgoingCallReply     // OCRP
	PPTPIncomingCallRequest   // ICRQ
	PPTPIncomingCallReply     // ICRP
	PPTPIncomingCallConnected // ICCN
	PPTPCallClearRequest      // CCRQ
	PPTPCallDisconnectNotify  // CDN
	PPTPWANErrorNotify        // WEN
	PPTPSetLinkInfo           // SLI
	pptpNumTypes
)

// pptpHeaderLen is the common header: the Call ID fields follow it.
const pptpHeaderLen = 12

// pptpFixedLen is each control message type's length (RFC 2637 section 2).
var pptpFixedLen = [pptpNumTypes]uint16{
	PPTPStartControlRequest:   156,
	PPTPStartControlReply:     156,
	PPTPStopControlRequest:    16,
	PPTPStopControlReply:      16,
	PPTPEchoRequest:           16,
	PPTPEchoReply:             20,
	PPTPOutgoingCallRequest:   168,
	PPTPOutgoingCallReply:     32,
	PPTPIncomingCallRequest:   220,
	PPTPIncomingCallReply:     24,
	PPTPIncomingCallConnected: 28,
	PPTPCallClearRequest:      16,
	PPTPCallDisconnectNotify:  148,
	PPTPWANErrorNotify:        40,
	PPTPSetLinkInfo:           24,
}

var pptpTypeNames = [pptpNumTypes]string{
	"invalid", "SCCRQ", "SCCRP", "StopCCRQ", "StopCCRP", "Echo-Request", "Echo-Reply",
	"OCRQ", "OCRP", "ICRQ", "ICRP", "ICCN", "CCRQ", "CDN", "WEN", "SLI",
}

func (t PPTPControlType) String() string {
	if t.Valid() {
		return pptpTypeNames[t]
	}
	return "unknown"
}

// Valid reports whether t is one of the 15 defined types.
func (t PPTPControlType) Valid() bool { return t >= 1 && t < pptpNumTypes }

// FixedLen is the type's length in RFC 2637; 0 for an unknown type.
func (t PPTPControlType) FixedLen() int {
	if t.Valid() {
		return int(pptpFixedLen[t])
	}
	return 0
}

// Which Call IDs a message carries. A message names at most two calls: the
// sender's own Call ID and the Peer's Call ID, which is always the
// receiver's (RFC 2637 uses "peer" from the sender's point of view: the
// Outgoing-Call-Reply's Peer's Call ID is the Call ID of the
// Outgoing-Call-Request it answers, the Set-Link-Info's is the PAC's when
// the PNS sends it). So one rule serves both roles and both directions.

// senderCallIDOffset is where a message carries its sender's Call ID, or 0.
// Call-Clear-Request and Call-Disconnect-Notify name the call by their
// sender's Call ID: a PNS clears its call, a PAC reports the end of its own
// (RFC 2637 sections 2.12 and 2.13).
func (t PPTPControlType) senderCallIDOffset() int {
	switch t {
	case PPTPOutgoingCallRequest, PPTPOutgoingCallReply, PPTPIncomingCallRequest,
		PPTPIncomingCallReply, PPTPCallClearRequest, PPTPCallDisconnectNotify:
		return 12
	}
	return 0
}

// peerCallIDOffset is where a message carries the receiver's Call ID, or 0.
func (t PPTPControlType) peerCallIDOffset() int {
	switch t {
	case PPTPOutgoingCallReply, PPTPIncomingCallReply:
		return 14
	case PPTPIncomingCallConnected, PPTPWANErrorNotify, PPTPSetLinkInfo:
		return 12
	}
	return 0
}

// PPTPMessage is a typed view of the first bytes of one PPTP control message,
// in the manner of gVisor's header types: methods read fields in place.
// Callers check Validate before reading past the header.
type PPTPMessage []byte

// Length is the message's Length field.
func (m PPTPMessage) Length() uint16 { return binary.BigEndian.Uint16(m[0:]) }

// MessageType is the PPTP Message Type (1 control, 2 management).
func (m PPTPMessage) MessageType() uint16 { return binary.BigEndian.Uint16(m[2:]) }

// Magic is the Magic Cookie.
func (m PPTPMessage) Magic() uint32 { return binary.BigEndian.Uint32(m[4:]) }

// ControlType is the Control Message Type.
func (m PPTPMessage) ControlType() PPTPControlType {
	return PPTPControlType(binary.BigEndian.Uint16(m[8:]))
}

// CallID is the sender's Call ID, when the type carries one.
func (m PPTPMessage) CallID() (uint16, bool) {
	off := m.ControlType().senderCallIDOffset()
	if off == 0 || len(m) < off+2 {
		return 0, false
	}
	return binary.BigEndian.Uint16(m[off:]), true
}

// PeerCallID is the receiver's Call ID, when the type carries one.
func (m PPTPMessage) PeerCallID() (uint16, bool) {
	off := m.ControlType().peerCallIDOffset()
	if off == 0 || len(m) < off+2 {
		return 0, false
	}
	return binary.BigEndian.Uint16(m[off:]), true
}

// PPTPError says why a control message header is unusable.
type PPTPError uint8

const (
	PPTPOK          PPTPError = iota
	PPTPShort                 // fewer than 12 bytes
	PPTPBadMagic              // Magic Cookie is not 0x1A2B3C4D
	PPTPNotControl            // Message Type is not 1 (no management messages are defined)
	PPTPUnknownType           // Control Message Type outside 1..15
	PPTPTooShort              // Length below the type's fixed length
)

func (e PPTPError) Error() string {
	return [...]string{"ok", "shorter than the PPTP header", "bad magic cookie",
		"not a control message", "unknown control message type",
		"length below the type's fixed length"}[e]
}

// Validate checks the 12-byte header: magic, message type, control type and
// that Length is at least the type's fixed length. Longer messages are
// accepted and skipped by their Length, as receivers do.
func (m PPTPMessage) Validate() PPTPError {
	switch {
	case len(m) < pptpHeaderLen:
		return PPTPShort
	case m.Magic() != PPTPMagic:
		return PPTPBadMagic
	case m.MessageType() != 1:
		return PPTPNotControl
	case !m.ControlType().Valid():
		return PPTPUnknownType
	case int(m.Length()) < m.ControlType().FixedLen():
		return PPTPTooShort
	}
	return PPTPOK
}

// pptpResultCode is the Result Code of a reply (offset 16 in
// Outgoing-Call-Reply and Incoming-Call-Reply); 1 means success.
func (m PPTPMessage) resultCode() (uint8, bool) {
	switch m.ControlType() {
	case PPTPOutgoingCallReply, PPTPIncomingCallReply:
		if len(m) > 16 {
			return m[16], true
		}
	}
	return 0, false
}

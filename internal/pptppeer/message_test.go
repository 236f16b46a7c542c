package pptppeer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

// rfcMessages lists every control message with what RFC 2637 §2 fixes
// about it, written out here rather than taken from the codec's tables, so
// that a mistake there does not check itself. Offsets -1: no such field.
var rfcMessages = []struct {
	typ     uint16
	name    string
	length  int
	callOff int
	peerOff int
	build   func() Message
}{
	{TypeSCCRQ, "SCCRQ", 156, -1, -1, NewSCCRQ},
	{TypeSCCRP, "SCCRP", 156, -1, -1, func() Message { return NewSCCRP(ResultOK) }},
	{TypeStopCCRQ, "StopCCRQ", 16, -1, -1, func() Message { return NewStopCCRQ(StopReasonNone) }},
	{TypeStopCCRP, "StopCCRP", 16, -1, -1, func() Message { return NewStopCCRP(ResultOK) }},
	{TypeEchoRQ, "EchoRQ", 16, -1, -1, func() Message { return NewEchoRequest(7) }},
	{TypeEchoRP, "EchoRP", 20, -1, -1, func() Message { return NewEchoReply(7, ResultOK) }},
	{TypeOCRQ, "OCRQ", 168, 12, -1, func() Message { return NewOCRQ(0x1111, 1) }},
	{TypeOCRP, "OCRP", 32, 12, 14, func() Message { return NewOCRP(0x2222, 0x1111, ResultOK) }},
	{TypeICRQ, "ICRQ", 220, 12, -1, func() Message { return NewICRQ(0x2222, 1) }},
	{TypeICRP, "ICRP", 24, 12, 14, func() Message { return NewICRP(0x1111, 0x2222, ResultOK) }},
	{TypeICCN, "ICCN", 28, -1, 12, func() Message { return NewICCN(0x1111) }},
	{TypeCCRQ, "CCRQ", 16, 12, -1, func() Message { return NewCCRQ(0x1111) }},
	{TypeCDN, "CDN", 148, 12, -1, func() Message { return NewCDN(0x2222, ResultCDNRequest) }},
	{TypeWEN, "WEN", 40, -1, 12, func() Message { return NewWEN(0x1111) }},
	{TypeSLI, "SLI", 24, -1, 12, func() Message { return NewSLI(0x1111) }},
}

func TestEveryControlMessageTypeHasItsRFCLengthAndRoundTrips(t *testing.T) {
	if len(rfcMessages) != 15 || len(Types()) != 15 {
		t.Fatalf("%d test rows and %d codec types, want 15 each", len(rfcMessages), len(Types()))
	}
	for _, tc := range rfcMessages {
		t.Run(tc.name+" is encoded in its fixed length with a valid header and parses back unchanged", func(t *testing.T) {
			m := tc.build()
			if m.Type != tc.typ || m.Name() != tc.name || TypeName(tc.typ) != tc.name {
				t.Fatalf("constructor gave type %d (%s), want %d (%s)", m.Type, m.Name(), tc.typ, tc.name)
			}
			if len(m.Raw) != tc.length || Length(tc.typ) != tc.length {
				t.Fatalf("%d bytes (Length says %d), want %d", len(m.Raw), Length(tc.typ), tc.length)
			}
			if got := binary.BigEndian.Uint16(m.Raw[0:2]); int(got) != tc.length {
				t.Errorf("length field %d, want %d", got, tc.length)
			}
			if got := binary.BigEndian.Uint16(m.Raw[2:4]); got != 1 {
				t.Errorf("PPTP message type %d, want 1", got)
			}
			if got := binary.BigEndian.Uint32(m.Raw[4:8]); got != 0x1A2B3C4D {
				t.Errorf("magic cookie %#x, want 0x1a2b3c4d", got)
			}
			if got := binary.BigEndian.Uint16(m.Raw[8:10]); got != tc.typ {
				t.Errorf("control message type field %d, want %d", got, tc.typ)
			}
			if got := binary.BigEndian.Uint16(m.Raw[10:12]); got != 0 {
				t.Errorf("reserved0 %d, want 0", got)
			}
			parsed, err := Parse(m.Raw)
			if err != nil || parsed.Type != m.Type || !bytes.Equal(parsed.Raw, m.Raw) {
				t.Fatalf("Parse = %v, %v; want the message back", parsed, err)
			}
			read, err := ReadMessage(bytes.NewReader(m.Raw))
			if err != nil || read.Type != m.Type || !bytes.Equal(read.Raw, m.Raw) {
				t.Fatalf("ReadMessage = %v, %v; want the message back", read, err)
			}
			if read.Summary() != m.Summary() {
				t.Errorf("Summary changed by the round trip: %q vs %q", read.Summary(), m.Summary())
			}
		})
		t.Run(tc.name+" carries its Call IDs at the RFC offsets and nowhere else", func(t *testing.T) {
			m := New(tc.typ)
			id, hasID := m.CallID()
			peer, hasPeer := m.PeerCallID()
			if hasID != (tc.callOff >= 0) || hasPeer != (tc.peerOff >= 0) {
				t.Fatalf("CallID present %v, PeerCallID present %v; want %v, %v", hasID, hasPeer, tc.callOff >= 0, tc.peerOff >= 0)
			}
			if id != 0 || peer != 0 {
				t.Errorf("zero message has Call ID %#x, Peer's Call ID %#x", id, peer)
			}
			if hasID {
				m = m.WithCallID(0xA1B2)
				if got := binary.BigEndian.Uint16(m.Raw[tc.callOff:]); got != 0xA1B2 {
					t.Errorf("Call ID at offset %d is %#x after WithCallID(0xa1b2)", tc.callOff, got)
				}
				if got, _ := m.CallID(); got != 0xA1B2 {
					t.Errorf("CallID() = %#x, want 0xa1b2", got)
				}
			}
			if hasPeer {
				m = m.WithPeerCallID(0xC3D4)
				if got := binary.BigEndian.Uint16(m.Raw[tc.peerOff:]); got != 0xC3D4 {
					t.Errorf("Peer's Call ID at offset %d is %#x after WithPeerCallID(0xc3d4)", tc.peerOff, got)
				}
				if got, _ := m.PeerCallID(); got != 0xC3D4 {
					t.Errorf("PeerCallID() = %#x, want 0xc3d4", got)
				}
			}
			// Nothing but the ID fields may have been touched.
			for i, b := range m.Raw[HeaderLen:] {
				off := HeaderLen + i
				inID := (hasID && off >= tc.callOff && off < tc.callOff+2) || (hasPeer && off >= tc.peerOff && off < tc.peerOff+2)
				if !inID && b != 0 {
					t.Errorf("byte %d is %#x after setting the Call IDs, want 0", off, b)
				}
			}
		})
	}
}

func TestConstructorsFillRealisticValues(t *testing.T) {
	tests := []struct {
		name  string
		m     Message
		field string
		want  uint32
	}{
		{"SCCRQ announces protocol version 1.0", NewSCCRQ(), "version", 0x0100},
		{"SCCRQ offers both framings", NewSCCRQ(), "framing", 3},
		{"SCCRQ from a PNS announces 0 channels", NewSCCRQ(), "maxch", 0},
		{"SCCRP announces protocol version 1.0", NewSCCRP(ResultOK), "version", 0x0100},
		{"SCCRP carries the result code", NewSCCRP(ResultOK), "result", 1},
		{"OCRQ has a receive window", NewOCRQ(1, 9), "window", 64},
		{"OCRQ carries the serial number", NewOCRQ(1, 9), "serial", 9},
		{"OCRP reports a connect speed", NewOCRP(1, 2, ResultOK), "speed", 100_000_000},
		{"Echo-Reply repeats the identifier", NewEchoReply(0xDEADBEEF, ResultOK), "ident", 0xDEADBEEF},
		{"CDN after a CCRQ has result 4 (request)", NewCDN(1, ResultCDNRequest), "result", 4},
		{"WEN counters are non-zero", NewWEN(1), "alignment", 6},
		{"SLI sets the default ACCM", NewSLI(1), "sendaccm", 0xFFFFFFFF},
		{"ICCN reports synchronous framing", NewICCN(1), "framing", 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := tc.m.Field(tc.field)
			if !ok || got != tc.want {
				t.Errorf("%s field %s = %d (present %v), want %d", tc.m.Name(), tc.field, got, ok, tc.want)
			}
		})
	}
	t.Run("SCCRQ and SCCRP name the host vpnmasq-test", func(t *testing.T) {
		for _, m := range []Message{NewSCCRQ(), NewSCCRP(ResultOK)} {
			if host, ok := m.Text("host"); !ok || host != "vpnmasq-test" {
				t.Errorf("%s host %q (present %v), want vpnmasq-test", m.Name(), host, ok)
			}
		}
	})
}

func TestSummaryIgnoresTheCallIDFieldsAndNothingElse(t *testing.T) {
	for _, tc := range rfcMessages {
		t.Run(tc.name+": changing any byte outside the Call ID fields changes Summary, changing them does not", func(t *testing.T) {
			m := tc.build()
			base := m.Summary()
			if !strings.HasPrefix(base, tc.name+" len=") {
				t.Fatalf("Summary %q does not start with %q", base, tc.name+" len=")
			}
			for off := range m.Raw {
				mod := Message{Type: m.Type, Raw: bytes.Clone(m.Raw)}
				mod.Raw[off] ^= 0xFF
				inID := (tc.callOff >= 0 && off >= tc.callOff && off < tc.callOff+2) ||
					(tc.peerOff >= 0 && off >= tc.peerOff && off < tc.peerOff+2)
				changed := mod.Summary() != base
				if inID && changed {
					t.Errorf("flipping byte %d (a Call ID field) changed Summary to %q", off, mod.Summary())
				}
				if !inID && !changed {
					t.Errorf("flipping byte %d left Summary unchanged: %q", off, base)
				}
			}
		})
	}
	t.Run("Summary hides the values but String shows them", func(t *testing.T) {
		m := NewOCRP(0x5000, 0x0101, ResultOK)
		if s := m.Summary(); strings.Contains(s, "0x5000") || !strings.Contains(s, "callid=* peer=*") {
			t.Errorf("Summary %q", s)
		}
		if s := m.String(); !strings.Contains(s, "callid=0x5000 peer=0x0101") {
			t.Errorf("String %q", s)
		}
	})
}

func TestReadMessageRejectsWhatIsNotAControlMessage(t *testing.T) {
	valid := NewEchoRequest(1).Raw
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(valid)) }
	tests := []struct {
		name      string
		stream    []byte
		malformed bool  // wraps ErrMalformed
		want      error // or is this error
	}{
		{"a bad magic cookie is rejected", mutate(func(b []byte) []byte { b[7] ^= 1; return b }), true, nil},
		{"a length field shorter than the type's is rejected", mutate(func(b []byte) []byte { b[1] = 12; return b }), true, nil},
		{"a length field longer than the type's is rejected", mutate(func(b []byte) []byte { b[1] = 17; return append(b, 0) }), true, nil},
		{"a management message (type 2) is rejected", mutate(func(b []byte) []byte { b[3] = 2; return b }), true, nil},
		{"control message type 0 is rejected", mutate(func(b []byte) []byte { b[9] = 0; return b }), true, nil},
		{"control message type 16 is rejected", mutate(func(b []byte) []byte { b[9] = 16; return b }), true, nil},
		{"an empty stream is a clean EOF", nil, false, io.EOF},
		{"a stream ending inside the header is an unexpected EOF", valid[:5], false, io.ErrUnexpectedEOF},
		{"a stream ending inside the body is an unexpected EOF", valid[:14], false, io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ReadMessage(bytes.NewReader(tc.stream))
			if err == nil {
				t.Fatalf("ReadMessage accepted %x as %v", tc.stream, m)
			}
			if tc.malformed && !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("consecutive messages in one stream are read one by one", func(t *testing.T) {
		want := []Message{NewSCCRQ(), NewEchoRequest(3), NewOCRQ(0x0101, 1)}
		var stream []byte
		for _, m := range want {
			stream = append(stream, m.Raw...)
		}
		r := bytes.NewReader(stream)
		for i, w := range want {
			got, err := ReadMessage(r)
			if err != nil || !bytes.Equal(got.Raw, w.Raw) {
				t.Fatalf("message %d: %v, %v; want %v", i, got, err, w)
			}
		}
		if _, err := ReadMessage(r); err != io.EOF {
			t.Errorf("after the last message: %v, want io.EOF", err)
		}
	})
	t.Run("Parse rejects a message with bytes missing or extra", func(t *testing.T) {
		for _, b := range [][]byte{valid[:15], append(bytes.Clone(valid), 0), valid[:3]} {
			if _, err := Parse(b); !errors.Is(err, ErrMalformed) {
				t.Errorf("Parse(%d bytes) error %v, want ErrMalformed", len(b), err)
			}
		}
	})
}

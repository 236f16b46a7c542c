package pptppeer

import (
	"bytes"
	"errors"
	"testing"
)

func TestGREPacketsAreEncodedAsRFC2637Requires(t *testing.T) {
	tests := []struct {
		name      string
		callID    uint16
		seq, ack  uint32
		payload   []byte
		wantFirst []byte // flags, version, protocol
		wantLen   int
	}{
		{"a data packet carries K and S, version 1, protocol 0x880B and its sequence number", 0x0101, 7, 0, []byte("hello"),
			[]byte{0x30, 0x01, 0x88, 0x0B}, 12 + 5},
		{"a data packet that acknowledges also sets A and carries the ack number", 0x5000, 8, 3, []byte("x"),
			[]byte{0x30, 0x81, 0x88, 0x0B}, 16 + 1},
		{"an acknowledgment-only packet has no sequence number", 0xFFFF, 99, 4, nil,
			[]byte{0x20, 0x81, 0x88, 0x0B}, 12},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := MarshalGRE(tc.callID, tc.seq, tc.ack, tc.payload)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b[:4], tc.wantFirst) || len(b) != tc.wantLen {
				t.Fatalf("encoded % x (%d bytes), want to start % x and be %d bytes", b, len(b), tc.wantFirst, tc.wantLen)
			}
			if pl := int(b[4])<<8 | int(b[5]); pl != len(tc.payload) {
				t.Errorf("payload length field %d, want %d", pl, len(tc.payload))
			}
			if id := uint16(b[6])<<8 | uint16(b[7]); id != tc.callID {
				t.Errorf("key call ID %#x, want %#x", id, tc.callID)
			}
			p, err := ParseGRE(b)
			if err != nil {
				t.Fatalf("ParseGRE of its own encoding: %v", err)
			}
			wantSeq := len(tc.payload) > 0
			if p.CallID != tc.callID || p.HasSeq != wantSeq || (wantSeq && p.Seq != tc.seq) ||
				p.HasAck != (tc.ack != 0) || p.Ack != tc.ack || !bytes.Equal(p.Payload, tc.payload) {
				t.Errorf("parsed %v, want call %#x seq %d (present %v) ack %d payload %q", p, tc.callID, tc.seq, wantSeq, tc.ack, tc.payload)
			}
		})
	}
	t.Run("a payload over 65535 bytes is refused, not truncated", func(t *testing.T) {
		if _, err := MarshalGRE(1, 1, 0, make([]byte, 0x10000)); err == nil {
			t.Error("MarshalGRE accepted a 65536-byte payload")
		}
	})
}

func TestParseGRERejectsMalformedPacketsWithoutPanicking(t *testing.T) {
	good, err := MarshalGRE(0x0101, 1, 2, []byte("data"))
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	tests := []struct {
		name   string
		packet []byte
	}{
		{"an empty packet", nil},
		{"a 7-byte packet", good[:7]},
		{"version 0 (plain GRE)", mutate(func(b []byte) []byte { b[1] &^= 0x07; return b })},
		{"protocol IPv4 instead of PPP", mutate(func(b []byte) []byte { b[2], b[3] = 0x08, 0x00; return b })},
		{"the checksum bit", mutate(func(b []byte) []byte { b[0] |= 0x80; return b })},
		{"the routing bit", mutate(func(b []byte) []byte { b[0] |= 0x40; return b })},
		{"no key bit", mutate(func(b []byte) []byte { b[0] &^= 0x20; return b })},
		{"the strict source route bit", mutate(func(b []byte) []byte { b[0] |= 0x08; return b })},
		{"a recursion count", mutate(func(b []byte) []byte { b[0] |= 0x01; return b })},
		{"reserved flags", mutate(func(b []byte) []byte { b[1] |= 0x10; return b })},
		{"a payload length larger than the payload", mutate(func(b []byte) []byte { b[5]++; return b })},
		{"a payload length smaller than the payload", mutate(func(b []byte) []byte { b[5]--; return b })},
		{"a payload without sequence number", mutate(func(b []byte) []byte { b[0] &^= 0x10; return b })},
	}
	for _, tc := range tests {
		t.Run(tc.name+" is an error", func(t *testing.T) {
			if p, err := ParseGRE(tc.packet); !errors.Is(err, ErrMalformedGRE) {
				t.Errorf("ParseGRE(% x) = %v, %v; want ErrMalformedGRE", tc.packet, p, err)
			}
		})
	}
	t.Run("every truncation of a valid packet is an error", func(t *testing.T) {
		for n := range len(good) {
			if _, err := ParseGRE(good[:n]); !errors.Is(err, ErrMalformedGRE) {
				t.Errorf("ParseGRE of the first %d of %d bytes: %v, want ErrMalformedGRE", n, len(good), err)
			}
		}
	})
	t.Run("any single corrupted byte yields an error or a packet that encodes back to the same bytes", func(t *testing.T) {
		for off := range good {
			for _, x := range []byte{0x01, 0x80, 0xFF} {
				b := bytes.Clone(good)
				b[off] ^= x
				p, err := ParseGRE(b)
				if err != nil {
					continue
				}
				again, merr := MarshalGRE(p.CallID, p.Seq, p.Ack, p.Payload)
				if merr != nil || !bytes.Equal(again, b) {
					t.Errorf("byte %d ^ %#x: parsed %v, which encodes to % x (%v), not % x", off, x, p, again, merr, b)
				}
			}
		}
	})
}

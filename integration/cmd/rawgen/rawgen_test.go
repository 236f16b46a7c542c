package main

import (
	"bytes"
	"encoding/binary"
	"testing"

	"unsafe"

	"golang.org/x/sys/unix"
)

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"send"},
		{"send", "tcp", "198.18.0.2", "1400", "5"},
		{"send", "udp", "198.18.0.2", "1500", "5"},
		{"send", "esp", "::1", "1400", "5"},
		{"send", "esp", "198.18.0.2", "8", "5"},
		{"send", "gre", "198.18.0.2", "1400", "0"},
		{"count", "esp"},
		{"count", "gre", "-1"},
		{"flood", "esp", "1"},
	} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != 2 {
			t.Errorf("rawgen %q: exit %d, want 2 (stderr %q)", args, code, errOut.String())
		}
	}
}

func TestPayloads(t *testing.T) {
	b, stamp := payload(unix.IPPROTO_ESP, 1400)
	stamp(b, 7)
	if len(b) != 1400 || binary.BigEndian.Uint32(b[0:]) != espSPI || binary.BigEndian.Uint32(b[4:]) != 7 {
		t.Errorf("ESP payload starts % x, want SPI %#x and sequence 7", b[:8], espSPI)
	}
	b, stamp = payload(unix.IPPROTO_GRE, 1400)
	stamp(b, 9)
	// Enhanced GRE (RFC 2637 4.1): key and sequence present, version 1,
	// protocol 0x880B, payload length after the 12-byte header, Call ID.
	want := []byte{0x30, 0x01, 0x88, 0x0b, 0x05, 0x6c, 0x42, 0x42, 0, 0, 0, 9}
	if len(b) != 1400 || !bytes.Equal(b[:12], want) {
		t.Errorf("GRE header % x, want % x", b[:12], want)
	}
}

func TestDatagramsCountsTheSegmentsOfASuperPacket(t *testing.T) {
	cmsg := func(seg uint32) []byte {
		b := make([]byte, unix.CmsgSpace(4))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = unix.SOL_UDP, unix.UDP_GRO
		h.SetLen(unix.CmsgLen(4))
		binary.NativeEndian.PutUint32(b[unix.CmsgLen(0):], seg)
		return b
	}
	for _, tc := range []struct {
		name string
		size int
		oob  []byte
		want uint64
	}{
		{"a datagram without a control message is one", 1400, nil, 1},
		{"44 segments of 1400 bytes are 44", 44 * 1400, cmsg(1400), 44},
		{"a short last segment counts", 43*1400 + 1, cmsg(1400), 44},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := datagrams(tc.size, tc.oob); got != tc.want {
				t.Fatalf("got %d, want %d", got, tc.want)
			}
		})
	}
}

package integration

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/lab"
	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// Forged packets for the hardening tests: whole IPv4 packets built here and
// sent through a raw socket (IPPROTO_RAW, so the header is ours) opened
// inside one of the lab's namespaces. The kernel routes them by destination
// like any other packet of that namespace, so they never leave the lab.

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

// rawSender sends forged IPv4 packets from inside a namespace.
type rawSender struct {
	fd int
}

// openRawSender opens an IPPROTO_RAW socket in ns. Close it after use.
func openRawSender(ns *lab.NS) (*rawSender, error) {
	fd := -1
	err := ns.Do(func() error {
		var err error
		fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.IPPROTO_RAW)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("raw socket in %s: %w", ns.Name, err)
	}
	return &rawSender{fd: fd}, nil
}

// send transmits one whole IPv4 packet (header included) to its destination.
// A full socket buffer is waited out briefly rather than reported.
func (s *rawSender) send(pkt []byte) error {
	dst := syscall.SockaddrInet4{}
	copy(dst.Addr[:], pkt[16:20])
	for try := 0; ; try++ {
		err := syscall.Sendto(s.fd, pkt, 0, &dst)
		if err == nil {
			return nil
		}
		if (errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.EAGAIN)) && try < 100 {
			time.Sleep(time.Millisecond)
			continue
		}
		return err
	}
}

func (s *rawSender) Close() error { return syscall.Close(s.fd) }

// forgedIPv4 is the IPv4 header of every forged packet: DF set, and an ID
// that differs with the length (there are no fragments to tell apart).
func forgedIPv4(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: proto, ID: uint16(len(l4) * 7919),
		Flags: header.IPv4FlagDontFragment}, l4)
}

// tcpPacket builds a TCP segment without options.
func tcpPacket(src, dst netip.AddrPort, seq, ack uint32, flags uint8, window uint16, payload []byte) []byte {
	return forgedIPv4(src.Addr(), dst.Addr(), syscall.IPPROTO_TCP,
		testpacket.TCP(testpacket.TCPHeader{Src: src, Dst: dst, Seq: seq, Ack: ack, Flags: header.TCPFlags(flags), Window: window}, payload))
}

// udpPacket builds a UDP datagram.
func udpPacket(src, dst netip.AddrPort, payload []byte) []byte {
	return forgedIPv4(src.Addr(), dst.Addr(), syscall.IPPROTO_UDP, testpacket.UDP(src, dst, payload))
}

// tcpSeen is one TCP segment a namespace received.
type tcpSeen struct {
	Src, Dst netip.AddrPort
	Seq, Ack uint32
	Flags    uint8
	Window   uint16
	Len      int // payload bytes
}

// tcpSniffer receives a copy of every TCP segment delivered to a
// namespace's own stack (a raw IPPROTO_TCP socket), without taking it away
// from the real sockets.
type tcpSniffer struct {
	fd int
}

func openTCPSniffer(ns *lab.NS) (*tcpSniffer, error) {
	fd := -1
	err := ns.Do(func() error {
		var err error
		fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.IPPROTO_TCP)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("raw TCP socket in %s: %w", ns.Name, err)
	}
	tv := syscall.NsecToTimeval(int64(300 * time.Millisecond))
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	return &tcpSniffer{fd: fd}, nil
}

// drain returns the segments received so far, reading until the socket has
// been quiet for 300 ms.
func (s *tcpSniffer) drain() []tcpSeen {
	var out []tcpSeen
	buf := make([]byte, 65536)
	for {
		n, _, err := syscall.Recvfrom(s.fd, buf, 0)
		if err != nil {
			return out
		}
		p := buf[:n]
		if n < 20 || p[0]>>4 != 4 {
			continue
		}
		ihl := int(p[0]&0x0f) * 4
		if n < ihl+20 {
			continue
		}
		tcp := p[ihl:]
		doff := int(tcp[12]>>4) * 4
		src, _ := netip.AddrFromSlice(p[12:16])
		dst, _ := netip.AddrFromSlice(p[16:20])
		total := int(binary.BigEndian.Uint16(p[2:]))
		out = append(out, tcpSeen{
			Src:    netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:])),
			Dst:    netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:])),
			Seq:    binary.BigEndian.Uint32(tcp[4:]),
			Ack:    binary.BigEndian.Uint32(tcp[8:]),
			Flags:  tcp[13],
			Window: binary.BigEndian.Uint16(tcp[14:]),
			Len:    total - ihl - doff,
		})
	}
}

func (s *tcpSniffer) Close() error { return syscall.Close(s.fd) }

package datapath

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/offload"
)

// errDevicesClosed ends the fake transports' reads once their script is
// played.
var errDevicesClosed = errors.New("closed")

// packet is one scripted read: a packet with its offload header.
type packet struct {
	buf []byte // Headroom, then the packet
	n   int
	hdr offload.Header
}

// script hands out its packets in one batch, then reports closed.
type script struct{ packets []packet }

func (s *script) read(bufs [][]byte, sizes []int, hdrs []offload.Header) (int, error) {
	if len(s.packets) == 0 {
		return 0, errDevicesClosed
	}
	n := 0
	for ; n < len(s.packets) && n < len(bufs); n++ {
		p := s.packets[n]
		copy(bufs[n], p.buf[:Headroom+p.n])
		sizes[n] = p.n
		if hdrs != nil {
			hdrs[n] = p.hdr
		}
	}
	s.packets = s.packets[n:]
	return n, nil
}

// calls records what the fakes were asked to write, in order.
type calls struct{ log []string }

func (c *calls) add(format string, args ...any) { c.log = append(c.log, fmt.Sprintf(format, args...)) }

type fakeTUN struct {
	script
	*calls
	written [][]byte // packets written, wire and super
}

func (t *fakeTUN) Read(bufs [][]byte, sizes []int, _ int) (int, error) {
	return t.read(bufs, sizes, nil)
}
func (t *fakeTUN) ReadSuperPackets(bufs [][]byte, sizes []int, hdrs []offload.Header, _ int) (int, error) {
	return t.read(bufs, sizes, hdrs)
}
func (t *fakeTUN) Write(bufs [][]byte, offset int) (int, error) {
	t.add("tun write %d", len(bufs))
	for _, b := range bufs {
		t.written = append(t.written, append([]byte(nil), b[offset:]...))
	}
	return len(bufs), nil
}
func (t *fakeTUN) WriteSuperPacket(buf []byte, h offload.Header, offset int) error {
	t.add("tun super-packet gso_size %d", h.GSOSize)
	t.written = append(t.written, append([]byte(nil), buf[offset:]...))
	return nil
}
func (t *fakeTUN) BatchSize() int        { return 8 }
func (t *fakeTUN) SuperPackets() bool    { return true }
func (t *fakeTUN) UDPSuperPackets() bool { return true }

type fakeWAN struct {
	script
	*calls
	written [][]byte
}

func (w *fakeWAN) Read(bufs [][]byte, sizes []int, hdrs []offload.Header, _ int) (int, error) {
	return w.read(bufs, sizes, hdrs)
}
func (w *fakeWAN) Write(bufs [][]byte, offset int) (int, error) {
	w.add("wan write %d", len(bufs))
	for _, b := range bufs {
		w.written = append(w.written, append([]byte(nil), b[offset:]...))
	}
	return len(bufs), nil
}
func (w *fakeWAN) WriteSuperPackets(bufs [][]byte, hdrs []offload.Header, offset int) (int, error) {
	w.add("wan super-packets %d", len(bufs))
	for _, b := range bufs {
		w.written = append(w.written, append([]byte(nil), b[offset:]...))
	}
	return len(bufs), nil
}
func (w *fakeWAN) BatchSize() int          { return 8 }
func (w *fakeWAN) SendsSuperPackets() bool { return true }

var (
	_ SuperPacketTUN = (*fakeTUN)(nil)
	_ SuperPacketWAN = (*fakeWAN)(nil)
)

func udp(src, dst [4]byte, sport, dport uint16) packet {
	buf, n := udpPacket(src, dst, sport, dport, 20, 63, false)
	return packet{buf: buf, n: n}
}

func TestLoopsKeepPacketOrderAcrossWriters(t *testing.T) {
	c := testCore(t, 1500)
	log := &calls{}
	tun, wan := &fakeTUN{calls: log}, &fakeWAN{calls: log}
	c.Attach(Devices{TUN: tun, WAN: wan, Closed: func(err error) bool { return errors.Is(err, errDevicesClosed) }})

	super, n, h := tcpSuperPacket(lanHost, remote, 40000, 5201, 20000, 1448)
	tun.packets = []packet{
		udp(lanHost, remote, 40001, 53),
		{buf: super, n: n, hdr: h},
		udp(lanHost, remote, 40002, 53),
		udp(lanHost, remote, 40003, 53),
	}
	if err := c.RunLAN(); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(log.log, "; "), "wan write 1; wan super-packets 1; wan write 2"; got != want {
		t.Fatalf("writes %q, want %q", got, want)
	}
	sent := header.IPv4(wan.written[1])
	if sent.SourceAddress().As4() != wanAddr || int(sent.TotalLength()) != n {
		t.Fatalf("super-packet left as %v, %d bytes", sent.SourceAddress(), sent.TotalLength())
	}

	// The reply: a super-packet for the mapping, kept whole by the WAN
	// transport, goes into the TUN whole; a wire packet beside it goes
	// through Write.
	log.log = nil
	mapped := header.TCP(sent.Payload()).SourcePort()
	reply, rn, rh := tcpSuperPacket(remote, wanAddr, 5201, mapped, 20000, 1448)
	wan.packets = []packet{{buf: reply, n: rn, hdr: rh}, udp(remote, wanAddr, 53, header.UDP(header.IPv4(wan.written[0]).Payload()).SourcePort())}
	if err := c.RunWAN(); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(log.log, "; "), "tun super-packet gso_size 1448; tun write 1"; got != want {
		t.Fatalf("writes %q, want %q", got, want)
	}
	in := header.IPv4(tun.written[0])
	if in.DestinationAddress().As4() != lanHost || header.TCP(in.Payload()).DestinationPort() != 40000 {
		t.Errorf("super-packet delivered to %v:%d", in.DestinationAddress(), header.TCP(in.Payload()).DestinationPort())
	}
	out, in2 := c.Stats().Traffic[LANToWAN][nat.ProtoTCP].SuperPackets.Load(), c.Stats().Traffic[WANToLAN][nat.ProtoTCP].SuperPackets.Load()
	if out != 1 || in2 != 1 {
		t.Errorf("super-packets counted: %d out, %d in; want 1 and 1", out, in2)
	}
}

func TestLoopsWithoutASuperPacketTUNMoveWirePacketsOnly(t *testing.T) {
	c := testCore(t, 1500)
	log := &calls{}
	tun, wan := &fakeTUN{calls: log}, &fakeWAN{calls: log}
	// A TUN without the capability: the path reads through Read and
	// never hands the WAN a super-packet.
	c.Attach(Devices{TUN: plainTUN{tun}, WAN: wan, Closed: func(err error) bool { return errors.Is(err, errDevicesClosed) }})
	if c.dev.superTUN != nil || c.dev.superWAN != nil {
		t.Fatal("super-packets enabled without a TUN that moves them")
	}
	tun.packets = []packet{udp(lanHost, remote, 40001, 53)}
	if err := c.RunLAN(); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(log.log, "; "), "wan write 1"; got != want {
		t.Fatalf("writes %q, want %q", got, want)
	}
}

// plainTUN hides the fake's super-packet methods.
type plainTUN struct{ t *fakeTUN }

func (p plainTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return p.t.Read(bufs, sizes, offset)
}
func (p plainTUN) Write(bufs [][]byte, offset int) (int, error) { return p.t.Write(bufs, offset) }
func (p plainTUN) BatchSize() int                               { return p.t.BatchSize() }

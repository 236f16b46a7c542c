// Package tundev is the TUN device the kernel forwards LAN traffic into. It
// wraps wireguard-go's TUN (created with a virtio-net header and TCP and UDP
// segmentation offload) and adds what the packet path needs beyond it:
// reading and writing TCP and UDP super-packets whole. It implements
// datapath.SuperPacketTUN.
package tundev

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/vpnmasq/vpnmasq/datapath"
	"github.com/vpnmasq/vpnmasq/offload"
)

// Device is an open TUN device.
//
// The kernel hands a forwarded TCP stream over as super-packets of up to
// 64 KiB, and a UDP flow too when the receiving interface coalesced its
// datagrams (UDP GRO forwarding) and the device has UDP segmentation
// offload (TUN_F_USO4, Linux 6.2 and later); wireguard-go's Read splits
// each into MTU-sized segments and checksums them in software.
// ReadSuperPackets reads the device's file directly instead and keeps the
// super-packet whole: the packet path translates its headers once, and the
// WAN side sends it as one frame.
type Device struct {
	dev tun.Device
	// super reads and writes super-packets; nil when the device has no
	// virtio-net header (a kernel without TUN offloads).
	super *superIO
	// udp is set when the device has UDP segmentation offload: UDP
	// super-packets may be written to it.
	udp bool
}

var _ datapath.SuperPacketTUN = (*Device)(nil)

// Open creates the TUN device name with the given MTU, in the network
// namespace of the calling thread.
func Open(name string, mtu int) (*Device, error) {
	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, err
	}
	go func() {
		// The device reports link events on a channel that blocks its
		// netlink listener when nobody reads it.
		for range dev.Events() {
		}
	}()
	d := &Device{dev: dev}
	if d.super, err = newSuperIO(dev); err != nil {
		dev.Close()
		return nil, err
	}
	d.udp = d.super != nil && hasUDPOffload(d.super.conn)
	return d, nil
}

// Read implements datapath.TUN: wire packets, super-packets split by
// wireguard-go.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := d.dev.Read(bufs, sizes, offset)
	if errors.Is(err, tun.ErrTooManySegments) {
		err = fmt.Errorf("%w: %w", datapath.ErrDropped, err)
	}
	return n, err
}

// Write implements datapath.TUN; it uses the offload.HeaderLen bytes
// before offset.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) { return d.dev.Write(bufs, offset) }

// BatchSize is the most packets one Read returns.
func (d *Device) BatchSize() int { return d.dev.BatchSize() }

// Close closes the device.
func (d *Device) Close() error { return d.dev.Close() }

// SuperPackets reports whether ReadSuperPackets and WriteSuperPacket work.
func (d *Device) SuperPackets() bool { return d.super != nil }

// UDPSuperPackets reports whether WriteSuperPacket takes UDP super-packets.
func (d *Device) UDPSuperPackets() bool { return d.udp }

// tunOffloads are the offloads wireguard-go asks of the device when it can:
// checksum, TCP and UDP segmentation.
const tunOffloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_USO4 | unix.TUN_F_USO6

// hasUDPOffload reports whether the device takes UDP segmentation offload.
// The kernel offers no way to read a TUN's offloads, so it asks for the set
// wireguard-go asked for: a kernel without UDP segmentation offload refuses
// the unknown flags and changes nothing (what TUNSETOFFLOAD documents as the
// way to test for a feature), one with it keeps what it already had.
func hasUDPOffload(conn syscall.RawConn) bool {
	var err error
	if cerr := conn.Control(func(fd uintptr) {
		err = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, tunOffloads)
	}); cerr != nil {
		return false
	}
	return err == nil
}

// ReadSuperPackets implements datapath.SuperPacketTUN. Call it only when
// SuperPackets reports true.
func (d *Device) ReadSuperPackets(bufs [][]byte, sizes []int, hdrs []offload.Header, offset int) (int, error) {
	return d.super.read(bufs, sizes, hdrs, offset)
}

// WriteSuperPacket implements datapath.SuperPacketTUN. Call it only when
// SuperPackets reports true.
func (d *Device) WriteSuperPacket(buf []byte, h offload.Header, offset int) error {
	frame := buf[offset-offload.HeaderLen:]
	h.Encode(frame)
	_, err := d.super.f.Write(frame)
	return err
}

// superIO reads the device's file directly, each packet preceded by its
// virtio-net header.
type superIO struct {
	f    *os.File
	conn syscall.RawConn

	// The state of one read, kept here so the poller callback is a
	// method value made once, not a closure allocated per read. Reads are
	// not concurrent (datapath.TUN), so nothing guards it.
	readFn    func(fd uintptr) bool
	bufs      [][]byte
	sizes     []int
	hdrs      []offload.Header
	offset, n int
	readErr   error
}

// newSuperIO returns nil when the device has no virtio-net header: the
// packet path then uses wireguard-go's Read.
func newSuperIO(dev tun.Device) (*superIO, error) {
	if dev.BatchSize() <= 1 {
		return nil, nil
	}
	f := dev.File()
	conn, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	t := &superIO{f: f, conn: conn}
	t.readFn = t.readQueued
	return t, nil
}

// read fills bufs[i][offset:] with one packet, sizes[i] with its length and
// hdrs[i] with its virtio-net header (read into the headroom before
// offset). It waits for the first packet and returns as many as are queued,
// up to len(bufs).
func (t *superIO) read(bufs [][]byte, sizes []int, hdrs []offload.Header, offset int) (int, error) {
	t.bufs, t.sizes, t.hdrs, t.offset, t.n, t.readErr = bufs, sizes, hdrs, offset, 0, nil
	err := t.conn.Read(t.readFn)
	n, rerr := t.n, t.readErr
	t.bufs, t.sizes, t.hdrs = nil, nil, nil
	if err != nil {
		return 0, err
	}
	if rerr != nil && n == 0 {
		if errors.Is(rerr, unix.EBADFD) {
			return 0, os.ErrClosed
		}
		return 0, rerr
	}
	return n, nil
}

// readQueued reads packets until the queue is empty or the buffers are
// full; it asks the poller to wait only while it has none.
func (t *superIO) readQueued(fd uintptr) bool {
	for t.n < min(len(t.bufs), len(t.sizes), len(t.hdrs)) {
		frame := t.bufs[t.n][t.offset-offload.HeaderLen:]
		r, e := unix.Read(int(fd), frame)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return t.n > 0
		case e != nil:
			t.readErr = e
			return true
		case r <= offload.HeaderLen:
			continue // no packet behind the header
		}
		t.hdrs[t.n] = offload.Decode(frame)
		t.sizes[t.n] = r - offload.HeaderLen
		t.n++
	}
	return true
}

package router

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// tunIO reads the TUN device's packets whole. wireguard-go creates the
// device with a virtio-net header and TCP (and UDP) segmentation offload, so
// the kernel hands over a forwarded TCP stream as GSO super-packets of up
// to 64 KiB; wireguard-go's Read splits each into MTU-sized segments and
// checksums them in software. Reading the device's file directly keeps the
// super-packet whole: the routing core translates its headers once, and
// the WAN side sends it as one frame. Packets that cannot go whole are split
// here (splitGSO), exactly as Read would have.
type tunIO struct {
	f    *os.File
	conn syscall.RawConn

	// The state of one read, kept here so the poller callback is a
	// method value made once, not a closure allocated per read.
	readFn    func(fd uintptr) bool
	bufs      [][]byte
	sizes     []int
	offset, n int
	readErr   error
}

// newTunIO returns nil when the device has no virtio-net header (a kernel
// without TUN offloads): the router then uses wireguard-go's Read.
func newTunIO(dev tun.Device) (*tunIO, error) {
	if dev.BatchSize() <= 1 {
		return nil, nil
	}
	f := dev.File()
	conn, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	t := &tunIO{f: f, conn: conn}
	t.readFn = t.readQueued
	return t, nil
}

// read fills bufs[i][offset-vnetHdrLen:] with one packet's virtio-net
// header and the packet, and sizes[i] with the packet's length. It waits for
// the first packet and returns as many as are queued, up to len(bufs).
func (t *tunIO) read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.bufs, t.sizes, t.offset, t.n, t.readErr = bufs, sizes, offset, 0, nil
	err := t.conn.Read(t.readFn)
	n, rerr := t.n, t.readErr
	t.bufs, t.sizes = nil, nil
	if err != nil {
		return 0, err
	}
	if rerr != nil && n == 0 {
		if errors.Is(rerr, unix.EBADFD) {
			return 0, os.ErrClosed
		}
		return 0, fmt.Errorf("reading TUN: %w", rerr)
	}
	return n, nil
}

// readQueued reads packets until the queue is empty or the buffers are
// full; it asks the poller to wait only while it has none.
func (t *tunIO) readQueued(fd uintptr) bool {
	for t.n < len(t.bufs) {
		r, e := unix.Read(int(fd), t.bufs[t.n][t.offset-vnetHdrLen:])
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return t.n > 0
		case e != nil:
			t.readErr = e
			return true
		case r <= vnetHdrLen:
			continue // no packet behind the header
		}
		t.sizes[t.n] = r - vnetHdrLen
		t.n++
	}
	return true
}

// write writes one packet preceded by its virtio-net header.
func (t *tunIO) write(frame []byte) error {
	_, err := t.f.Write(frame)
	return err
}

package wan

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/offload"
)

// BatchSize is the most packets one Read returns.
func (w *Transport) BatchSize() int { return batchSize }

// Read implements datapath.WAN.
func (w *Transport) Read(bufs [][]byte, sizes []int, hdrs []offload.Header, offset int) (int, error) {
	w.rxMu.Lock()
	defer w.rxMu.Unlock()
	k := min(len(bufs), len(sizes), len(hdrs), batchSize)
	if k == 0 {
		return 0, errors.New("wan read: no buffers")
	}
	for i := range k {
		if offset < 0 || offset >= len(bufs[i]) {
			return 0, fmt.Errorf("wan read: offset %d leaves no room in buffer %d of %d bytes", offset, i, len(bufs[i]))
		}
	}
	if len(w.pending) > 0 {
		return w.deliverPending(bufs, sizes, hdrs, offset, 0, k), nil
	}
	for i := range k {
		b := bufs[i][offset:]
		iov := &w.rxIovs[3*i+1]
		if w.linkHdr > 0 {
			iov = &w.rxIovs[3*i+2]
		}
		iov.Base = &b[0]
		iov.SetLen(len(b))
		w.rxMsgs[i].Hdr.Namelen = unix.SizeofSockaddrLinklayer
		w.rxMsgs[i].Hdr.Flags = 0
	}
	defer runtime.KeepAlive(bufs)
	for {
		var got int
		var errno syscall.Errno
		err := w.rxConn.Read(func(fd uintptr) bool {
			for {
				r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&w.rxMsgs[0])), uintptr(k), unix.MSG_DONTWAIT, 0, 0)
				switch e {
				case unix.EINTR:
					continue
				case unix.EAGAIN:
					return false // wait in the poller
				}
				got, errno = int(r), e
				return true
			}
		})
		if err != nil {
			return 0, w.ioError(err)
		}
		if errno == unix.ENETDOWN {
			// The WAN link went down (the kernel reports it once on
			// the socket). The socket stays bound and takes packets
			// again when the link comes back: keep reading.
			continue
		}
		if errno == unix.EINVAL {
			// The kernel could not describe a packet's offload state in a
			// virtio_net_hdr (an unusual GSO type) and dropped it.
			w.malformed.Add(1)
			continue
		}
		if errno != 0 {
			return 0, os.NewSyscallError("recvmmsg", errno)
		}
		if n := w.sortReceived(bufs, sizes, hdrs, offset, got, k); n > 0 {
			return n, nil
		}
	}
}

// sortReceived turns the got messages recvmmsg left in bufs[:got] into the
// packets to return: it drops what is not ours or not sane, trims link
// padding, completes checksums, splits super-packets (or keeps them whole),
// and compacts the result to the front of bufs. What does not fit goes to
// w.pending, and once anything did, everything after it does too, so
// arrival order is kept.
func (w *Transport) sortReceived(bufs [][]byte, sizes []int, hdrs []offload.Header, offset, got, k int) int {
	n := 0
	for i := range got {
		m := &w.rxMsgs[i]
		if m.Hdr.Flags&unix.MSG_TRUNC != 0 || int(m.Len) < offload.HeaderLen+w.linkHdr {
			w.truncated.Add(1)
			continue
		}
		// Our own transmissions and frames for other hosts' link
		// addresses (promiscuous mode) are not ours to route: the host's
		// IP layer drops the latter too.
		switch w.rxAddrs[i].Pkttype {
		case unix.PACKET_OUTGOING, unix.PACKET_OTHERHOST:
			continue
		}
		pkt := bufs[i][offset : offset+int(m.Len)-offload.HeaderLen-w.linkHdr]
		// Frames shorter than the link minimum arrive padded; the IPv4
		// total length says where the packet ends.
		ip := header.IPv4(pkt)
		if !ip.IsValid(len(pkt)) {
			w.malformed.Add(1)
			continue
		}
		pkt = pkt[:ip.TotalLength()]
		h := offload.Decode(w.rxVnet[i][:])

		// The packet (or its first segment) goes to the next caller slot
		// while nothing is pending, else it is staged behind the pending.
		before := len(w.pending)
		staged := before > 0
		var dst []byte
		if staged {
			dst = w.stage(len(pkt))
			copy(dst, pkt)
		} else {
			dst = bufs[n][offset : offset+len(pkt)]
			if n != i {
				copy(dst, pkt)
			}
		}
		if !staged && w.opts.KeepSuperPackets {
			if th, ok := offload.ForTUN(dst, h, w.opts.KeepUDPSuperPackets); ok {
				w.superKept.Add(1)
				sizes[n], hdrs[n] = len(dst), th
				n++
				continue
			}
		}
		size, err := w.finishReceived(dst, h, ip.Protocol())
		if err != nil {
			w.malformed.Add(1)
			w.unstage(before)
			continue
		}
		if staged {
			w.pending[before] = dst[:size]
			continue
		}
		sizes[n], hdrs[n] = size, offload.Header{}
		n++
	}
	return w.deliverPending(bufs, sizes, hdrs, offset, n, k)
}

// finishReceived makes pkt a wire packet: completes a checksum left to
// offload, or splits a super-packet (segments after the first are staged).
// It returns the length of pkt that remains.
func (w *Transport) finishReceived(pkt []byte, h offload.Header, proto uint8) (int, error) {
	switch {
	case h.IsSuperPacket():
		first, segs, err := offload.Split(pkt, h, w.stage)
		if err != nil {
			return 0, err
		}
		if segs > 1 {
			w.segmented.Add(1)
		}
		return first, nil
	case h.NeedsChecksum():
		// csum_start counts from the start of the link header.
		return len(pkt), offload.CompleteChecksum(pkt, int(h.CsumStart)-w.linkHdr, int(h.CsumOffset), proto)
	}
	return len(pkt), nil
}

// stage appends a buffer of size bytes to the pending queue.
func (w *Transport) stage(size int) []byte {
	var b []byte
	if last := len(w.spare) - 1; last >= 0 && cap(w.spare[last]) >= size {
		b = w.spare[last][:size]
		w.spare = w.spare[:last]
	} else {
		b = make([]byte, size, max(size, 2048))
	}
	w.pending = append(w.pending, b)
	return b
}

// maxSpare bounds the recycled buffers kept after a burst of super-packets.
const maxSpare = 4 * batchSize

func (w *Transport) recycle(b []byte) {
	if len(w.spare) < maxSpare {
		w.spare = append(w.spare, b[:0])
	}
}

// unstage drops pending packets from index from on (the parts of a packet
// that turned out unusable), keeping their buffers for reuse.
func (w *Transport) unstage(from int) {
	for _, p := range w.pending[from:] {
		w.recycle(p)
	}
	w.pending = w.pending[:from]
}

// deliverPending moves pending packets (all wire packets) into caller slots
// [n, k) and returns the new count.
func (w *Transport) deliverPending(bufs [][]byte, sizes []int, hdrs []offload.Header, offset, n, k int) int {
	moved := 0
	for moved < len(w.pending) && n < k {
		p := w.pending[moved]
		if len(bufs[n])-offset < len(p) {
			w.truncated.Add(1)
		} else {
			sizes[n], hdrs[n] = copy(bufs[n][offset:], p), offload.Header{}
			n++
		}
		w.recycle(p)
		moved++
	}
	w.pending = append(w.pending[:0], w.pending[moved:]...)
	return n
}

package router

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// wanBatchSize is how many packets one recvmmsg/sendmmsg moves.
const wanBatchSize = 64

// wanRcvBuf is the capture socket's receive buffer: room for a few
// milliseconds of line rate while the packet loop is busy.
const wanRcvBuf = 4 << 20

// socketWAN is the WAN transport built from two plain sockets:
//
//   - Reading: an AF_PACKET socket bound to the WAN interface for ETH_P_IP,
//     with the classic BPF filter from captureFilterAt deciding in the
//     kernel what vpnmasq gets. It is SOCK_RAW rather than SOCK_DGRAM only
//     because the kernel allows PACKET_VNET_HDR on raw packet sockets alone,
//     and that header is what makes GRO super-packets and offloaded
//     checksums usable (wan_gso.go). The link header (14 bytes on Ethernet,
//     none on TUN/PPP-like links) is read into a scratch iovec, so the
//     caller's buffer still starts at the IPv4 header.
//   - Writing: an AF_INET SOCK_RAW IPPROTO_RAW socket (IP_HDRINCL implied):
//     the host kernel routes each packet by its destination and resolves
//     the neighbour, so no link-layer work happens here.
//
// Both move batches with recvmmsg/sendmmsg through the runtime poller (the
// fds are non-blocking and wrapped in os.File), so a blocked Read parks
// the goroutine, not a thread, and Close wakes it.
//
// sendmmsg is called directly rather than through golang.org/x/net/ipv4's
// WriteBatch: that API stops at the first refused packet and hides which
// one it was, and builds a net.Addr per packet; here every slot's sockaddr
// is reused, nothing is allocated per packet, and a refused packet is
// skipped and reported by index (WriteError) while the rest goes out.
type socketWAN struct {
	captureMu      sync.Mutex // guards capture and the filter attached to the socket
	capture        Capture    // what the filter was built from (SetCapture, SetCaptureAddr)
	rx, tx         *os.File
	rxConn, txConn syscall.RawConn
	closed         atomic.Bool

	rxMu    sync.Mutex
	rxMsgs  []unix.Mmsghdr
	rxIovs  []unix.Iovec // per message: virtio_net_hdr, link header (if any), packet
	rxAddrs []unix.RawSockaddrLinklayer
	rxVnet  [][vnetHdrLen]byte
	rxLink  []byte // scratch for the link headers, linkHdr bytes per message
	linkHdr int    // bytes of link header in front of each IPv4 header
	// pending holds packets already received but not yet returned, in
	// arrival order: the segments of super-packets beyond what fitted, and
	// everything received after them in the same batch. Read returns them
	// before receiving more. spare recycles their buffers.
	pending [][]byte
	spare   [][]byte

	txMu    sync.Mutex
	txMsgs  []unix.Mmsghdr
	txIovs  []unix.Iovec
	txAddrs []unix.RawSockaddrInet4
	txIndex []int // txMsgs slot -> index in the caller's bufs

	// gso sends whole TCP super-packets; nil when the WAN link has no
	// Ethernet header.
	gso *gsoSender
	// whole: received TCP super-packets are returned whole (KeepWhole).
	whole    bool
	gsoKept  atomic.Uint64
	frames   atomic.Bool // Write sends through the packet socket (SendFrames)
	slowIdx  []int
	slowBufs [][]byte
	gsoMu    sync.Mutex
	segs     segmentPool // segments of super-packets sent the slow way

	truncated atomic.Uint64
	malformed atomic.Uint64
	segmented atomic.Uint64
	gsoSent   atomic.Uint64
	gsoSplit  atomic.Uint64
}

// WANStats are the transport's own drop counters.
type WANStats struct {
	// Truncated counts captured packets larger than the caller's buffer
	// (dropped: half a packet is worse than none).
	Truncated uint64
	// Malformed counts captured packets dropped because their IPv4 length
	// or offload metadata made no sense.
	Malformed uint64
	// Segmented counts GRO super-packets split back into wire packets.
	Segmented uint64
	// KernelDrops counts packets the kernel dropped because the capture
	// socket's receive buffer was full, since the previous call.
	KernelDrops uint64
	// GSOSent counts super-packets sent whole; GSOSplit those sent as
	// segments because their next hop was not resolved.
	GSOSent, GSOSplit uint64
	// GSOKept counts received super-packets returned whole (KeepWhole).
	GSOKept uint64
}

// OpenWAN opens the WAN transport for c in the network namespace of the
// calling thread.
func OpenWAN(c Capture) (WAN, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	link, err := netlink.LinkByName(c.Interface)
	if err != nil {
		return nil, fmt.Errorf("WAN interface %s: %w", c.Interface, err)
	}
	linkHdr, err := linkHeaderLen(link)
	if err != nil {
		return nil, err
	}
	filter, err := captureFilterAt(c, uint32(linkHdr))
	if err != nil {
		return nil, err
	}
	raw, err := bpf.Assemble(filter)
	if err != nil {
		return nil, fmt.Errorf("capture filter: %w", err)
	}
	sockFilter := make([]unix.SockFilter, len(raw))
	for i, ins := range raw {
		sockFilter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}

	rx, err := openCaptureSocket(link.Attrs().Index, sockFilter)
	if err != nil {
		return nil, fmt.Errorf("capture socket on %s: %w", c.Interface, err)
	}
	tx, err := openRawSendSocket()
	if err != nil {
		rx.Close()
		return nil, fmt.Errorf("raw IPv4 send socket: %w", err)
	}
	w := &socketWAN{
		capture: c,
		rx:      rx,
		tx:      tx,
		rxMsgs:  make([]unix.Mmsghdr, wanBatchSize),
		rxIovs:  make([]unix.Iovec, 3*wanBatchSize),
		rxAddrs: make([]unix.RawSockaddrLinklayer, wanBatchSize),
		rxVnet:  make([][vnetHdrLen]byte, wanBatchSize),
		rxLink:  make([]byte, max(1, linkHdr)*wanBatchSize),
		linkHdr: linkHdr,
		txMsgs:  make([]unix.Mmsghdr, wanBatchSize),
		txIovs:  make([]unix.Iovec, wanBatchSize),
		txAddrs: make([]unix.RawSockaddrInet4, wanBatchSize),
		txIndex: make([]int, wanBatchSize),
	}
	if w.gso, err = openGSOSender(link); err != nil {
		w.Close()
		return nil, fmt.Errorf("GSO send socket on %s: %w", c.Interface, err)
	}
	if w.rxConn, err = rx.SyscallConn(); err != nil {
		w.Close()
		return nil, err
	}
	if w.txConn, err = tx.SyscallConn(); err != nil {
		w.Close()
		return nil, err
	}
	for i := range wanBatchSize {
		w.rxMsgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&w.rxAddrs[i]))
		iov := w.rxIovs[3*i : 3*i+3]
		iov[0].Base = &w.rxVnet[i][0]
		iov[0].SetLen(vnetHdrLen)
		if linkHdr > 0 {
			iov[1].Base = &w.rxLink[i*linkHdr]
			iov[1].SetLen(linkHdr)
			w.rxMsgs[i].Hdr.SetIovlen(3)
		} else {
			w.rxMsgs[i].Hdr.SetIovlen(2)
		}
		w.rxMsgs[i].Hdr.Iov = &iov[0]
		w.txMsgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&w.txAddrs[i]))
		w.txMsgs[i].Hdr.Namelen = unix.SizeofSockaddrInet4
		w.txMsgs[i].Hdr.Iov = &w.txIovs[i]
		w.txMsgs[i].Hdr.SetIovlen(1)
		w.txAddrs[i].Family = unix.AF_INET
	}
	return w, nil
}

// openCaptureSocket opens the AF_PACKET socket. It is created with protocol
// 0, which hooks it into nothing, so no packet can be queued before the
// filter is in place; bind then sets ETH_P_IP and the interface with the
// filter already attached. That closes the usual "packets arrive between
// socket() and SO_ATTACH_FILTER" race at its source, so there is nothing
// unfiltered to drain afterwards (draining after bind would only throw
// away packets the filter had accepted).
func openCaptureSocket(ifindex int, filter []unix.SockFilter) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	fail := func(what string, err error) (*os.File, error) {
		unix.Close(fd)
		return nil, os.NewSyscallError(what, err)
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
		return fail("setsockopt SO_ATTACH_FILTER", err)
	}
	// SO_RCVBUFFORCE ignores rmem_max but needs CAP_NET_ADMIN; SO_RCVBUF
	// is capped at rmem_max and is what an unprivileged socket gets.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, wanRcvBuf); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, wanRcvBuf); err != nil {
			return fail("setsockopt SO_RCVBUF", err)
		}
	}
	// A virtio_net_hdr in front of each packet says whether it is a GRO
	// super-packet or lacks its final checksum (see wan_gso.go).
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		return fail("setsockopt PACKET_VNET_HDR", err)
	}
	// Outgoing frames are skipped below by packet type anyway; telling the
	// kernel (Linux 4.20+) saves it the copy. Older kernels refuse it.
	_ = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifindex}); err != nil {
		return fail("bind", err)
	}
	return os.NewFile(uintptr(fd), "wan-capture"), nil
}

func openRawSendSocket() (*os.File, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	return os.NewFile(uintptr(fd), "wan-send"), nil
}

// linkHeaderLen is how many bytes a raw packet socket on link delivers in
// front of the IPv4 header: the kernel pushes back the link header of
// devices that have one (Ethernet-like), and there is none on TUN, PPP and
// IP-in-IP style links.
func linkHeaderLen(link netlink.Link) (int, error) {
	switch t := link.Attrs().EncapType; t {
	case "ether", "loopback":
		return 14, nil
	case "none", "ppp", "ipip", "sit", "tunnel6", "unknown519": // 519: ARPHRD_RAWIP
		return 0, nil
	default:
		return 0, fmt.Errorf("WAN interface %s: link type %q is not supported (Ethernet-like or header-less links only)", link.Attrs().Name, t)
	}
}

// htons converts a port or EtherType to network byte order as the kernel
// expects it in sockaddr fields typed as host integers.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func (w *socketWAN) BatchSize() int { return wanBatchSize }

func (w *socketWAN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	w.rxMu.Lock()
	defer w.rxMu.Unlock()
	k := min(len(bufs), len(sizes), wanBatchSize)
	if k == 0 {
		return 0, errors.New("wan read: no buffers")
	}
	for i := range k {
		if offset < 0 || offset >= len(bufs[i]) {
			return 0, fmt.Errorf("wan read: offset %d leaves no room in buffer %d of %d bytes", offset, i, len(bufs[i]))
		}
	}
	if len(w.pending) > 0 {
		return w.deliverPending(bufs, sizes, offset, 0, k), nil
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
		if n := w.sortReceived(bufs, sizes, offset, got, k); n > 0 {
			return n, nil
		}
	}
}

// sortReceived turns the got messages recvmmsg left in bufs[:got] into the
// packets to return: it drops what is not ours or not sane, trims link
// padding, completes checksums, splits super-packets, and compacts the
// result to the front of bufs. What does not fit goes to w.pending, and once
// anything did, everything after it does too, so arrival order is kept.
func (w *socketWAN) sortReceived(bufs [][]byte, sizes []int, offset, got, k int) int {
	n := 0
	for i := range got {
		m := &w.rxMsgs[i]
		if m.Hdr.Flags&unix.MSG_TRUNC != 0 || int(m.Len) < vnetHdrLen+w.linkHdr {
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
		pkt := bufs[i][offset : offset+int(m.Len)-vnetHdrLen-w.linkHdr]
		// Frames shorter than the link minimum arrive padded; the IPv4
		// total length says where the packet ends.
		ip := header.IPv4(pkt)
		if !ip.IsValid(len(pkt)) {
			w.malformed.Add(1)
			continue
		}
		pkt = pkt[:ip.TotalLength()]
		h := decodeVnetHdr(w.rxVnet[i][:])

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
		if !staged && w.whole && offset >= vnetHdrLen {
			if keepWhole(dst, h, bufs[n][offset-vnetHdrLen:offset]) {
				w.gsoKept.Add(1)
				sizes[n] = len(dst)
				n++
				continue
			}
			clear(bufs[n][offset-vnetHdrLen : offset])
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
		sizes[n] = size
		n++
	}
	return w.deliverPending(bufs, sizes, offset, n, k)
}

// finishReceived makes pkt a wire packet: completes a checksum left to
// offload, or splits a super-packet (segments after the first are staged).
// It returns the length of pkt that remains.
func (w *socketWAN) finishReceived(pkt []byte, h vnetHdr, proto uint8) (int, error) {
	switch {
	case h.isGSO():
		first, segs, err := splitGSO(pkt, h, w.stage)
		if err != nil {
			return 0, err
		}
		if segs > 1 {
			w.segmented.Add(1)
		}
		return first, nil
	case h.needsChecksum():
		// csum_start counts from the start of the link header.
		return len(pkt), completeChecksum(pkt, int(h.csumStart)-w.linkHdr, int(h.csumOffset), proto)
	}
	return len(pkt), nil
}

// stage appends a buffer of size bytes to the pending queue.
func (w *socketWAN) stage(size int) []byte {
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
const maxSpare = 4 * wanBatchSize

func (w *socketWAN) recycle(b []byte) {
	if len(w.spare) < maxSpare {
		w.spare = append(w.spare, b[:0])
	}
}

// unstage drops pending packets from index from on (the parts of a packet
// that turned out unusable), keeping their buffers for reuse.
func (w *socketWAN) unstage(from int) {
	for _, p := range w.pending[from:] {
		w.recycle(p)
	}
	w.pending = w.pending[:from]
}

// deliverPending moves pending packets into caller slots [n, k) and returns
// the new count.
func (w *socketWAN) deliverPending(bufs [][]byte, sizes []int, offset, n, k int) int {
	moved := 0
	for moved < len(w.pending) && n < k {
		p := w.pending[moved]
		if w.whole && offset >= vnetHdrLen {
			clear(bufs[n][offset-vnetHdrLen : offset])
		}
		if len(bufs[n])-offset < len(p) {
			w.truncated.Add(1)
		} else {
			sizes[n] = copy(bufs[n][offset:], p)
			n++
		}
		w.recycle(p)
		moved++
	}
	w.pending = append(w.pending[:0], w.pending[moved:]...)
	return n
}

func (w *socketWAN) Write(bufs [][]byte, offset int) (int, error) {
	if w.gso == nil || !w.frames.Load() {
		return w.writeRaw(bufs, offset)
	}
	// Frames to resolved next hops through the packet socket: no route
	// lookup, netfilter or conntrack per packet in the host. The rest
	// (unresolved, not out of the WAN interface) through the raw socket.
	w.gsoMu.Lock()
	defer w.gsoMu.Unlock()
	slow, err := w.gso.write(bufs, offset, false, w.slowIdx[:0])
	w.slowIdx = slow
	if err != nil {
		return 0, w.ioError(err)
	}
	sent := len(bufs) - len(slow)
	if len(slow) == 0 {
		return sent, nil
	}
	rest := w.slowBufs[:0]
	for _, i := range slow {
		rest = append(rest, bufs[i])
	}
	w.slowBufs = rest
	n, err := w.writeRaw(rest, offset)
	var we *WriteError
	if errors.As(err, &we) {
		for j := range we.Refused {
			we.Refused[j].Index = slow[we.Refused[j].Index]
		}
	}
	return sent + n, err
}

// SendFrames makes Write send ordinary packets as frames through the
// packet socket where the next hop is resolved (they then bypass the host's
// IP layer: the routing core does what it would have, MTU and TTL
// included).
func (w *socketWAN) SendFrames() {
	if w.gso != nil {
		w.frames.Store(true)
	}
}

// writeRaw sends packets through the raw IPv4 socket; the host routes them.
func (w *socketWAN) writeRaw(bufs [][]byte, offset int) (int, error) {
	w.txMu.Lock()
	defer w.txMu.Unlock()
	defer runtime.KeepAlive(bufs)
	sent := 0
	var refused []RefusedPacket
	for start := 0; start < len(bufs); start += wanBatchSize {
		chunk := bufs[start:min(start+wanBatchSize, len(bufs))]
		k := 0
		for j, b := range chunk {
			if offset < 0 || offset > len(b) {
				refused = append(refused, RefusedPacket{Index: start + j, Err: fmt.Errorf("offset %d beyond the %d-byte buffer", offset, len(b))})
				continue
			}
			pkt := b[offset:]
			ip := header.IPv4(pkt)
			if len(pkt) < header.IPv4MinimumSize || !ip.IsValid(len(pkt)) {
				refused = append(refused, RefusedPacket{Index: start + j, Err: fmt.Errorf("not a valid IPv4 packet (%d bytes)", len(pkt))})
				continue
			}
			// The header's total length says where the packet ends; the
			// kernel would otherwise send trailing buffer bytes along.
			pkt = pkt[:ip.TotalLength()]
			w.txAddrs[k].Addr = ip.DestinationAddress().As4()
			w.txIovs[k].Base = &pkt[0]
			w.txIovs[k].SetLen(len(pkt))
			w.txIndex[k] = start + j
			k++
		}
		for i := 0; i < k; {
			var got int
			var errno syscall.Errno
			err := w.txConn.Write(func(fd uintptr) bool {
				for {
					r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.txMsgs[i])), uintptr(k-i), 0, 0, 0)
					switch e {
					case unix.EINTR:
						continue
					case unix.EAGAIN:
						return false // socket buffer full: wait in the poller
					}
					got, errno = int(r), e
					return true
				}
			})
			if err != nil {
				return sent, w.ioError(err)
			}
			if errno != 0 {
				// sendmmsg reports an error only when the first message of
				// the call failed; skip that one and go on with the rest.
				refused = append(refused, RefusedPacket{Index: w.txIndex[i], Err: os.NewSyscallError("sendmmsg", errno)})
				i++
				continue
			}
			if got <= 0 {
				return sent, fmt.Errorf("wan write: sendmmsg sent nothing")
			}
			sent += got
			i += got
		}
	}
	if len(refused) > 0 {
		slices.SortFunc(refused, func(a, b RefusedPacket) int { return a.Index - b.Index })
		return sent, &WriteError{Refused: refused}
	}
	return sent, nil
}

// ioError turns the poller's "file closed" into net.ErrClosed, the error
// packet loops test for to tell shutdown from failure.
func (w *socketWAN) ioError(err error) error {
	if w.closed.Load() || errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("wan: %w", net.ErrClosed)
	}
	return err
}

func (w *socketWAN) Close() error {
	if w.closed.Swap(true) {
		return nil
	}
	return errors.Join(w.rx.Close(), w.tx.Close(), w.gso.Close())
}

// KeepWhole makes Read return TCP super-packets whole, for a TUN that takes
// them: the vnetHdrLen bytes before each returned packet then hold its
// virtio-net header in the TUN's form (all zero for an ordinary packet).
// Super-packets that need work per segment are still split.
func (w *socketWAN) KeepWhole() {
	w.rxMu.Lock()
	w.whole = true
	w.rxMu.Unlock()
}

// CanSendGSO reports whether WriteGSO sends super-packets whole.
func (w *socketWAN) CanSendGSO() bool { return w.gso != nil }

// WriteGSO sends TCP super-packets bufs[i][offset:], each with its
// virtio-net header (as the TUN gave it) in the vnetHdrLen bytes before
// offset: whole through the packet socket where the next hop is resolved,
// otherwise split into segments and sent through Write.
func (w *socketWAN) WriteGSO(bufs [][]byte, offset int) (int, error) {
	w.gsoMu.Lock()
	defer w.gsoMu.Unlock()
	slow := w.slowIdx[:0]
	if w.gso != nil {
		var err error
		if slow, err = w.gso.write(bufs, offset, true, slow); err != nil {
			return 0, w.ioError(err)
		}
	} else {
		for i := range bufs {
			slow = append(slow, i)
		}
	}
	w.slowIdx = slow
	sent := len(bufs) - len(slow)
	w.gsoSent.Add(uint64(sent))
	w.segs.offset = offset
	for _, i := range slow {
		w.gsoSplit.Add(1)
		w.segs.reset()
		h := decodeVnetHdr(bufs[i][offset-vnetHdrLen : offset])
		first, _, err := splitGSO(bufs[i][offset:], h, w.segs.next)
		if err != nil {
			w.malformed.Add(1)
			continue
		}
		segs := append(append(w.slowBufs[:0], bufs[i][:offset+first]), w.segs.out...)
		w.slowBufs = segs
		if _, err := w.writeRaw(segs, offset); err != nil && !errors.As(err, new(*WriteError)) {
			return sent, err
		}
		sent++
	}
	return sent, nil
}

// Stats returns the transport's drop counters; the kernel's counter is
// reset by reading it.
func (w *socketWAN) Stats() (WANStats, error) {
	s := WANStats{Truncated: w.truncated.Load(), Malformed: w.malformed.Load(), Segmented: w.segmented.Load(),
		GSOSent: w.gsoSent.Load(), GSOSplit: w.gsoSplit.Load(), GSOKept: w.gsoKept.Load()}
	var err error
	cerr := w.rxConn.Control(func(fd uintptr) {
		var st *unix.TpacketStats
		st, err = unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS)
		if err == nil {
			s.KernelDrops = uint64(st.Drops)
		}
	})
	return s, errors.Join(cerr, err)
}

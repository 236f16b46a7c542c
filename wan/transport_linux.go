package wan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/vpnmasq/vpnmasq/datapath"
	"github.com/vpnmasq/vpnmasq/offload"
)

// batchSize is how many packets one recvmmsg/sendmmsg moves.
const batchSize = 64

// rcvBuf is the capture socket's receive buffer: room for a few
// milliseconds of line rate while the packet loop is busy.
const rcvBuf = 4 << 20

// Options are what a Transport does beyond capturing and sending wire
// packets; they are fixed when it is opened.
type Options struct {
	// KeepSuperPackets makes Read return TCP super-packets whole, with
	// their header in the TUN's form, for a TUN that takes them; the
	// others are split into wire packets.
	KeepSuperPackets bool
	// KeepUDPSuperPackets does the same for UDP super-packets (GRO'd by
	// the WAN interface's UDP GRO forwarding), for a TUN with UDP
	// segmentation offload; it needs KeepSuperPackets.
	KeepUDPSuperPackets bool
	// Frames makes Write send wire packets as frames through the packet
	// socket where the next hop is resolved: they then bypass the host's IP
	// layer (no route lookup, netfilter or conntrack per packet), and the
	// packet path does what it would have, MTU and TTL included.
	Frames bool
}

// Transport is the WAN transport built from plain sockets:
//
//   - Reading: an AF_PACKET socket bound to the WAN interface for ETH_P_IP,
//     with the classic BPF filter from captureFilter deciding in the kernel
//     what vpnmasq gets. It is SOCK_RAW rather than SOCK_DGRAM only because
//     the kernel allows PACKET_VNET_HDR on raw packet sockets alone, and
//     that header is what makes GRO super-packets and offloaded checksums
//     usable (package offload). The link header (14 bytes on Ethernet, none
//     on TUN/PPP-like links) is read into a scratch iovec, so the caller's
//     buffer still starts at the IPv4 header.
//   - Writing: frames through a send-only packet socket (frames_linux.go)
//     where the next hop's link address is resolved, and an AF_INET
//     SOCK_RAW IPPROTO_RAW socket (IP_HDRINCL implied) for the rest: the
//     host kernel routes each of those by its destination and resolves the
//     neighbour.
//
// All move batches with recvmmsg/sendmmsg through the runtime poller (the
// fds are non-blocking and wrapped in os.File), so a blocked Read parks
// the goroutine, not a thread, and Close wakes it.
//
// sendmmsg is called directly rather than through golang.org/x/net/ipv4's
// WriteBatch: that API stops at the first refused packet and hides which
// one it was, and builds a net.Addr per packet; here every slot's sockaddr
// is reused, nothing is allocated per packet, and a refused packet is
// skipped and reported by index (datapath.WriteError) while the rest goes
// out.
type Transport struct {
	opts           Options
	linkHdr        int // bytes of link header in front of each IPv4 header
	rx, tx         *os.File
	rxConn, txConn syscall.RawConn
	closed         atomic.Bool
	// frames sends frames to resolved next hops; nil when the WAN link has
	// no Ethernet header (everything then goes through tx).
	frames *frameSender

	captureMu sync.Mutex // guards capture and the filter attached to rx
	capture   Capture    // what the filter was built from

	rxMu    sync.Mutex // guards the receive state below: one Read at a time
	rxMsgs  []unix.Mmsghdr
	rxIovs  []unix.Iovec // per message: virtio_net_hdr, link header (if any), packet
	rxAddrs []unix.RawSockaddrLinklayer
	rxVnet  [][offload.HeaderLen]byte
	rxLink  []byte // scratch for the link headers, linkHdr bytes per message
	// pending holds packets already received but not yet returned, in
	// arrival order: the segments of super-packets beyond what fitted, and
	// everything received after them in the same batch. Read returns them
	// before receiving more. spare recycles their buffers.
	pending [][]byte
	spare   [][]byte

	txMu    sync.Mutex // guards the raw socket's send state below
	txMsgs  []unix.Mmsghdr
	txIovs  []unix.Iovec
	txAddrs []unix.RawSockaddrInet4
	txIndex []int // txMsgs slot -> index in the caller's bufs

	frameMu  sync.Mutex // guards the scratch of Write and WriteSuperPackets below
	slowIdx  []int
	slowBufs [][]byte
	segs     offload.Segments // segments of super-packets sent the slow way

	truncated  atomic.Uint64
	malformed  atomic.Uint64
	segmented  atomic.Uint64
	superSent  atomic.Uint64
	superSplit atomic.Uint64
	superKept  atomic.Uint64
}

var (
	_ datapath.WAN            = (*Transport)(nil)
	_ datapath.SuperPacketWAN = (*Transport)(nil)
)

// Stats are the transport's own counters.
type Stats struct {
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
	// SuperPacketsSent counts super-packets sent whole; SuperPacketsSplit
	// those sent as segments because their next hop was not resolved.
	SuperPacketsSent, SuperPacketsSplit uint64
	// SuperPacketsKept counts received super-packets returned whole
	// (Options.KeepSuperPackets).
	SuperPacketsKept uint64
}

// Open opens the WAN transport for c in the network namespace of the
// calling thread.
func Open(c Capture, opts Options) (*Transport, error) {
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
	filter, err := assembleFilter(c, linkHdr)
	if err != nil {
		return nil, err
	}
	rx, err := openCaptureSocket(link.Attrs().Index, filter)
	if err != nil {
		return nil, fmt.Errorf("capture socket on %s: %w", c.Interface, err)
	}
	tx, err := openRawSendSocket()
	if err != nil {
		rx.Close()
		return nil, fmt.Errorf("raw IPv4 send socket: %w", err)
	}
	w := newTransport(c, opts, linkHdr, rx, tx)
	if w.frames, err = openFrameSender(link); err != nil {
		w.Close()
		return nil, fmt.Errorf("frame socket on %s: %w", c.Interface, err)
	}
	if w.rxConn, err = rx.SyscallConn(); err != nil {
		w.Close()
		return nil, err
	}
	if w.txConn, err = tx.SyscallConn(); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

// newTransport allocates the per-slot message state once, so Read and Write
// allocate nothing per packet.
func newTransport(c Capture, opts Options, linkHdr int, rx, tx *os.File) *Transport {
	w := &Transport{
		opts:    opts,
		capture: c,
		rx:      rx,
		tx:      tx,
		rxMsgs:  make([]unix.Mmsghdr, batchSize),
		rxIovs:  make([]unix.Iovec, 3*batchSize),
		rxAddrs: make([]unix.RawSockaddrLinklayer, batchSize),
		rxVnet:  make([][offload.HeaderLen]byte, batchSize),
		rxLink:  make([]byte, max(1, linkHdr)*batchSize),
		linkHdr: linkHdr,
		txMsgs:  make([]unix.Mmsghdr, batchSize),
		txIovs:  make([]unix.Iovec, batchSize),
		txAddrs: make([]unix.RawSockaddrInet4, batchSize),
		txIndex: make([]int, batchSize),
	}
	for i := range batchSize {
		w.rxMsgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&w.rxAddrs[i]))
		iov := w.rxIovs[3*i : 3*i+3]
		iov[0].Base = &w.rxVnet[i][0]
		iov[0].SetLen(offload.HeaderLen)
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
	return w
}

// assembleFilter builds c's capture filter in the kernel's form.
func assembleFilter(c Capture, linkHdr int) ([]unix.SockFilter, error) {
	filter, err := captureFilter(c, uint32(linkHdr))
	if err != nil {
		return nil, err
	}
	raw, err := bpf.Assemble(filter)
	if err != nil {
		return nil, fmt.Errorf("capture filter: %w", err)
	}
	sf := make([]unix.SockFilter, len(raw))
	for i, ins := range raw {
		sf[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	return sf, nil
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
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf); err != nil {
			return fail("setsockopt SO_RCVBUF", err)
		}
	}
	// A virtio_net_hdr in front of each packet says whether it is a GRO
	// super-packet or lacks its final checksum (package offload).
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

// ioError turns the poller's "file closed" into net.ErrClosed, the error
// packet loops test for to tell shutdown from failure.
func (w *Transport) ioError(err error) error {
	if w.closed.Load() || errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("wan: %w", net.ErrClosed)
	}
	return err
}

// Close releases the sockets and unblocks a pending Read.
func (w *Transport) Close() error {
	if w.closed.Swap(true) {
		return nil
	}
	return errors.Join(w.rx.Close(), w.tx.Close(), w.frames.Close())
}

// Stats returns the transport's counters; the kernel's drop counter is
// reset by reading it.
func (w *Transport) Stats() (Stats, error) {
	s := Stats{Truncated: w.truncated.Load(), Malformed: w.malformed.Load(), Segmented: w.segmented.Load(),
		SuperPacketsSent: w.superSent.Load(), SuperPacketsSplit: w.superSplit.Load(), SuperPacketsKept: w.superKept.Load()}
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

// SetCapture replaces the capture socket's filter with c's, keeping the
// WAN address the transport follows (SetCaptureAddr). The kernel swaps the
// program atomically: every packet meets either the old filter or the new
// one, none goes unfiltered.
func (w *Transport) SetCapture(c Capture) error {
	w.captureMu.Lock()
	defer w.captureMu.Unlock()
	c.Addr = w.capture.Addr
	return w.attachCapture(c)
}

// SetCaptureAddr replaces the capture filter with one for a new WAN
// address, keeping its ports. SO_ATTACH_FILTER on a bound socket swaps the
// program atomically; packets queued under the old one are still read (the
// engine drops what is not its own).
func (w *Transport) SetCaptureAddr(a netip.Addr) error {
	w.captureMu.Lock()
	defer w.captureMu.Unlock()
	c := w.capture
	c.Addr = a
	return w.attachCapture(c)
}

// attachCapture builds the filter for c, swaps it in on the capture socket
// and remembers c. Call with captureMu held.
func (w *Transport) attachCapture(c Capture) error {
	if err := c.Validate(); err != nil {
		return err
	}
	sf, err := assembleFilter(c, w.linkHdr)
	if err != nil {
		return err
	}
	prog := unix.SockFprog{Len: uint16(len(sf)), Filter: &sf[0]}
	var serr error
	if err := w.rxConn.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("replacing the capture filter: %w", os.NewSyscallError("setsockopt SO_ATTACH_FILTER", serr))
	}
	w.capture = c
	return nil
}

// FlushNexthops forgets the cached next-hop link addresses (the WAN
// address or its network changed).
func (w *Transport) FlushNexthops() {
	if w.frames != nil {
		w.frames.flush()
	}
}

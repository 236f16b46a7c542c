package router

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The GSO send path. A TCP super-packet (up to 64 KiB, read whole from the
// TUN with its virtio-net header and translated once) cannot go through the
// raw IPv4 socket, which sends wire-sized packets only. It leaves through an
// AF_PACKET socket with PACKET_VNET_HDR instead, as one frame the kernel
// segments on the way out (in the driver, or in the veth peer's GRO):
// virtio-net header + Ethernet header + IPv4 packet. That bypasses the
// host's IP layer, so the router provides what it would have: the next hop's
// link address (the kernel's route and neighbour tables, read through
// netlink and cached for a second), and the MTU check (the core sends only
// super-packets whose segments fit the WAN MTU). A destination whose
// neighbour is not resolved yet goes the slow way (segments through the raw
// socket), which also makes the kernel resolve it.

// gsoSender sends GSO super-packets out of the WAN interface.
type gsoSender struct {
	f       *os.File
	conn    syscall.RawConn
	ifindex int
	srcMAC  net.HardwareAddr

	mu       sync.Mutex
	nexthops map[[4]byte]nexthop
	msgs     []unix.Mmsghdr
	iovs     []unix.Iovec // per message: virtio header + Ethernet header, packet
	hdrs     [][vnetHdrLen + 14]byte
	addrs    []unix.RawSockaddrLinklayer
	idx      []int // message slot -> index in the caller's bufs

	// One sendmmsg call's state, for a poller callback made once.
	sendFn   func(fd uintptr) bool
	sendFrom int
	sendTo   int
	sendGot  int
	sendErr  syscall.Errno
}

// nexthop is a cached link address for a destination.
type nexthop struct {
	mac     [6]byte
	ok      bool
	expires time.Time
}

// nexthopTTL is how long a resolved (or unresolved) next hop is trusted.
const nexthopTTL = time.Second

// openGSOSender opens the send-only packet socket on the WAN interface. It
// returns nil without error when the link has no Ethernet header (the GSO
// path then stays off).
func openGSOSender(link netlink.Link) (*gsoSender, error) {
	attrs := link.Attrs()
	if len(attrs.HardwareAddr) != 6 || attrs.EncapType != "ether" {
		return nil, nil
	}
	// Protocol 0: the socket taps nothing; it only sends.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("setsockopt PACKET_VNET_HDR", err)
	}
	f := os.NewFile(uintptr(fd), "wan-gso")
	conn, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	g := &gsoSender{
		f: f, conn: conn, ifindex: attrs.Index, srcMAC: attrs.HardwareAddr,
		nexthops: make(map[[4]byte]nexthop),
		msgs:     make([]unix.Mmsghdr, wanBatchSize),
		iovs:     make([]unix.Iovec, 2*wanBatchSize),
		hdrs:     make([][vnetHdrLen + 14]byte, wanBatchSize),
		addrs:    make([]unix.RawSockaddrLinklayer, wanBatchSize),
		idx:      make([]int, 0, wanBatchSize),
	}
	g.sendFn = g.sendQueued
	for i := range g.msgs {
		g.addrs[i] = unix.RawSockaddrLinklayer{Family: unix.AF_PACKET, Protocol: htons(unix.ETH_P_IP), Ifindex: int32(attrs.Index)}
		g.msgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&g.addrs[i]))
		g.msgs[i].Hdr.Namelen = unix.SizeofSockaddrLinklayer
		g.msgs[i].Hdr.Iov = &g.iovs[2*i]
		g.msgs[i].Hdr.SetIovlen(2)
		g.iovs[2*i].Base = &g.hdrs[i][0]
		g.iovs[2*i].SetLen(vnetHdrLen + 14)
	}
	return g, nil
}

// resolve returns the link address of dst's next hop on the WAN
// interface, from the kernel's tables, cached for nexthopTTL. probe asks
// the caller to send this one packet through the host's IP layer instead:
// frames sent here confirm nothing to the kernel's neighbour table, so an
// entry goes stale and stays so; a packet the kernel sends itself makes it
// verify the entry (DELAY, then PROBE: a unicast ARP request), and a
// neighbour whose address changed is learned anew.
func (g *gsoSender) resolve(dst [4]byte, now time.Time) (mac [6]byte, ok, probe bool) {
	if nh, hit := g.nexthops[dst]; hit && now.Before(nh.expires) {
		return nh.mac, nh.ok, false
	}
	mac, ok, probe = g.lookup(dst)
	if len(g.nexthops) > 4096 {
		clear(g.nexthops) // bound the cache; it refills from the kernel
	}
	g.nexthops[dst] = nexthop{mac: mac, ok: ok, expires: now.Add(nexthopTTL)}
	return mac, ok, probe
}

// lookup asks the kernel's route and neighbour tables.
func (g *gsoSender) lookup(dst [4]byte) (mac [6]byte, ok, probe bool) {
	routes, err := netlink.RouteGet(net.IP(dst[:]))
	if err != nil || len(routes) == 0 || routes[0].LinkIndex != g.ifindex {
		return mac, false, false
	}
	gw := dst
	if ip := routes[0].Gw.To4(); ip != nil {
		gw = [4]byte(ip)
	}
	neighs, err := netlink.NeighList(g.ifindex, netlink.FAMILY_V4)
	if err != nil {
		return mac, false, false
	}
	for _, n := range neighs {
		if a, isV4 := netip.AddrFromSlice(n.IP.To4()); isV4 && a.As4() == gw && len(n.HardwareAddr) == 6 {
			usable, stale := neighbourUse(n.State)
			if usable {
				return [6]byte(n.HardwareAddr), true, stale
			}
		}
	}
	return mac, false, false
}

// neighbourUse says whether a kernel neighbour entry's link address can be
// used, and whether it is stale (not confirmed lately).
func neighbourUse(state int) (usable, stale bool) {
	switch {
	case state&(netlink.NUD_REACHABLE|netlink.NUD_PERMANENT|netlink.NUD_DELAY|netlink.NUD_PROBE) != 0:
		return true, false
	case state&netlink.NUD_STALE != 0:
		return true, true
	}
	return false, false
}

// write sends the packets bufs[i][offset:] as frames. With whole set they
// are super-packets whose virtio-net header (as read from the TUN:
// csum_start counted from the IPv4 header) sits in the vnetHdrLen bytes
// before offset; otherwise they are ordinary packets with complete
// checksums. It returns the indexes of packets it could not send this way
// (next hop unresolved, or refused by the kernel), for the caller to send
// another way.
func (g *gsoSender) write(bufs [][]byte, offset int, whole bool, slow []int) ([]int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	defer runtime.KeepAlive(bufs)
	now := time.Now() // one clock read per batch for the next-hop cache
	for start := 0; start < len(bufs); start += wanBatchSize {
		idx := g.idx[:0]
		for j := start; j < min(start+wanBatchSize, len(bufs)); j++ {
			b := bufs[j]
			pkt := b[offset:]
			ip := header.IPv4(pkt)
			mac, ok, probe := g.resolve(ip.DestinationAddress().As4(), now)
			if !ok || probe {
				slow = append(slow, j)
				continue
			}
			k := len(idx)
			hdr := &g.hdrs[k]
			if whole {
				h := decodeVnetHdr(b[offset-vnetHdrLen : offset])
				ihl := int(ip.HeaderLength())
				thl := int(header.TCP(pkt[ihl:]).DataOffset())
				hdr[0] = unix.VIRTIO_NET_HDR_F_NEEDS_CSUM
				hdr[1] = h.gsoType
				binary.NativeEndian.PutUint16(hdr[2:], uint16(14+ihl+thl))
				binary.NativeEndian.PutUint16(hdr[4:], h.gsoSize)
				binary.NativeEndian.PutUint16(hdr[6:], 14+h.csumStart)
				binary.NativeEndian.PutUint16(hdr[8:], h.csumOffset)
			} else {
				clear(hdr[:vnetHdrLen]) // complete checksums, no segmentation
			}
			copy(hdr[vnetHdrLen:], mac[:])
			copy(hdr[vnetHdrLen+6:], g.srcMAC)
			binary.BigEndian.PutUint16(hdr[vnetHdrLen+12:], unix.ETH_P_IP)
			g.iovs[2*k+1].Base = &pkt[0]
			g.iovs[2*k+1].SetLen(int(ip.TotalLength()))
			idx = append(idx, j)
		}
		for i := 0; i < len(idx); {
			g.sendFrom, g.sendTo = i, len(idx)
			err := g.conn.Write(g.sendFn)
			got, errno := g.sendGot, g.sendErr
			if err != nil {
				return slow, err
			}
			if errno != 0 {
				// The first message of the call was refused: send it as
				// segments and go on with the rest.
				slow = append(slow, idx[i])
				i++
				continue
			}
			if got <= 0 {
				return slow, errors.New("gso send: sendmmsg sent nothing")
			}
			i += got
		}
	}
	return slow, nil
}

// sendQueued sends messages [sendFrom, sendTo) with one sendmmsg.
func (g *gsoSender) sendQueued(fd uintptr) bool {
	for {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&g.msgs[g.sendFrom])), uintptr(g.sendTo-g.sendFrom), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		g.sendGot, g.sendErr = int(r), e
		return true
	}
}

func (g *gsoSender) Close() error {
	if g == nil {
		return nil
	}
	return g.f.Close()
}

// String is for logs.
func (g *gsoSender) String() string {
	return fmt.Sprintf("AF_PACKET GSO sender on ifindex %d (%s)", g.ifindex, g.srcMAC)
}

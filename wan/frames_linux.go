package wan

import (
	"encoding/binary"
	"errors"
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

	"github.com/vpnmasq/vpnmasq/offload"
)

// The frame send path. A packet leaves through an AF_PACKET socket with
// PACKET_VNET_HDR as one frame: virtio-net header + Ethernet header + IPv4
// packet. For a TCP or UDP super-packet (up to 64 KiB, read whole from the TUN and
// translated once) that is the only way out, since the raw IPv4 socket sends
// wire-sized packets only: the kernel segments the frame on the way out (in
// the driver, or in the veth peer's GRO). Wire packets go the same way
// (Options.Frames) to skip the host's IP layer. That bypass means the router
// provides what the IP layer would have: the next hop's link address (the
// kernel's route and neighbour tables, read through netlink and cached for a
// second), and the MTU check (the packet path sends only super-packets
// whose segments fit the WAN MTU). A destination whose neighbour is not
// resolved yet goes the slow way (through the raw socket, a super-packet
// split into segments), which also makes the kernel resolve it.

// ethHdrLen is the Ethernet header the frames carry.
const ethHdrLen = 14

// frameSender sends packets and super-packets as Ethernet frames out of the
// WAN interface.
type frameSender struct {
	f       *os.File
	conn    syscall.RawConn
	ifindex int
	srcMAC  net.HardwareAddr

	mu       sync.Mutex // guards everything below: one write at a time, and the cache
	nexthops map[[4]byte]nexthop
	msgs     []unix.Mmsghdr
	iovs     []unix.Iovec // per message: virtio header + Ethernet header, packet
	hdrs     [][offload.HeaderLen + ethHdrLen]byte
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

// openFrameSender opens the send-only packet socket on the WAN interface.
// It returns nil without error when the link has no Ethernet header (every
// packet then goes through the raw socket).
func openFrameSender(link netlink.Link) (*frameSender, error) {
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
	f := os.NewFile(uintptr(fd), "wan-frames")
	conn, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	g := &frameSender{
		f: f, conn: conn, ifindex: attrs.Index, srcMAC: attrs.HardwareAddr,
		nexthops: make(map[[4]byte]nexthop),
		msgs:     make([]unix.Mmsghdr, batchSize),
		iovs:     make([]unix.Iovec, 2*batchSize),
		hdrs:     make([][offload.HeaderLen + ethHdrLen]byte, batchSize),
		addrs:    make([]unix.RawSockaddrLinklayer, batchSize),
		idx:      make([]int, 0, batchSize),
	}
	g.sendFn = g.sendQueued
	for i := range g.msgs {
		g.addrs[i] = unix.RawSockaddrLinklayer{Family: unix.AF_PACKET, Protocol: htons(unix.ETH_P_IP), Ifindex: int32(attrs.Index)}
		g.msgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&g.addrs[i]))
		g.msgs[i].Hdr.Namelen = unix.SizeofSockaddrLinklayer
		g.msgs[i].Hdr.Iov = &g.iovs[2*i]
		g.msgs[i].Hdr.SetIovlen(2)
		g.iovs[2*i].Base = &g.hdrs[i][0]
		g.iovs[2*i].SetLen(offload.HeaderLen + ethHdrLen)
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
func (g *frameSender) resolve(dst [4]byte, now time.Time) (mac [6]byte, ok, probe bool) {
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
func (g *frameSender) lookup(dst [4]byte) (mac [6]byte, ok, probe bool) {
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

// write sends the packets bufs[i][offset:] as frames: wire packets with
// complete checksums when hdrs is nil, else TCP or UDP super-packets each described
// by hdrs[i] as the TUN gave it (CsumStart counted from the IPv4 header). It
// returns the indexes of packets it could not send this way (next hop
// unresolved, or refused by the kernel), for the caller to send another
// way.
func (g *frameSender) write(bufs [][]byte, hdrs []offload.Header, offset int, slow []int) ([]int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	defer runtime.KeepAlive(bufs)
	now := time.Now() // one clock read per batch for the next-hop cache
	for start := 0; start < len(bufs); start += batchSize {
		idx := g.idx[:0]
		for j := start; j < min(start+batchSize, len(bufs)); j++ {
			pkt := bufs[j][offset:]
			ip := header.IPv4(pkt)
			mac, ok, probe := g.resolve(ip.DestinationAddress().As4(), now)
			if !ok || probe {
				slow = append(slow, j)
				continue
			}
			k := len(idx)
			hdr := &g.hdrs[k]
			if hdrs != nil {
				offload.ForLink(pkt, hdrs[j], ethHdrLen).Encode(hdr[:offload.HeaderLen])
			} else {
				clear(hdr[:offload.HeaderLen]) // complete checksums, no segmentation
			}
			copy(hdr[offload.HeaderLen:], mac[:])
			copy(hdr[offload.HeaderLen+6:], g.srcMAC)
			binary.BigEndian.PutUint16(hdr[offload.HeaderLen+12:], unix.ETH_P_IP)
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
				return slow, errors.New("frame send: sendmmsg sent nothing")
			}
			i += got
		}
	}
	return slow, nil
}

// sendQueued sends messages [sendFrom, sendTo) with one sendmmsg.
func (g *frameSender) sendQueued(fd uintptr) bool {
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

func (g *frameSender) Close() error {
	if g == nil {
		return nil
	}
	return g.f.Close()
}

// flush forgets the cached next hops.
func (g *frameSender) flush() {
	g.mu.Lock()
	clear(g.nexthops)
	g.mu.Unlock()
}

//go:build linux

package integration

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// udpSuperSize and udpSuperBatch: each write sends udpSuperBatch datagrams
// of udpSuperSize bytes as one super-packet (UDP_SEGMENT).
const (
	udpSuperSize  = 1000
	udpSuperBatch = 20
	udpSuperPort  = 9000
	// udpSuperPace separates the writes, so that tcpdump, which the test
	// reads every datagram from, keeps up.
	udpSuperPace = 50 * time.Millisecond
)

// TestUDPSuperPacketsCrossTheRouterWhole sends UDP the way wireguard-go,
// Tailscale and QUIC stacks do, many datagrams per write with UDP_SEGMENT,
// so that each write reaches the router as one super-packet, both ways. The
// router must translate it once and send it whole (its super-packet counter
// says so), and what leaves it must be, datagram by datagram, what a router
// translating one datagram at a time would have sent: every datagram
// arrives with its own payload, from the right address and port, and with
// a correct checksum on the wire. The router's egress interfaces do their
// segmentation and checksums in software for this test (tx-checksumming
// off), so that tcpdump sees the checksums the router's partial sum leads
// to, as a NIC would compute them.
func TestUDPSuperPacketsCrossTheRouterWhole(t *testing.T) {
	l := newLab(t, lab.Options{})
	config, socket := hardeningConfig(t, "", "")
	startRouter(t, l, config)
	api := newAdminAPI(socket)
	for _, dev := range []string{lab.RouterWANIf, lab.RouterLANIf, "rtr-lan1"} {
		if out, code := runIn(t, l.Router, 5*time.Second, "ethtool", "-K", dev, "tx-checksumming", "off"); code != 0 {
			t.Fatalf("ethtool -K %s tx-checksumming off: %s", dev, out)
		}
	}

	// The router sends frames only to a resolved next hop; until then it
	// splits super-packets and lets the kernel route them, which would
	// leave the whole path untested.
	if out, code := runIn(t, l.Router, 5*time.Second, "ping", "-c", "1", "-W", "2", lab.WANAddr.String()); code != 0 {
		t.Fatalf("resolving the WAN host from the router: %s", out)
	}

	server, err := l.WAN.ListenPacket("udp4", fmt.Sprintf(":%d", udpSuperPort))
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	client, err := l.LAN1.ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	setUDPSegment(t, client)
	setUDPSegment(t, server)

	const writes = 5
	t.Run("LAN to WAN: each datagram arrives masqueraded, intact and with a correct checksum", func(t *testing.T) {
		wire := startCapture(t, l.WAN, lab.HostIf, fmt.Sprintf("udp and dst port %d", udpSuperPort))
		from := exchange(t, client, server, &net.UDPAddr{IP: lab.WANAddr.AsSlice(), Port: udpSuperPort}, writes)
		if !from.IsValid() {
			t.FailNow() // nothing arrived: no mapping to answer on
		}
		if from.Addr() != lab.RouterWANAddr {
			t.Errorf("datagrams came from %v, want the WAN address %v", from, lab.RouterWANAddr)
		}
		checkWire(t, wire.stop(), writes*udpSuperBatch, fmt.Sprintf("%s.%d > %s.%d", lab.RouterWANAddr, from.Port(), lab.WANAddr, udpSuperPort))
		if n := api.counter(t, `vpnmasq_super_packets_total{direction="lan_to_wan",proto="udp"}`); n < 1 {
			t.Errorf("vpnmasq_super_packets_total{lan_to_wan,udp} = %v: the router split every super-packet", n)
		}

		t.Run("WAN to LAN: the replies reach the LAN host the same way", func(t *testing.T) {
			wire := startCapture(t, l.LAN1, lab.HostIf, fmt.Sprintf("udp and src port %d", udpSuperPort))
			src := exchange(t, server, client, net.UDPAddrFromAddrPort(from), writes)
			if src != netip.AddrPortFrom(lab.WANAddr, udpSuperPort) {
				t.Errorf("replies came from %v, want %v:%d", src, lab.WANAddr, udpSuperPort)
			}
			checkWire(t, wire.stop(), writes*udpSuperBatch, fmt.Sprintf("%s.%d > %s.", lab.WANAddr, udpSuperPort, lab.LAN1Addr))
			if n := api.counter(t, `vpnmasq_super_packets_total{direction="wan_to_lan",proto="udp"}`); n < 1 {
				t.Errorf("vpnmasq_super_packets_total{wan_to_lan,udp} = %v: the router split every super-packet", n)
			}
		})
	})
}

// setUDPSegment makes every write on c a super-packet of udpSuperSize-byte
// datagrams.
func setUDPSegment(t *testing.T, c net.PacketConn) {
	t.Helper()
	raw, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT, udpSuperSize)
	}); err != nil || serr != nil {
		t.Fatalf("UDP_SEGMENT: %v %v", err, serr)
	}
}

// udpSuperPayload is write w's udpSuperBatch datagrams back to back; each
// starts with its number (w*udpSuperBatch + i) and is filled with it.
func udpSuperPayload(w int) []byte {
	b := make([]byte, udpSuperBatch*udpSuperSize)
	for i := range udpSuperBatch {
		d := b[i*udpSuperSize : (i+1)*udpSuperSize]
		n := uint32(w*udpSuperBatch + i)
		for j := range d {
			d[j] = byte(n)
		}
		binary.BigEndian.PutUint32(d, n)
	}
	return b
}

// exchange makes writes super-packet writes from sender to dst, paced, and
// returns the one source receiver saw them all from (receiveDatagrams). The
// receiver reads while the writes go on: 100 datagrams waiting to be read
// would overflow a default socket buffer.
func exchange(t *testing.T, sender, receiver net.PacketConn, dst net.Addr, writes int) netip.AddrPort {
	t.Helper()
	received := make(chan netip.AddrPort, 1)
	go func() { received <- receiveDatagrams(t, receiver, writes*udpSuperBatch) }()
	for w := range writes {
		if _, err := sender.WriteTo(udpSuperPayload(w), dst); err != nil {
			t.Errorf("write %d: %v", w, err)
			break
		}
		time.Sleep(udpSuperPace)
	}
	return <-received
}

// receiveDatagrams reads want datagrams from c, each udpSuperSize bytes with
// the content udpSuperPayload gave it, every number once, all from one
// source, which it returns. It reports failures with t.Errorf, so that it
// may run in its own goroutine.
func receiveDatagrams(t *testing.T, c net.PacketConn, want int) netip.AddrPort {
	seen := make(map[uint32]bool)
	var from netip.AddrPort
	buf := make([]byte, 65536)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	for len(seen) < want {
		n, addr, err := c.ReadFrom(buf)
		if err != nil {
			var missing []uint32
			for i := range uint32(want) {
				if !seen[i] {
					missing = append(missing, i)
				}
			}
			t.Errorf("received %d of %d datagrams, missing %v: %v", len(seen), want, missing, err)
			return from
		}
		src := addr.(*net.UDPAddr).AddrPort()
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if from.IsValid() && src != from {
			t.Errorf("datagram from %v after datagrams from %v", src, from)
			return from
		}
		from = src
		d := buf[:n]
		if n != udpSuperSize {
			t.Errorf("a datagram of %d bytes, want %d", n, udpSuperSize)
			return from
		}
		num := binary.BigEndian.Uint32(d)
		for j := 4; j < n; j++ {
			if d[j] != byte(num) {
				t.Errorf("datagram %d: byte %d is %#x, want %#x", num, j, d[j], byte(num))
				return from
			}
		}
		if seen[num] {
			t.Errorf("datagram %d arrived twice", num)
			return from
		}
		seen[num] = true
	}
	return from
}

// checkWire checks tcpdump -vv's lines: want datagrams of udpSuperSize bytes
// matching flow ("src.port > dst.port"), each with "udp sum ok".
func checkWire(t *testing.T, lines []string, want int, flow string) {
	t.Helper()
	var ok, bad int
	for _, line := range lines {
		if !strings.Contains(line, flow) {
			continue
		}
		switch {
		case strings.Contains(line, "udp sum ok") && strings.Contains(line, fmt.Sprintf("length %d", udpSuperSize)):
			ok++
		default:
			bad++
			if bad <= 3 {
				t.Errorf("on the wire: %s", line)
			}
		}
	}
	if ok != want || bad != 0 {
		t.Logf("capture:\n%s", strings.Join(lines, "\n"))
		t.Errorf("on the wire: %d datagrams of %d bytes with a correct checksum, %d others; want %d and 0", ok, udpSuperSize, bad, want)
	}
}

package wan

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/datapath"
	"github.com/vpnmasq/vpnmasq/internal/netnstest"
	"github.com/vpnmasq/vpnmasq/internal/testpacket"
	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/offload"
)

// wanLab is two namespaces joined by a veth pair: the router's WAN side
// (wan0, 198.18.0.1) and a peer on the outside (peer0, 198.18.0.2).
type wanLab struct {
	router, peer string
	wanAddr      netip.Addr
	peerAddr     netip.Addr
}

func newWANLab(t testing.TB) wanLab {
	t.Helper()
	netnstest.RequireRoot(t, "nft")
	l := wanLab{
		router:   netnstest.New(t, "vmq-rt-wan"),
		peer:     netnstest.New(t, "vmq-rt-peer"),
		wanAddr:  netip.MustParseAddr("198.18.0.1"),
		peerAddr: netip.MustParseAddr("198.18.0.2"),
	}
	netnstest.Veth(t, l.router, "wan0", "198.18.0.1/24", l.peer, "peer0", "198.18.0.2/24")
	return l
}

func (l wanLab) openWAN(t *testing.T, c Capture) *Transport {
	t.Helper()
	var w *Transport
	netnstest.MustDo(t, l.router, func() error {
		var err error
		w, err = Open(c, Options{})
		return err
	})
	t.Cleanup(func() { w.Close() })
	return w
}

// wanReader delivers every packet Read returns, copied, on a channel.
func wanReader(t *testing.T, w *Transport) <-chan []byte {
	t.Helper()
	out := make(chan []byte, 64)
	const offset = 16 // headroom, as the router uses it
	bufs := make([][]byte, w.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, offset+65535)
	}
	sizes := make([]int, len(bufs))
	hdrs := make([]offload.Header, len(bufs))
	go func() {
		defer close(out)
		for {
			n, err := w.Read(bufs, sizes, hdrs, offset)
			if err != nil {
				return
			}
			for i := range n {
				out <- append([]byte(nil), bufs[i][offset:offset+sizes[i]]...)
			}
		}
	}()
	return out
}

func nextPacket(t *testing.T, ch <-chan []byte, d time.Duration) []byte {
	t.Helper()
	select {
	case p, ok := <-ch:
		if !ok {
			t.Fatal("WAN reader stopped")
		}
		return p
	case <-time.After(d):
		t.Fatalf("no packet from the WAN transport within %v", d)
		return nil
	}
}

func udpDstPortAndPayload(t *testing.T, pkt []byte) (uint16, []byte) {
	t.Helper()
	ip := header.IPv4(pkt)
	if !ip.IsValid(len(pkt)) || ip.Protocol() != uint8(header.UDPProtocolNumber) {
		t.Fatalf("not an IPv4 UDP packet: % x", pkt)
	}
	u := header.UDP(ip.Payload())
	return u.DestinationPort(), u.Payload()
}

func TestWANReadReturnsOnlyCapturedPackets(t *testing.T) {
	lab := newWANLab(t)
	w := lab.openWAN(t, Capture{
		Interface: "wan0",
		Addr:      lab.wanAddr,
		Ports:     []config.PortRange{{First: 20000, Last: 20010}},
		// The peer's address as a "LAN prefix": nothing arriving on wan0 is
		// addressed to it, so only the router's own outgoing frames could
		// match it.
		Prefixes: []netip.Prefix{netip.MustParsePrefix("198.18.0.2/32")},
	})
	packets := wanReader(t, w)
	echo := netnstest.ListenUDP(t, lab.router, "198.18.0.1:7777")
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFromUDP(buf)
			if err != nil {
				return
			}
			echo.WriteToUDP(buf[:n], from)
		}
	}()
	peer := netnstest.ListenUDP(t, lab.peer, "198.18.0.2:0")
	send := func(port int, payload string) {
		t.Helper()
		if _, err := peer.WriteToUDP([]byte(payload), &net.UDPAddr{IP: net.IPv4(198, 18, 0, 1), Port: port}); err != nil {
			t.Fatalf("sending to port %d: %v", port, err)
		}
	}

	t.Run("udp to a captured port is returned whole, starting at the IPv4 header", func(t *testing.T) {
		send(20005, "captured-1")
		pkt := nextPacket(t, packets, 3*time.Second)
		if pkt[0]>>4 != 4 {
			t.Fatalf("packet does not start at an IPv4 header: % x", pkt)
		}
		port, payload := udpDstPortAndPayload(t, pkt)
		if port != 20005 || string(payload) != "captured-1" {
			t.Fatalf("got port %d payload %q, want 20005 %q", port, payload, "captured-1")
		}
		if src := header.IPv4(pkt).SourceAddress().As4(); netip.AddrFrom4(src) != lab.peerAddr {
			t.Fatalf("source %v, want %v", netip.AddrFrom4(src), lab.peerAddr)
		}
	})
	t.Run("udp to an uncaptured port is not returned and the host answers it", func(t *testing.T) {
		send(7777, "for-the-host")
		reply, _, err := netnstest.ReadUDP(peer, 3*time.Second)
		if err != nil || string(reply) != "for-the-host" {
			t.Fatalf("the host's echo service did not answer: %q, %v", reply, err)
		}
		// Packets on one veth keep their order: if the uncaptured one had
		// been returned, it would come before this marker.
		send(20006, "marker")
		pkt := nextPacket(t, packets, 3*time.Second)
		if port, payload := udpDstPortAndPayload(t, pkt); port != 20006 || string(payload) != "marker" {
			t.Fatalf("got port %d payload %q before the marker: uncaptured traffic leaked into the capture", port, payload)
		}
	})
	t.Run("packets the router sends itself are not returned", func(t *testing.T) {
		// Addressed to the captured /32: a capture that saw outgoing
		// frames would return it before the marker.
		out := netnstest.ListenUDP(t, lab.router, "198.18.0.1:20009")
		if _, err := out.WriteToUDP([]byte("outgoing"), &net.UDPAddr{IP: net.IPv4(198, 18, 0, 2), Port: 20009}); err != nil {
			t.Fatal(err)
		}
		send(20007, "marker-2")
		pkt := nextPacket(t, packets, 3*time.Second)
		if port, payload := udpDstPortAndPayload(t, pkt); port != 20007 || string(payload) != "marker-2" {
			t.Fatalf("got port %d payload %q before the marker", port, payload)
		}
	})
}

func TestWANWriteSendsBatchAndReportsRefusedPackets(t *testing.T) {
	lab := newWANLab(t)
	w := lab.openWAN(t, Capture{Interface: "wan0", Addr: lab.wanAddr})
	peer := netnstest.ListenUDP(t, lab.peer, "198.18.0.2:9999")

	const offset = 8
	withHeadroom := func(p []byte) []byte { return append(make([]byte, offset), p...) }
	udp := func(dst netip.Addr, payload []byte) []byte {
		return withHeadroom(craftIPv4(t, testpacket.Spec{Src: lab.wanAddr, Dst: dst, Proto: 17, SrcPort: 20001, DstPort: 9999, Payload: payload}))
	}
	unroutable := netip.MustParseAddr("203.0.113.9") // the router namespace has no default route
	batch := [][]byte{
		udp(lab.peerAddr, []byte("one")),
		udp(unroutable, []byte("nowhere")),
		withHeadroom([]byte{0x45, 0, 0, 10, 1, 2, 3, 4, 5, 6}),
		udp(lab.peerAddr, make([]byte, 3000)), // above the 1500-byte MTU, raw sockets do not fragment
		udp(lab.peerAddr, []byte("two")),
	}
	// Trailing bytes after the packet's total length must not be sent.
	batch[4] = append(batch[4], 0xde, 0xad)

	sent, err := w.Write(batch, offset)
	if sent != 2 {
		t.Errorf("sent %d packets, want 2", sent)
	}
	var we *datapath.WriteError
	if !errors.As(err, &we) {
		t.Fatalf("Write error %v, want a *WriteError", err)
	}
	var indices []int
	for _, r := range we.Refused {
		indices = append(indices, r.Index)
	}
	if want := []int{1, 2, 3}; !equalInts(indices, want) {
		t.Errorf("refused packets %v (%v), want %v", indices, err, want)
	}
	for _, tc := range []struct {
		name  string
		errno syscall.Errno
	}{
		{"an unroutable destination is reported as ENETUNREACH", unix.ENETUNREACH},
		{"a packet above the MTU is reported as EMSGSIZE", unix.EMSGSIZE},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !errors.Is(err, tc.errno) {
				t.Fatalf("errors.Is(%v, %v) = false", err, tc.errno)
			}
		})
	}

	t.Run("the packets around the refused ones arrive at the peer", func(t *testing.T) {
		for _, want := range []string{"one", "two"} {
			got, from, err := netnstest.ReadUDP(peer, 3*time.Second)
			if err != nil {
				t.Fatalf("waiting for %q: %v", want, err)
			}
			if string(got) != want {
				t.Fatalf("got %q, want %q", got, want)
			}
			if from.String() != "198.18.0.1:20001" {
				t.Fatalf("from %v, want 198.18.0.1:20001 (the source in the crafted header)", from)
			}
		}
	})
	t.Run("a batch larger than BatchSize is sent in full", func(t *testing.T) {
		var big [][]byte
		for i := 0; i < w.BatchSize()+10; i++ {
			big = append(big, udp(lab.peerAddr, []byte{byte(i)}))
		}
		sent, err := w.Write(big, offset)
		if err != nil || sent != len(big) {
			t.Fatalf("sent %d of %d: %v", sent, len(big), err)
		}
		for i := range big {
			got, _, err := netnstest.ReadUDP(peer, 3*time.Second)
			if err != nil {
				t.Fatalf("packet %d of %d: %v", i, len(big), err)
			}
			if !bytes.Equal(got, []byte{byte(i)}) {
				t.Fatalf("packet %d carries %v", i, got)
			}
		}
	})
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestWANCloseUnblocksRead(t *testing.T) {
	lab := newWANLab(t)
	w := lab.openWAN(t, Capture{Interface: "wan0", Addr: lab.wanAddr})
	done := make(chan error, 1)
	go func() {
		bufs := [][]byte{make([]byte, 2048)}
		_, err := w.Read(bufs, make([]int, 1), make([]offload.Header, 1), 0)
		done <- err
	}()
	time.Sleep(100 * time.Millisecond) // let Read park in the poller
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close returned %v, want net.ErrClosed", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Read still blocked 3s after Close")
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestWANOpenRefusesUnknownInterface(t *testing.T) {
	lab := newWANLab(t)
	err := netnstest.Do(lab.router, func() error {
		w, err := Open(Capture{Interface: "nosuch0", Addr: lab.wanAddr}, Options{})
		if err == nil {
			w.Close()
		}
		return err
	})
	if err == nil {
		t.Fatal("Open on a missing interface succeeded")
	}
}

func TestWANReadReturnsWirePacketsWhateverTheOffloads(t *testing.T) {
	lab := newWANLab(t)
	if _, err := exec.LookPath("ethtool"); err != nil {
		t.Fatalf("this test turns GRO on in its lab with ethtool: %v", err)
	}
	// GRO on the router's end of the veth: the kernel merges the peer's TCP
	// segments into super-packets before the capture socket sees them, as
	// on most physical NICs.
	netnstest.Run(t, "ip", "netns", "exec", lab.router, "ethtool", "-K", "wan0", "gro", "on")
	w := lab.openWAN(t, Capture{Interface: "wan0", Addr: lab.wanAddr, Ports: []config.PortRange{{First: 5201, Last: 5201}, {First: 20000, Last: 20010}}})
	packets := wanReader(t, w)

	t.Run("a udp datagram from a stack with checksum offload arrives with a complete checksum", func(t *testing.T) {
		peer := netnstest.ListenUDP(t, lab.peer, "198.18.0.2:0")
		if _, err := peer.WriteToUDP([]byte("checksum-me"), &net.UDPAddr{IP: net.IPv4(198, 18, 0, 1), Port: 20005}); err != nil {
			t.Fatal(err)
		}
		pkt := nextPacket(t, packets, 3*time.Second)
		if !testpacket.TransportChecksumValid(pkt) {
			t.Fatalf("UDP checksum not valid: % x", pkt)
		}
	})

	t.Run("a bulk tcp transfer arrives as valid wire-sized segments", func(t *testing.T) {
		// Count what the capture returns while the transfer runs, so the
		// socket buffer never fills because the test is not reading.
		type tally struct {
			count, invalid, oversize int
			payload                  int64
		}
		stop := make(chan struct{})
		result := make(chan tally, 1)
		go func() {
			var tl tally
			for {
				select {
				case pkt := <-packets:
					tl.count++
					if len(pkt) > 1500 {
						tl.oversize++
					}
					if !testpacket.TransportChecksumValid(pkt) {
						tl.invalid++
					}
					ip := header.IPv4(pkt)
					if ip.Protocol() == nat.ProtoTCP && header.TCP(ip.Payload()).DestinationPort() == 5201 {
						tl.payload += int64(len(ip.Payload()) - int(header.TCP(ip.Payload()).DataOffset()))
					}
				case <-stop:
					result <- tl
					return
				}
			}
		}()

		var ln net.Listener
		netnstest.MustDo(t, lab.router, func() error {
			var err error
			ln, err = net.Listen("tcp4", "198.18.0.1:5201")
			return err
		})
		defer ln.Close()
		received := make(chan int64, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				received <- -1
				return
			}
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			received <- n
		}()
		// Paced in 64 KiB bursts: each burst still reaches the router
		// back to back (so GRO merges it), but the capture keeps up and the
		// byte count below can be exact.
		const total, burst = 8 << 20, 64 << 10
		var conn net.Conn
		netnstest.MustDo(t, lab.peer, func() error {
			var err error
			conn, err = net.DialTimeout("tcp4", "198.18.0.1:5201", 3*time.Second)
			return err
		})
		go func() {
			defer conn.Close()
			chunk := make([]byte, burst)
			for sent := 0; sent < total; sent += burst {
				if _, err := conn.Write(chunk); err != nil {
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
		select {
		case n := <-received:
			if n != total {
				t.Fatalf("the host's socket received %d of %d bytes", n, total)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("transfer did not finish within 20s")
		}
		time.Sleep(500 * time.Millisecond) // let the capture catch up
		close(stop)
		tl := <-result
		count, invalid, oversize, payload := tl.count, tl.invalid, tl.oversize, tl.payload
		stats, err := w.Stats()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("captured %d packets, %d payload bytes; stats %+v", count, payload, stats)
		if oversize > 0 {
			t.Errorf("%d captured packets exceed the 1500-byte MTU: super-packets leaked through", oversize)
		}
		if invalid > 0 {
			t.Errorf("%d captured packets have an invalid transport checksum", invalid)
		}
		if stats.Segmented == 0 {
			t.Errorf("no super-packet was split: GRO did not merge anything, the test proves nothing")
		}
		if stats.KernelDrops == 0 && stats.Truncated == 0 && payload < total {
			t.Errorf("captured %d payload bytes of %d without any drop: segments lost in splitting", payload, total)
		}
	})
}

// BenchmarkWANWrite measures the send path: batches of small UDP packets
// through sendmmsg to a peer across a veth (no listener there; the peer's
// port unreachables are rate limited). Needs root.
func BenchmarkWANWrite(b *testing.B) {
	lab := newWANLab(b)
	var w *Transport
	netnstest.MustDo(b, lab.router, func() error {
		var err error
		w, err = Open(Capture{Interface: "wan0", Addr: lab.wanAddr}, Options{})
		return err
	})
	defer w.Close()
	batch := make([][]byte, w.BatchSize())
	for i := range batch {
		batch[i] = craftIPv4(b, testpacket.Spec{Src: lab.wanAddr, Dst: lab.peerAddr, Proto: 17, SrcPort: 20001, DstPort: 9, Payload: make([]byte, 32)})
	}
	b.ResetTimer()
	sent := 0
	for sent < b.N {
		n, err := w.Write(batch[:min(len(batch), b.N-sent)], 0)
		if err != nil {
			b.Fatal(err)
		}
		sent += n
	}
	b.ReportMetric(float64(sent)/b.Elapsed().Seconds(), "pkt/s")
}

package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// fragmentDatagram splits a whole IPv4 packet (as forgedIPv4 builds it)
// into fragments carrying at most chunk payload bytes each (a multiple of
// 8), first fragment first, with DF clear and the given identification.
func fragmentDatagram(pkt []byte, id uint16, chunk int) [][]byte {
	const hlen = 20
	payload := pkt[hlen:]
	var out [][]byte
	for off := 0; off < len(payload); off += chunk {
		end := min(off+chunk, len(payload))
		f := make([]byte, hlen+end-off)
		copy(f, pkt[:hlen])
		copy(f[hlen:], payload[off:end])
		binary.BigEndian.PutUint16(f[2:], uint16(len(f)))
		binary.BigEndian.PutUint16(f[4:], id)
		flagsOff := uint16(off / 8)
		if end < len(payload) {
			flagsOff |= 0x2000 // MF
		}
		binary.BigEndian.PutUint16(f[6:], flagsOff)
		ip := header.IPv4(f)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		out = append(out, f)
	}
	return out
}

// sendLastFirst sends fragments in reverse order, the first fragment last.
// Paced, it pauses between them so that each reaches the router in a read
// of its own and the later fragments wait in the router across packet
// loop passes; else they go back to back and may share a pass.
func sendLastFirst(t *testing.T, s *rawSender, frags [][]byte, paced bool) {
	t.Helper()
	for i := len(frags) - 1; i >= 0; i-- {
		if err := s.send(frags[i]); err != nil {
			t.Fatalf("sending fragment %d: %v", i, err)
		}
		if paced {
			time.Sleep(30 * time.Millisecond)
		}
	}
}

// fragmentLines returns tcpdump's summary lines of captured fragments.
func fragmentLines(lines []string) []string {
	var out []string
	for _, l := range lines {
		if strings.Contains(l, "offset") && !strings.HasPrefix(strings.TrimSpace(l), "0x") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}

// TestFragmentsOutOfOrder sends a UDP datagram split into three fragments,
// the last one first and the first one last, through the real router in
// both directions: LAN→WAN from lan1, and WAN→LAN as the WAN host's answer
// to lan1's mapping. The receiving UDP socket must get the whole datagram
// (RFC 4787 REQ-14). Before the engine held early fragments, both were
// dropped as unmatched_fragment and nothing arrived.
func TestFragmentsOutOfOrder(t *testing.T) {
	l := newLab(t, lab.Options{})
	config, socket := hardeningConfig(t, "", "")
	startRouter(t, l, config)
	api := newAdminAPI(socket)

	wanSock, err := l.WAN.ListenPacket("udp4", "198.18.0.2:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer wanSock.Close()
	lanAddr := netip.AddrPortFrom(lab.LAN1Addr, 41000)
	lanSock, err := l.LAN1.ListenPacket("udp4", lanAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer lanSock.Close()

	payload := func(tag string) []byte {
		b := make([]byte, 3000)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		copy(b, tag)
		return b
	}
	// receive waits for the datagram that starts with tag on sock.
	receive := func(sock net.PacketConn, tag string, want []byte) (net.Addr, bool) {
		buf := make([]byte, 65536)
		deadline := time.Now().Add(3 * time.Second)
		for {
			_ = sock.SetReadDeadline(deadline)
			n, from, err := sock.ReadFrom(buf)
			if err != nil {
				return nil, false
			}
			if bytes.HasPrefix(buf[:n], []byte(tag)) {
				if !bytes.Equal(buf[:n], want) {
					t.Errorf("%s: received %d bytes that differ from the %d sent", tag, n, len(want))
				}
				return from, true
			}
		}
	}

	for i, mode := range []string{"paced", "back to back"} {
		paced, id := mode == "paced", uint16(i)
		tag := func(s string) string { return s + " " + mode }
		t.Run("lan to wan, last fragment first, "+mode, func(t *testing.T) {
			s, err := openRawSender(l.LAN1)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			capt := startCapture(t, l.WAN, lab.HostIf, "udp or (ip[6:2] & 0x1fff != 0)")
			data := payload(tag("lan-to-wan"))
			pkt := udpPacket(netip.AddrPortFrom(lab.LAN1Addr, 41001), netip.MustParseAddrPort("198.18.0.2:7000"), data)
			frags := fragmentDatagram(pkt, 0x4c41+id, 1000)
			if len(frags) != 4 {
				t.Fatalf("%d fragments", len(frags))
			}
			sendLastFirst(t, s, frags, paced)
			from, ok := receive(wanSock, tag("lan-to-wan"), data)
			lines := fragmentLines(capt.stop())
			t.Logf("on the WAN host's wire:\n  %s", strings.Join(lines, "\n  "))
			if !ok {
				t.Fatalf("the WAN host's socket did not receive the datagram; drops: %s", fragmentDrops(t, api))
			}
			if a := netip.MustParseAddrPort(from.String()); a.Addr() != lab.RouterWANAddr {
				t.Errorf("received from %v, want the WAN address", from)
			}
			t.Logf("the WAN host's socket received all %d bytes from %v", len(data), from)
			if len(lines) != len(frags) || !strings.Contains(lines[0], "offset 0,") {
				t.Errorf("want the first fragment to leave first, then the others: %d fragments seen", len(lines))
			}
		})

		t.Run("wan to lan, a reply to lan1's mapping, last fragment first, "+mode, func(t *testing.T) {
			// lan1 opens the mapping; the WAN host learns its address.
			if _, err := lanSock.WriteTo([]byte("open"), wanSock.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			mapped, ok := receive(wanSock, "open", []byte("open"))
			if !ok {
				t.Fatal("lan1's datagram did not reach the WAN host")
			}
			ext := netip.MustParseAddrPort(mapped.String())
			t.Logf("lan1 %v is mapped to %v", lanAddr, ext)

			s, err := openRawSender(l.WAN)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			capt := startCapture(t, l.LAN1, lab.HostIf, "udp or (ip[6:2] & 0x1fff != 0)")
			data := payload(tag("wan-to-lan"))
			pkt := udpPacket(netip.MustParseAddrPort("198.18.0.2:7000"), ext, data)
			frags := fragmentDatagram(pkt, 0x574c+id, 1000)
			sendLastFirst(t, s, frags, paced)
			from, ok := receive(lanSock, tag("wan-to-lan"), data)
			lines := fragmentLines(capt.stop())
			t.Logf("on lan1's wire:\n  %s", strings.Join(lines, "\n  "))
			if !ok {
				t.Fatalf("lan1's socket did not receive the datagram; drops: %s", fragmentDrops(t, api))
			}
			if from.String() != "198.18.0.2:7000" {
				t.Errorf("received from %v", from)
			}
			t.Logf("lan1's socket received all %d bytes from %v", len(data), from)
		})
	}
	t.Logf("drops: %s", fragmentDrops(t, api))
}

// fragmentDrops reads the fragment drop counters from /metrics.
func fragmentDrops(t *testing.T, api *adminAPI) string {
	t.Helper()
	m := api.metrics(t)
	var parts []string
	for _, r := range []string{"unmatched_fragment", "fragment_expired", "fragment_buffer_full"} {
		v, _ := metricValue(m, fmt.Sprintf(`vpnmasq_drops_total{reason=%q}`, r))
		parts = append(parts, fmt.Sprintf("%s=%v", r, v))
	}
	return strings.Join(parts, " ")
}

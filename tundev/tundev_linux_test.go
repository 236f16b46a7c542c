package tundev

import (
	"net"
	"os/exec"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/datapath"
	"github.com/vpnmasq/vpnmasq/internal/netnstest"
	"github.com/vpnmasq/vpnmasq/offload"
)

// inNewNetns runs fn on a locked OS thread in a network namespace of its
// own (named vmq-tun-..., deleted at cleanup).
func inNewNetns(t *testing.T, fn func(ns string)) {
	t.Helper()
	ns := netnstest.NewBare(t, "vmq-tun")
	netnstest.MustDo(t, ns, func() error { fn(ns); return nil })
}

func TestDeviceReadsWhatTheKernelRoutesIntoIt(t *testing.T) {
	inNewNetns(t, func(ns string) {
		d, err := Open("vmqtest0", 1500)
		if err != nil {
			t.Error(err)
			return
		}
		defer d.Close()
		var _ datapath.SuperPacketTUN = d
		if !d.SuperPackets() {
			t.Error("this kernel's TUN has no virtio-net header: super-packets are off")
			return
		}
		for _, args := range [][]string{
			{"-n", ns, "addr", "add", "10.99.0.1/24", "dev", "vmqtest0"},
			{"-n", ns, "link", "set", "vmqtest0", "up"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Errorf("ip %v: %v\n%s", args, err, out)
				return
			}
		}
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(10, 99, 0, 2), Port: 9})
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		const offset = datapath.Headroom
		bufs := [][]byte{make([]byte, offset+datapath.MaxPacket)}
		sizes, hdrs := make([]int, 1), make([]offload.Header, 1)
		got := make(chan error, 1)
		go func() {
			for {
				n, err := d.ReadSuperPackets(bufs, sizes, hdrs, offset)
				if err != nil {
					got <- err
					return
				}
				ip := header.IPv4(bufs[0][offset : offset+sizes[0]])
				if n == 1 && ip.IsValid(sizes[0]) && ip.Protocol() == uint8(header.UDPProtocolNumber) {
					got <- nil
					return
				}
				// Something else the kernel sent (IPv6 router
				// solicitation, IGMP): read on.
			}
		}()
		if _, err := c.Write([]byte("into the tun")); err != nil {
			t.Error(err)
			return
		}
		select {
		case err := <-got:
			if err != nil {
				t.Error(err)
				return
			}
		case <-time.After(3 * time.Second):
			t.Error("no UDP packet read from the TUN within 3s")
			return
		}
		ip := header.IPv4(bufs[0][offset : offset+sizes[0]])
		if ip.DestinationAddress().String() != "10.99.0.2" {
			t.Errorf("read a packet to %v", ip.DestinationAddress())
		}
		if hdrs[0].IsSuperPacket() {
			t.Errorf("a single datagram read as a super-packet: %+v", hdrs[0])
		}
		if payload := header.UDP(ip.Payload()).Payload(); string(payload) != "into the tun" {
			t.Errorf("payload %q", payload)
		}
	})
}

package tundev

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/datapath"
	"github.com/vpnmasq/vpnmasq/offload"
)

// inNewNetns runs fn on a locked OS thread in a network namespace of its
// own (named vmq-tun-<random>, deleted at cleanup).
func inNewNetns(t *testing.T, fn func(ns string)) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("%s needs root (a network namespace and a TUN device): sudo go test ./tundev/", t.Name())
	}
	var b [4]byte
	rand.Read(b[:])
	name := "vmq-tun-" + hex.EncodeToString(b[:])
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // the thread dies with the goroutine, in the namespace
		h, err := netns.GetFromName(name)
		if err != nil {
			t.Error(err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			t.Error(err)
			return
		}
		fn(name)
	}()
	<-done
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

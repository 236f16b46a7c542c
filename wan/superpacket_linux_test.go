package wan

import (
	"io"
	"net"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/internal/netnstest"
	"github.com/vpnmasq/vpnmasq/internal/testpacket"
	"github.com/vpnmasq/vpnmasq/offload"
)

// TestWANKeepsSuperPacketsWholeWhenAsked opens the transport for a TUN that
// takes super-packets: GRO's super-packets come back whole, with a
// TUN-form header beside them rather than in the buffer.
func TestWANKeepsSuperPacketsWholeWhenAsked(t *testing.T) {
	lab := newWANLab(t)
	netnstest.Run(t, "ip", "netns", "exec", lab.router, "ethtool", "-K", "wan0", "gro", "on")
	var w *Transport
	netnstest.MustDo(t, lab.router, func() error {
		var err error
		w, err = Open(Capture{Interface: "wan0", Addr: lab.wanAddr, Ports: []config.PortRange{{First: 5201, Last: 5201}}},
			Options{KeepSuperPackets: true})
		return err
	})
	t.Cleanup(func() { w.Close() })

	type super struct {
		pkt []byte
		hdr offload.Header
	}
	got := make(chan super, 1)
	go func() {
		const offset = 16
		bufs := make([][]byte, w.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, offset+65535)
		}
		sizes, hdrs := make([]int, len(bufs)), make([]offload.Header, len(bufs))
		for {
			n, err := w.Read(bufs, sizes, hdrs, offset)
			if err != nil {
				return
			}
			for i := range n {
				if hdrs[i].IsSuperPacket() {
					select {
					case got <- super{append([]byte(nil), bufs[i][offset:offset+sizes[i]]...), hdrs[i]}:
					default:
					}
				}
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
	go func() {
		if c, err := ln.Accept(); err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	var conn net.Conn
	netnstest.MustDo(t, lab.peer, func() error {
		var err error
		conn, err = net.DialTimeout("tcp4", "198.18.0.1:5201", 3*time.Second)
		return err
	})
	defer conn.Close()
	go func() {
		chunk := make([]byte, 64<<10)
		for range 64 {
			if _, err := conn.Write(chunk); err != nil {
				return
			}
		}
	}()

	select {
	case s := <-got:
		ip := header.IPv4(s.pkt)
		ihl := int(ip.HeaderLength())
		if int(ip.TotalLength()) != len(s.pkt) || len(s.pkt) <= 1500 {
			t.Errorf("a super-packet of %d bytes (IP total length %d)", len(s.pkt), ip.TotalLength())
		}
		if s.hdr.GSOType != offload.GSOTCPv4 || !s.hdr.NeedsChecksum() || int(s.hdr.CsumStart) != ihl ||
			s.hdr.CsumOffset != header.TCPChecksumOffset || s.hdr.GSOSize == 0 {
			t.Errorf("header %+v is not the TUN's form", s.hdr)
		}
		// The checksum field holds the pseudo-header sum: completing it as
		// segmentation would must give a valid packet.
		if !testpacket.PartialChecksumCompletes(s.pkt) {
			t.Error("the super-packet's partial checksum does not complete to a valid one")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no super-packet kept whole within 10s")
	}
	if s, err := w.Stats(); err != nil || s.SuperPacketsKept == 0 {
		t.Errorf("stats %+v, err %v: none counted as kept", s, err)
	}
}

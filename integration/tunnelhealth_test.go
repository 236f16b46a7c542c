//go:build linux

package integration

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// TestTunnelHealthShowsESPLossAndReordering sends raw ESP both ways through
// the real binary with sequence numbers as a lossy, reordering path would
// leave them, and reads the pair's health from /api/v1/vpn: the numbers
// skipped are lost, the one that came after a higher one is late, each in
// its own direction.
func TestTunnelHealthShowsESPLossAndReordering(t *testing.T) {
	l := newLab(t, lab.Options{})
	config, socket := hardeningConfig(t, "", "")
	startRouter(t, l, config)
	api := newAdminAPI(socket)
	host, err := l.LAN1.ListenESP(lab.LAN1Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	gw, err := l.WAN.ListenESP(lab.WANAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()

	const outSPI, inSPI = 0x0a0b0c01, 0x0d0e0f02
	send := func(c *lab.ESPConn, dst netip.Addr, spi uint32, seqs []uint32) {
		t.Helper()
		for _, seq := range seqs {
			if err := c.Send(dst, spi, seq, []byte("payload")); err != nil {
				t.Fatal(err)
			}
			time.Sleep(5 * time.Millisecond) // in this order through the router
		}
	}
	type health struct {
		Packets, Lost, Late uint64
		Sequenced           bool
	}
	type pair struct {
		OutSPI string `json:"out_spi"`
		State  string `json:"state"`
		Out    health `json:"out"`
		In     health `json:"in"`
	}
	// until polls /api/v1/vpn until the one ESP pair satisfies ok: under
	// load the router may take a while, and a gateway packet that overtook
	// the host's first one would find no pair to answer (esp_unbound).
	until := func(what string, ok func(pair) bool) pair {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			var vpn struct {
				ESP []pair `json:"esp"`
			}
			text, err := api.get("/api/v1/vpn")
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(text), &vpn); err != nil {
				t.Fatalf("%v: %s", err, text)
			}
			if len(vpn.ESP) == 1 && vpn.ESP[0].OutSPI == "0a0b0c01" && ok(vpn.ESP[0]) {
				return vpn.ESP[0]
			}
			if time.Now().After(deadline) {
				t.Fatalf("no ESP pair %s within 5s: %s", what, text)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The host opens the pair; the gateway answers on its own SPI (two
	// packets confirm it), then both go on: outbound 4 and 5 are lost and 7
	// comes after 8; inbound 13 is lost.
	send(host, lab.WANAddr, outSPI, []uint32{1})
	until("waiting for its answer", func(p pair) bool { return p.State == "waiting" })
	send(gw, lab.RouterWANAddr, inSPI, []uint32{10, 11})
	until("established", func(p pair) bool { return p.State == "established" })
	send(host, lab.WANAddr, outSPI, []uint32{2, 3, 6, 8, 7, 9})
	send(gw, lab.RouterWANAddr, inSPI, []uint32{12, 14, 15})
	pr := until("with every packet counted", func(p pair) bool { return p.Out.Packets >= 7 && p.In.Packets >= 5 })
	t.Run("outbound: two numbers lost, one late", func(t *testing.T) {
		// 1, 2, 3, 6, 8, 7, 9.
		if pr.Out.Packets != 7 || pr.Out.Lost != 2 || pr.Out.Late != 1 || !pr.Out.Sequenced {
			t.Fatalf("out %+v", pr.Out)
		}
	})
	t.Run("inbound: one number lost, none late", func(t *testing.T) {
		// 10, 11, 12, 14, 15.
		if pr.In.Packets != 5 || pr.In.Lost != 1 || pr.In.Late != 0 || !pr.In.Sequenced {
			t.Fatalf("in %+v", pr.In)
		}
	})
	t.Run("the metrics sum them per direction", func(t *testing.T) {
		if v := api.counter(t, `vpnmasq_tunnel_lost_packets{direction="lan_to_wan",kind="esp"}`); v != 2 {
			t.Errorf("lost lan_to_wan %v, want 2", v)
		}
		if v := api.counter(t, `vpnmasq_tunnel_late_packets{direction="lan_to_wan",kind="esp"}`); v != 1 {
			t.Errorf("late lan_to_wan %v, want 1", v)
		}
	})
}

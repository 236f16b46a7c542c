package router

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/vpnmasq/vpnmasq/config"
)

func TestPlanWAN(t *testing.T) {
	pfx := netip.MustParsePrefix
	old := netip.MustParseAddr("198.18.0.1")
	host := func(wan []netip.Prefix, mutate ...func(*config.Host)) *config.Host {
		h := &config.Host{
			DefaultRouteInterface: "wan0",
			Interfaces: []config.HostInterface{
				{Name: "lan0", Index: 2, Up: true, Prefixes: []netip.Prefix{pfx("192.168.1.1/24")}},
				{Name: "wan0", Index: 3, Up: true, Prefixes: wan},
			},
		}
		for _, m := range mutate {
			m(h)
		}
		return h
	}
	follow := wanPolicy{iface: "wan0", index: 3, followAddr: true,
		lanPrefixes: map[string][]netip.Prefix{"lan0": {pfx("192.168.1.1/24")}}}
	pinned := follow
	pinned.followAddr = false
	embedded := follow
	embedded.followDefault = true

	t.Run("the address in use still on the interface changes nothing, even beside a new one", func(t *testing.T) {
		pl := planWAN(follow, old, host([]netip.Prefix{pfx("198.18.0.5/24"), pfx("198.18.0.1/24")}))
		if pl.NewAddr.IsValid() || pl.Lost || pl.Gone || !pl.Up || len(pl.LANChanged) != 0 || pl.DefaultMoved != "" {
			t.Errorf("plan %+v, want nothing to do", pl)
		}
	})
	t.Run("a new address replaces one that is gone", func(t *testing.T) {
		pl := planWAN(follow, old, host([]netip.Prefix{pfx("198.18.0.5/24")}))
		if pl.NewAddr != netip.MustParseAddr("198.18.0.5") {
			t.Errorf("new address %v, want 198.18.0.5", pl.NewAddr)
		}
	})
	t.Run("the first address is taken, as at start-up", func(t *testing.T) {
		pl := planWAN(follow, old, host([]netip.Prefix{pfx("203.0.113.7/24"), pfx("198.18.0.5/24")}))
		if pl.NewAddr != netip.MustParseAddr("203.0.113.7") {
			t.Errorf("new address %v", pl.NewAddr)
		}
	})
	t.Run("no address at all keeps the old one", func(t *testing.T) {
		pl := planWAN(follow, old, host(nil))
		if pl.NewAddr.IsValid() || !pl.Lost {
			t.Errorf("plan %+v, want the old address kept and reported lost", pl)
		}
	})
	t.Run("a configured address that disappears is kept", func(t *testing.T) {
		pl := planWAN(pinned, old, host([]netip.Prefix{pfx("198.18.0.5/24")}))
		if pl.NewAddr.IsValid() || !pl.Lost {
			t.Errorf("plan %+v, want the pinned address kept and reported lost", pl)
		}
	})
	t.Run("link down keeps everything", func(t *testing.T) {
		pl := planWAN(follow, old, host([]netip.Prefix{pfx("198.18.0.1/24")}, func(h *config.Host) { h.Interfaces[1].Up = false }))
		if pl.Up || pl.NewAddr.IsValid() || pl.Lost {
			t.Errorf("plan %+v, want down and nothing else", pl)
		}
	})
	t.Run("an interface that is gone or recreated is reported", func(t *testing.T) {
		pl := planWAN(follow, old, host(nil, func(h *config.Host) { h.Interfaces = h.Interfaces[:1] }))
		if !pl.Gone || pl.NewAddr.IsValid() {
			t.Errorf("plan %+v, want gone", pl)
		}
		pl = planWAN(follow, old, host([]netip.Prefix{pfx("198.18.0.1/24")}, func(h *config.Host) { h.Interfaces[1].Index = 9 }))
		if !pl.Recreated {
			t.Errorf("plan %+v, want recreated", pl)
		}
	})
	t.Run("a default route that moves is reported only when the WAN interface came from it", func(t *testing.T) {
		moved := func(h *config.Host) { h.DefaultRouteInterface = "wwan0" }
		if pl := planWAN(embedded, old, host([]netip.Prefix{pfx("198.18.0.1/24")}, moved)); pl.DefaultMoved != "wwan0" {
			t.Errorf("embedded default: moved to %q, want wwan0", pl.DefaultMoved)
		}
		if pl := planWAN(follow, old, host([]netip.Prefix{pfx("198.18.0.1/24")}, moved)); pl.DefaultMoved != "" {
			t.Errorf("configured interface: moved to %q, want nothing", pl.DefaultMoved)
		}
		noDefault := func(h *config.Host) { h.DefaultRouteInterface = "" }
		if pl := planWAN(embedded, old, host([]netip.Prefix{pfx("198.18.0.1/24")}, noDefault)); pl.DefaultMoved != "" {
			t.Errorf("no default route: moved to %q, want nothing (the link is down, not moved)", pl.DefaultMoved)
		}
	})
	t.Run("changed LAN prefixes are described", func(t *testing.T) {
		pl := planWAN(follow, old, host([]netip.Prefix{pfx("198.18.0.1/24")}, func(h *config.Host) {
			h.Interfaces[0].Prefixes = []netip.Prefix{pfx("192.168.1.1/24"), pfx("10.9.0.1/16")}
		}))
		want := []string{"lan0: 192.168.1.1/24 → 192.168.1.1/24,10.9.0.1/16"}
		if !slices.Equal(pl.LANChanged, want) {
			t.Errorf("LAN changes %q, want %q", pl.LANChanged, want)
		}
		pl = planWAN(follow, old, host([]netip.Prefix{pfx("198.18.0.1/24")}, func(h *config.Host) { h.Interfaces = h.Interfaces[1:] }))
		if want := []string{"lan0: 192.168.1.1/24 → none"}; !slices.Equal(pl.LANChanged, want) {
			t.Errorf("LAN changes %q, want %q", pl.LANChanged, want)
		}
	})
}

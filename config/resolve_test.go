package config

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func prefixes(list ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(list))
	for i, s := range list {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// routerHost is a typical router: a WAN with two addresses, two LAN bridges,
// and interfaces that must not become LAN interfaces.
func routerHost() *Host {
	return &Host{
		DefaultRouteInterface: "rtr-wan",
		Interfaces: []HostInterface{
			{Name: "lo", Index: 1, MTU: 65536, Up: true, Loopback: true, Prefixes: prefixes("127.0.0.1/8")},
			{Name: "rtr-wan", Index: 2, MTU: 1500, Up: true, Prefixes: prefixes("198.18.0.1/24", "198.18.0.5/24")},
			{Name: "br-lan", Index: 3, MTU: 1500, Up: true, Prefixes: prefixes("192.168.77.1/24")},
			{Name: "br-guest", Index: 4, MTU: 1500, Up: true, Prefixes: prefixes("192.168.78.1/24", "192.168.78.2/24")},
			{Name: "down0", Index: 5, MTU: 1500, Up: false, Prefixes: prefixes("10.9.9.1/24")},
			{Name: "bare0", Index: 6, MTU: 1500, Up: true},
			{Name: "vpnmasq0", Index: 7, MTU: 1500, Up: true, Prefixes: prefixes("10.255.0.1/30")},
		},
	}
}

func TestResolveFillsWhatTheFileLeftOpen(t *testing.T) {
	cases := []struct {
		name   string
		host   func(*Host)
		config func(*Config)
		check  func(*Config) any
		want   any
	}{
		{"the WAN is the default route's interface", nil, nil,
			func(c *Config) any { return c.WAN.Interface }, "rtr-wan"},
		{"the WAN address is the interface's first IPv4 address", nil, nil,
			func(c *Config) any { return c.WAN.Address }, netip.MustParseAddr("198.18.0.1")},
		{"the WAN MTU is the interface's MTU", nil, nil,
			func(c *Config) any { return c.WAN.MTU }, 1500},
		{"LAN interfaces are the up, non-loopback interfaces with IPv4 except WAN and TUN", nil, nil,
			func(c *Config) any { return c.LAN.Interfaces }, []string{"br-lan", "br-guest"}},
		{"LAN prefixes are the masked subnets of the LAN interfaces, without duplicates", nil, nil,
			func(c *Config) any { return c.LAN.Prefixes }, prefixes("192.168.77.0/24", "192.168.78.0/24")},
		{"DNS upstreams are the host's IPv4 nameservers on port 53, the service address left out",
			func(h *Host) {
				h.Nameservers = []netip.Addr{netip.MustParseAddr("198.18.0.53"), netip.MustParseAddr("192.0.2.53")}
			}, nil,
			func(c *Config) any { return c.Services.DNSUpstream },
			[]Upstream{Upstream(netip.MustParseAddrPort("198.18.0.53:53"))}},
		{"explicit DNS upstreams are kept", func(h *Host) { h.Nameservers = []netip.Addr{netip.MustParseAddr("198.18.0.53")} },
			func(c *Config) {
				c.Services.DNSUpstream = []Upstream{Upstream(netip.MustParseAddrPort("198.18.0.9:5353"))}
			},
			func(c *Config) any { return c.Services.DNSUpstream },
			[]Upstream{Upstream(netip.MustParseAddrPort("198.18.0.9:5353"))}},
		{"the admin server allows the LAN prefixes", nil, nil,
			func(c *Config) any { return c.Services.AdminAllow }, prefixes("192.168.77.0/24", "192.168.78.0/24")},
		{"an explicit WAN interface is used instead of the default route's", nil,
			func(c *Config) { c.WAN.Interface = "br-guest"; c.LAN.Interfaces = []string{"br-lan"} },
			func(c *Config) any { return []any{c.WAN.Interface, c.WAN.Address} },
			[]any{"br-guest", netip.MustParseAddr("192.168.78.1")}},
		{"an explicit WAN interface needs no default route", func(h *Host) { h.DefaultRouteInterface = "" },
			func(c *Config) { c.WAN.Interface = "rtr-wan" },
			func(c *Config) any { return c.WAN.Interface }, "rtr-wan"},
		{"an explicit WAN address that the interface has is kept", nil,
			func(c *Config) { c.WAN.Address = netip.MustParseAddr("198.18.0.5") },
			func(c *Config) any { return c.WAN.Address }, netip.MustParseAddr("198.18.0.5")},
		{"an explicit WAN MTU below the interface's clamps it", nil,
			func(c *Config) { c.WAN.MTU = 1400 },
			func(c *Config) any { return c.WAN.MTU }, 1400},
		{"explicit LAN interfaces give the prefixes", nil,
			func(c *Config) { c.LAN.Interfaces = []string{"br-guest"} },
			func(c *Config) any { return c.LAN.Prefixes }, prefixes("192.168.78.0/24")},
		{"LAN prefixes inside other LAN prefixes are dropped",
			func(h *Host) {
				h.Interfaces[2].Prefixes = prefixes("192.168.77.130/25", "192.168.77.1/24")
				h.Interfaces[3].Prefixes = prefixes("192.168.77.5/26")
			}, nil,
			func(c *Config) any { return c.LAN.Prefixes }, prefixes("192.168.77.0/24")},
		{"explicit LAN prefixes are kept", nil,
			func(c *Config) { c.LAN.Prefixes = prefixes("192.168.77.0/25") },
			func(c *Config) any { return c.LAN.Prefixes }, prefixes("192.168.77.0/25")},
		{"a down interface may be named as a LAN interface", nil,
			func(c *Config) { c.LAN.Interfaces = []string{"down0"} },
			func(c *Config) any { return c.LAN.Prefixes }, prefixes("10.9.9.0/24")},
		{"a forward into a resolved LAN prefix is accepted", nil,
			func(c *Config) {
				c.Forwards = []Forward{{Proto: "tcp", Port: PortRange{80, 80}, To: netip.MustParseAddr("192.168.78.10")}}
			},
			func(c *Config) any { return len(c.Forwards) }, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := routerHost()
			if tc.host != nil {
				tc.host(h)
			}
			c := Default()
			if tc.config != nil {
				tc.config(c)
			}
			if err := c.Resolve(h); err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if got := tc.check(c); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestResolveReportsWhatTheHostCannotProvide(t *testing.T) {
	cases := []struct {
		name   string
		host   func(*Host)
		config func(*Config)
		want   []string // "key: part of the message"
	}{
		{"a named WAN interface must exist", nil,
			func(c *Config) { c.WAN.Interface = "eth9" },
			[]string{`wan.interface: no interface "eth9" on this host`}},
		{"without a default route the WAN must be named", func(h *Host) { h.DefaultRouteInterface = "" }, nil,
			[]string{"wan.interface: not set, and this host has no IPv4 default route"}},
		{"the WAN cannot be loopback", nil,
			func(c *Config) { c.WAN.Interface = "lo" },
			[]string{`wan.interface: "lo" is a loopback interface`}},
		{"the WAN needs an IPv4 address", nil,
			func(c *Config) { c.WAN.Interface = "bare0" },
			[]string{`wan.address: interface "bare0" has no IPv4 address`}},
		{"an explicit WAN address must be on the WAN interface", nil,
			func(c *Config) { c.WAN.Address = netip.MustParseAddr("198.18.0.9") },
			[]string{"wan.address: 198.18.0.9 is not an address of interface \"rtr-wan\" (it has 198.18.0.1/24, 198.18.0.5/24)"}},
		{"an explicit WAN MTU cannot exceed the interface's", nil,
			func(c *Config) { c.WAN.MTU = 9000 },
			[]string{`wan.mtu: 9000 is above the MTU of interface "rtr-wan" (1500)`}},
		{"named LAN interfaces must exist", nil,
			func(c *Config) { c.LAN.Interfaces = []string{"br-lan", "br-iot"} },
			[]string{`lan.interfaces[1]: no interface "br-iot" on this host`}},
		{"a host without LAN candidates is an error",
			func(h *Host) { h.Interfaces = h.Interfaces[:2] }, nil,
			[]string{"lan.interfaces: not set, and no interface other than the WAN (\"rtr-wan\") is up with an IPv4 address"}},
		{"LAN interfaces without addresses leave no prefixes", nil,
			func(c *Config) { c.LAN.Interfaces = []string{"bare0"} },
			[]string{"lan.prefixes: not set, and the LAN interfaces (bare0) have no IPv4 address"}},
		{"a forward outside the resolved LAN prefixes is an error", nil,
			func(c *Config) {
				c.Forwards = []Forward{{Proto: "tcp", Port: PortRange{80, 80}, To: netip.MustParseAddr("10.1.1.1"), Line: 12}}
			},
			[]string{"forward[0].to: 10.1.1.1 is not inside lan.prefixes (192.168.77.0/24, 192.168.78.0/24)"}},
		{"the services address inside a resolved LAN prefix is an error", nil,
			func(c *Config) { c.Services.Address = netip.MustParseAddr("192.168.77.53") },
			[]string{"services.address: 192.168.77.53 lies inside lan.prefixes[0]"}},
		{"a resolved WAN address inside explicit LAN prefixes is an error", nil,
			func(c *Config) { c.LAN.Prefixes = prefixes("198.18.0.0/15") },
			[]string{"wan.address: 198.18.0.1 lies inside lan.prefixes[0]"}},
		{"every problem is reported at once", func(h *Host) { h.DefaultRouteInterface = "" },
			func(c *Config) { c.LAN.Interfaces = []string{"nope"} },
			[]string{"wan.interface: not set", `lan.interfaces[0]: no interface "nope"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := routerHost()
			if tc.host != nil {
				tc.host(h)
			}
			c := Default()
			if tc.config != nil {
				tc.config(c)
			}
			before := c.clone()
			err := c.Resolve(h)
			var es *Errors
			if !errors.As(err, &es) {
				t.Fatalf("got %v (%T), want *Errors", err, err)
			}
			for _, w := range tc.want {
				found := false
				for _, e := range *es {
					found = found || strings.Contains(e.Key+": "+e.Msg, w)
				}
				if !found {
					t.Errorf("missing %q in:\n%v", w, err)
				}
			}
			if len(*es) != len(tc.want) {
				t.Errorf("got %d problems, want %d:\n%v", len(*es), len(tc.want), err)
			}
			if !reflect.DeepEqual(c, before) {
				t.Errorf("a failed Resolve changed the configuration:\n got %+v\nwant %+v", c, before)
			}
		})
	}
	t.Run("problems name the configuration's source and a forward's line", func(t *testing.T) {
		c := Default()
		c.Source = "/etc/vpnmasq/vpnmasq.toml"
		c.Forwards = []Forward{{Proto: "esp", To: netip.MustParseAddr("10.1.1.1"), Line: 12}}
		err := c.Resolve(routerHost())
		if err == nil || !strings.HasPrefix(err.Error(), "/etc/vpnmasq/vpnmasq.toml:12: forward[0].to: ") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("problems of a loaded file name the line of their key", func(t *testing.T) {
		c, err := parse("vpnmasq.toml", "[lan]\ninterfaces = [\"br-lan\"]\n\n[wan]\ninterface = \"eth9\"\n")
		if err != nil {
			t.Fatal(err)
		}
		err = c.Resolve(routerHost())
		if want := `vpnmasq.toml:5: wan.interface: no interface "eth9" on this host`; err == nil || err.Error() != want {
			t.Errorf("got %v, want %s", err, want)
		}
	})
	t.Run("a nil host is an error, not a panic", func(t *testing.T) {
		if err := Default().Resolve(nil); err == nil {
			t.Error("Resolve(nil) succeeded")
		}
	})
}

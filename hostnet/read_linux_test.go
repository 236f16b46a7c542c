package hostnet

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/internal/netnstest"
)

// prefixes parses IPv4 prefixes.
func prefixes(list ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(list))
	for i, s := range list {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// testNamespace creates a network namespace as the kernel makes it, deleted
// when the test ends, and returns its name and a function running `ip`
// inside it.
func testNamespace(t *testing.T) (string, func(args ...string)) {
	t.Helper()
	name := netnstest.NewBare(t, "vmq-cfg")
	return name, func(args ...string) {
		t.Helper()
		netnstest.Run(t, append([]string{"ip", "-n", name}, args...)...)
	}
}

// readHostIn runs ReadHost inside the named namespace.
func readHostIn(t *testing.T, name string) *config.Host {
	t.Helper()
	var h *config.Host
	err := netnstest.Do(name, func() (err error) {
		h, err = ReadHost()
		return err
	})
	if err != nil {
		t.Fatalf("ReadHost in %s: %v", name, err)
	}
	return h
}

func TestReadHostSeesTheNamespacesInterfacesAndDefaultRoute(t *testing.T) {
	name, ip := testNamespace(t)
	ip("link", "add", "vmq-wan", "type", "veth", "peer", "name", "vmq-wan-peer")
	ip("link", "add", "vmq-lan", "type", "veth", "peer", "name", "vmq-lan-peer")
	ip("link", "set", "vmq-wan", "mtu", "1400")
	ip("link", "set", "vmq-wan-peer", "mtu", "1400")
	ip("addr", "add", "198.18.0.1/24", "dev", "vmq-wan")
	ip("addr", "add", "192.168.77.1/24", "dev", "vmq-lan")
	ip("addr", "add", "192.168.77.2/25", "dev", "vmq-lan")
	for _, dev := range []string{"vmq-wan", "vmq-wan-peer", "vmq-lan", "vmq-lan-peer"} {
		ip("link", "set", dev, "up")
	}
	ip("route", "add", "default", "via", "198.18.0.254", "dev", "vmq-wan", "metric", "5")

	h := readHostIn(t, name)
	byName := map[string]config.HostInterface{}
	for _, iface := range h.Interfaces {
		byName[iface.Name] = iface
	}
	cases := []struct {
		name      string
		got, want any
	}{
		{"the default route's interface is found", h.DefaultRouteInterface, "vmq-wan"},
		{"every interface is listed", len(h.Interfaces), 5},
		{"loopback is marked and, never set up here, down", []bool{byName["lo"].Loopback, byName["lo"].Up}, []bool{true, false}},
		{"an interface's MTU is read", byName["vmq-wan"].MTU, 1400},
		{"an up interface is up and not loopback", []bool{byName["vmq-lan"].Up, byName["vmq-lan"].Loopback}, []bool{true, false}},
		{"addresses keep their prefix length", byName["vmq-lan"].Prefixes, prefixes("192.168.77.1/24", "192.168.77.2/25")},
		{"an interface without IPv4 has no prefixes", len(byName["vmq-lan-peer"].Prefixes), 0},
		{"the index matches the name", byName["lo"].Index, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !reflect.DeepEqual(tc.got, tc.want) {
				t.Errorf("got %v, want %v (host %+v)", tc.got, tc.want, h)
			}
		})
	}

	t.Run("the default configuration resolves against the namespace", func(t *testing.T) {
		c := config.Default()
		if err := c.Resolve(h); err != nil {
			t.Fatal(err)
		}
		got := []any{c.WAN.Interface, c.WAN.Address, c.WAN.MTU, c.LAN.Interfaces, c.LAN.Prefixes}
		want := []any{"vmq-wan", netip.MustParseAddr("198.18.0.1"), 1400, []string{"vmq-lan"}, prefixes("192.168.77.0/24")}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
	})

	t.Run("the default route with the lowest metric wins", func(t *testing.T) {
		ip("route", "add", "default", "via", "192.168.77.254", "dev", "vmq-lan", "metric", "1")
		if got := readHostIn(t, name).DefaultRouteInterface; got != "vmq-lan" {
			t.Errorf("got %q, want vmq-lan", got)
		}
	})

	t.Run("without a default route none is reported", func(t *testing.T) {
		ip("route", "flush", "exact", "0.0.0.0/0")
		if got := readHostIn(t, name).DefaultRouteInterface; got != "" {
			t.Errorf("got %q, want none", got)
		}
	})
}

package hostnet

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/vpnmasq/vpnmasq/config"
)

// prefixes parses IPv4 prefixes.
func prefixes(list ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(list))
	for i, s := range list {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// testNamespace creates a network namespace that is deleted when the test
// ends, and returns its name and a function running `ip` inside it.
func testNamespace(t *testing.T) (string, func(args ...string)) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it creates a network namespace (run the suite as root, e.g. via .ci/run)")
	}
	name := fmt.Sprintf("vmq-cfg-%08x", rand.Uint32())
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("deleting namespace %s: %v\n%s", name, err, out)
		}
	})
	return name, func(args ...string) { t.Helper(); ip(append([]string{"-n", name}, args...)...) }
}

// readHostIn runs ReadHost inside the named namespace. The goroutine's thread
// is never unlocked, so Go discards it instead of reusing a thread that
// lives in another namespace.
func readHostIn(t *testing.T, name string) *config.Host {
	t.Helper()
	type result struct {
		host *config.Host
		err  error
	}
	done := make(chan result)
	go func() {
		runtime.LockOSThread()
		defer func() {
			// Report a panic as a failure, so that the namespace is still
			// deleted by the test's cleanup.
			if p := recover(); p != nil {
				done <- result{err: fmt.Errorf("panic: %v", p)}
			}
		}()
		ns, err := netns.GetFromName(name)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			done <- result{err: err}
			return
		}
		h, err := ReadHost()
		done <- result{h, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatalf("ReadHost in %s: %v", name, r.err)
	}
	return r.host
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

package router

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/vpnmasq/vpnmasq/config"
)

func reloadHost() *config.Host {
	return &config.Host{
		DefaultRouteInterface: "wan0",
		Interfaces: []config.HostInterface{
			{Name: "wan0", Index: 2, MTU: 1500, Up: true, Prefixes: []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24")}},
			{Name: "lan0", Index: 3, MTU: 1500, Up: true, Prefixes: []netip.Prefix{netip.MustParsePrefix("192.168.77.1/24")}},
		},
		Nameservers: []netip.Addr{netip.MustParseAddr("198.18.0.53")},
	}
}

// reloadConfig loads text as a file and resolves it against reloadHost.
func reloadConfig(t *testing.T, text string) *config.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vpnmasq.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Resolve(reloadHost()); err != nil {
		t.Fatal(err)
	}
	return cfg
}

const reloadBase = `
[wan]
interface = "wan0"
[lan]
interfaces = ["lan0"]
[[forward]]
proto = "tcp"
port = 8080
to = "192.168.77.10:80"
`

func TestReload(t *testing.T) {
	newRouter := func(t *testing.T, text string) *Router {
		r, err := New(reloadConfig(t, text), reloadHost(), zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	t.Run("an unchanged file applies nothing and needs no restart", func(t *testing.T) {
		r := newRouter(t, reloadBase)
		applied, restart, err := r.Reload(reloadConfig(t, reloadBase))
		if err != nil || len(applied) != 0 || len(restart) != 0 {
			t.Fatalf("applied %q, needs restart %q, err %v", applied, restart, err)
		}
	})
	t.Run("a new forward, a timeout and no_nat apply; their ports join the capture", func(t *testing.T) {
		r := newRouter(t, reloadBase)
		text := reloadBase + `
[[forward]]
proto = "udp"
port = "5000-5001"
to = "192.168.77.11"
[nat]
udp_timeout = "1m"
[routing]
no_nat = ["203.0.113.0/24"]
`
		applied, restart, err := r.Reload(reloadConfig(t, text))
		if err != nil || len(restart) != 0 {
			t.Fatalf("needs restart %q, err %v", restart, err)
		}
		for _, want := range []string{"forward added: udp 5000-5001 → 192.168.77.11:5000", "nat.udp_timeout", "routing.no_nat"} {
			if !slices.Contains(applied, want) {
				t.Errorf("applied %q lacks %q", applied, want)
			}
		}
		if !r.path.IsNoNAT([4]byte{203, 0, 113, 9}) {
			t.Error("the new no_nat prefix is not in force")
		}
		if !slices.ContainsFunc(r.capture.Ports, func(p config.PortRange) bool { return p.Contains(5001) }) {
			t.Errorf("capture ports %v lack the new forward's", r.capture.Ports)
		}
		if !slices.Equal(r.spec.Guard.Ports, r.capture.Ports) {
			t.Errorf("guard ports %v differ from the capture's %v", r.spec.Guard.Ports, r.capture.Ports)
		}
		if !r.ownsPort(5001) {
			t.Error("the router's own sockets may still take the new forward's port 5001")
		}
	})
	t.Run("a removed forward leaves the capture and the guard", func(t *testing.T) {
		r := newRouter(t, reloadBase)
		applied, _, err := r.Reload(reloadConfig(t, "[wan]\ninterface = \"wan0\"\n[lan]\ninterfaces = [\"lan0\"]\n"))
		if err != nil || !slices.Contains(applied, "forward removed: tcp 8080 → 192.168.77.10:80") {
			t.Fatalf("applied %q, err %v", applied, err)
		}
		if slices.ContainsFunc(r.capture.Ports, func(p config.PortRange) bool { return p.Contains(8080) }) {
			t.Errorf("capture ports %v still hold 8080", r.capture.Ports)
		}
		if slices.ContainsFunc(r.spec.Guard.Ports, func(p config.PortRange) bool { return p.Contains(8080) }) {
			t.Errorf("guard ports %v still hold 8080", r.spec.Guard.Ports)
		}
		if r.ownsPort(8080) {
			t.Error("the removed forward's port 8080 is still kept from the router's own sockets")
		}
	})
	t.Run("interfaces, the TUN and the port range are named, not applied", func(t *testing.T) {
		r := newRouter(t, reloadBase)
		text := reloadBase + `
[nat]
port_range = "40000-40999"
[tun]
name = "vpnmasq9"
[services]
admin_port = 8081
`
		applied, restart, err := r.Reload(reloadConfig(t, text))
		if err != nil || len(applied) != 0 {
			t.Fatalf("applied %q, err %v", applied, err)
		}
		for _, want := range []string{"nat.port_range", "tun.name", "services.admin_port"} {
			if !slices.ContainsFunc(restart, func(s string) bool { return strings.HasPrefix(s, want+" ") }) {
				t.Errorf("needs restart %q lacks %s", restart, want)
			}
		}
		if got := r.running().NAT.PortRange; got != (config.PortRange{First: 20000, Last: 32767}) {
			t.Errorf("running port range %v changed", got)
		}
		// Reported again as long as the file differs.
		if _, again, _ := r.Reload(reloadConfig(t, text)); len(again) != len(restart) {
			t.Errorf("second reload needs restart %q, first %q", again, restart)
		}
	})
	t.Run("the log level applies to every logger", func(t *testing.T) {
		defer zerolog.SetGlobalLevel(zerolog.GlobalLevel())
		zerolog.SetGlobalLevel(zerolog.InfoLevel)
		r := newRouter(t, reloadBase)
		applied, _, _ := r.Reload(reloadConfig(t, reloadBase+"[log]\nlevel = \"debug\"\n"))
		if !slices.Contains(applied, "log.level") || zerolog.GlobalLevel() != zerolog.DebugLevel {
			t.Errorf("applied %q, global level %v", applied, zerolog.GlobalLevel())
		}
	})
	t.Run("a file with problems changes nothing", func(t *testing.T) {
		r := newRouter(t, reloadBase)
		path := filepath.Join(t.TempDir(), "broken.toml")
		os.WriteFile(path, []byte(reloadBase+"[nat]\nudp_timeout = \"soon\"\n"), 0o600)
		r.cfg.Source = path
		res := r.ReloadConfig()
		if len(res.Errors) == 0 || !strings.HasPrefix(res.Errors[0], path+":") || !strings.Contains(res.Errors[0], "nat.udp_timeout") {
			t.Fatalf("errors %q, want %s:line: nat.udp_timeout: ...", res.Errors, path)
		}
		if r.reload.cfg != nil {
			t.Error("the running configuration changed")
		}
	})
	t.Run("the embedded default has nothing to reload", func(t *testing.T) {
		r := newRouter(t, reloadBase)
		r.cfg.Source = config.DefaultSource
		if res := r.ReloadConfig(); len(res.Errors) != 1 || !strings.Contains(res.Errors[0], "nothing to reload") {
			t.Errorf("errors %q", res.Errors)
		}
	})
	t.Run("a network no longer exempt is masqueraded again", func(t *testing.T) {
		// The path forgets the routed flows to it (datapath's
		// TestSetNoNATForgetsFlowsToMasqueradedNetworks).
		r := newRouter(t, reloadBase+"[routing]\nno_nat = [\"203.0.113.0/24\"]\n")
		r.Reload(reloadConfig(t, reloadBase))
		if r.path.IsNoNAT([4]byte{203, 0, 113, 9}) {
			t.Error("203.0.113.9 is still routed without NAT")
		}
		if n := r.path.RoutedFlows(); n != 0 {
			t.Errorf("%d routed flows left", n)
		}
	})
	t.Run("reloads race with nothing the packet loops read", func(t *testing.T) {
		// What the path's loops read under a change is raced in datapath
		// (TestControlChangesRaceWithNothingTheLoopsRead); here the
		// router's side of it.
		r := newRouter(t, reloadBase)
		a := reloadConfig(t, reloadBase+"[routing]\nno_nat = [\"203.0.113.0/24\"]\n[limits]\nicmp_error_rate = 5\n")
		b := reloadConfig(t, reloadBase+"[nat]\nudp_timeout = \"1m\"\n")
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := range 2000 {
				r.path.IsNoNAT([4]byte{203, 0, 113, byte(i)})
				r.path.RoutedFlows()
				r.path.Stats().ICMPErrorsSent.Load()
			}
		}()
		for i := range 50 {
			cfg := a
			if i%2 == 1 {
				cfg = b
			}
			if _, _, err := r.Reload(cfg); err != nil {
				t.Fatal(err)
			}
		}
		<-done
	})
}

func TestOwnedPortsAreTheCapturesPorts(t *testing.T) {
	r, err := New(reloadConfig(t, reloadBase), reloadHost(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		port  uint16
		owned bool
	}{
		{"the first port of the NAT range is the router's", 20000, true},
		{"the last port of the NAT range is the router's", 32767, true},
		{"IKE's port is the router's", 500, true},
		{"NAT-T's port is the router's", 4500, true},
		{"a forward's port is the router's", 8080, true},
		{"a port of Linux's ephemeral range is free", 32768, false},
		{"a port below the NAT range is free", 19999, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := r.ownsPort(tc.port); got != tc.owned {
				t.Errorf("ownsPort(%d) = %v, want %v", tc.port, got, tc.owned)
			}
		})
	}
}

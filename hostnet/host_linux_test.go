package hostnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/internal/netnstest"
)

// hostLab is a router namespace with a LAN host and a WAN peer:
//
//	lan (host0 10.77.0.2) ── lan0 10.77.0.1 [router] wan0 198.18.0.1 ── peer0 198.18.0.2 (wan)
//
// The router also gets the TUN vmq0 when the test opens it.
type hostLab struct {
	router, lan, wan string
}

const (
	labTUN      = "vmq0"
	labTable    = 5353
	labPriority = 5353
)

func newHostLab(t *testing.T) hostLab {
	t.Helper()
	netnstest.RequireRoot(t, "nft")
	l := hostLab{router: netnstest.New(t, "vmq-hn-rtr"), lan: netnstest.New(t, "vmq-hn-lan"), wan: netnstest.New(t, "vmq-hn-out")}
	netnstest.Veth(t, l.router, "lan0", "10.77.0.1/24", l.lan, "host0", "10.77.0.2/24")
	netnstest.Veth(t, l.router, "wan0", "198.18.0.1/24", l.wan, "peer0", "198.18.0.2/24")
	netnstest.Run(t, "ip", "-n", l.lan, "route", "add", "default", "via", "10.77.0.1")
	netnstest.Run(t, "ip", "-n", l.wan, "route", "add", "10.77.0.0/24", "via", "198.18.0.1")
	return l
}

func (l hostLab) spec() Spec {
	wanAddr := netip.MustParseAddr("198.18.0.1")
	ports := []config.PortRange{{First: 20000, Last: 20010}, {First: 8080, Last: 8080}}
	return Spec{
		TUN:           labTUN,
		Table:         labTable,
		RulePriority:  labPriority,
		LANInterfaces: []string{"lan0"},
		WANInterface:  "wan0",
		Guard: Guard{
			Addr:      wanAddr,
			Ports:     ports,
			Protocols: []uint8{47, 50},
			Prefixes:  []netip.Prefix{netip.MustParsePrefix("10.77.0.0/24")},
		},
		HairpinPorts:     ports,
		HairpinProtocols: []uint8{47},
		Log:              zerolog.New(zerolog.NewTestWriter(nil)).Level(zerolog.Disabled),
	}
}

// openTUN creates the lab's TUN in the router namespace; closing the
// returned file removes the device, like a process dying.
func (l hostLab) openTUN(t *testing.T) *os.File {
	t.Helper()
	var f *os.File
	netnstest.MustDo(t, l.router, func() error {
		var err error
		f, err = openTestTUN(labTUN)
		return err
	})
	t.Cleanup(func() { f.Close() })
	return f
}

func (l hostLab) setup(t *testing.T, s Spec) (*Host, error) {
	t.Helper()
	var h *Host
	err := netnstest.Do(l.router, func() error {
		var err error
		h, err = Setup(s)
		return err
	})
	return h, err
}

func (l hostLab) mustSetup(t *testing.T, s Spec) *Host {
	t.Helper()
	s.Log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	h, err := l.setup(t, s)
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func (l hostLab) cleanupStale(t *testing.T, s Spec) error {
	t.Helper()
	return netnstest.Do(l.router, func() error { return CleanupStale(s) })
}

// hostState is what `ip` and `nft` show of vpnmasq's objects in the router.
type hostState struct {
	rules    []string // "iif lookup priority"
	routes   []string // "dst dev scope"
	tunUp    bool
	tables   []string // "family name"
	chains   map[string]nftChainInfo
	sets     map[string]string // "family set" -> JSON of its elements
	rulesIn  map[string]string // chain -> JSON of its rules
	forward  string
	rpFilter string
}

type nftChainInfo struct {
	Family string `json:"family"`
	Table  string `json:"table"`
	Name   string `json:"name"`
	Type   string `json:"type"`
	Hook   string `json:"hook"`
	Prio   int    `json:"prio"`
	Dev    any    `json:"dev"`
}

func (l hostLab) state(t *testing.T) hostState {
	t.Helper()
	s := hostState{chains: map[string]nftChainInfo{}, sets: map[string]string{}, rulesIn: map[string]string{}}

	var rules []struct {
		Priority int    `json:"priority"`
		Iif      string `json:"iif"`
		Table    string `json:"table"`
	}
	if err := json.Unmarshal([]byte(netnstest.Run(t, "ip", "-n", l.router, "-j", "-4", "rule", "show")), &rules); err != nil {
		t.Fatalf("parsing ip rule: %v", err)
	}
	for _, r := range rules {
		if r.Priority == labPriority {
			s.rules = append(s.rules, fmt.Sprintf("iif %s lookup %s priority %d", r.Iif, r.Table, r.Priority))
		}
	}
	var routes []struct {
		Dst   string `json:"dst"`
		Dev   string `json:"dev"`
		Scope string `json:"scope"`
	}
	// An empty table does not exist as far as ip is concerned.
	if out, err := runQuiet("ip", "-n", l.router, "-j", "-4", "route", "show", "table", fmt.Sprint(labTable)); err == nil {
		if err := json.Unmarshal([]byte(out), &routes); err != nil {
			t.Fatalf("parsing ip route: %v\n%s", err, out)
		}
	} else if !strings.Contains(out, "does not exist") {
		t.Fatalf("ip route show table %d: %v\n%s", labTable, err, out)
	}
	for _, r := range routes {
		s.routes = append(s.routes, fmt.Sprintf("%s dev %s scope %s", r.Dst, r.Dev, r.Scope))
	}
	if out, err := runQuiet("ip", "-n", l.router, "-j", "link", "show", labTUN); err == nil {
		var links []struct {
			Flags []string `json:"flags"`
		}
		if err := json.Unmarshal([]byte(out), &links); err == nil && len(links) == 1 {
			for _, f := range links[0].Flags {
				if f == "UP" {
					s.tunUp = true
				}
			}
		}
	}

	var ruleset struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(netnstest.Run(t, "ip", "netns", "exec", l.router, "nft", "-j", "list", "ruleset")), &ruleset); err != nil {
		t.Fatalf("parsing nft -j list ruleset: %v", err)
	}
	for _, obj := range ruleset.Nftables {
		switch {
		case obj["table"] != nil:
			var tb struct{ Family, Name string }
			json.Unmarshal(obj["table"], &tb)
			s.tables = append(s.tables, tb.Family+" "+tb.Name)
		case obj["chain"] != nil:
			var ch nftChainInfo
			json.Unmarshal(obj["chain"], &ch)
			s.chains[ch.Family+" "+ch.Name] = ch
		case obj["set"] != nil:
			var st struct {
				Family, Name string
				Elem         json.RawMessage `json:"elem"`
			}
			json.Unmarshal(obj["set"], &st)
			var compact bytes.Buffer
			json.Compact(&compact, st.Elem)
			s.sets[st.Family+" "+st.Name] = compact.String()
		case obj["rule"] != nil:
			var r struct {
				Family, Chain string
				Expr          json.RawMessage `json:"expr"`
			}
			json.Unmarshal(obj["rule"], &r)
			var compact bytes.Buffer
			json.Compact(&compact, r.Expr)
			s.rulesIn[r.Family+" "+r.Chain] += compact.String() + "\n"
		}
	}
	if _, ok := s.chains["netdev hairpin_lan0"]; ok {
		// nft 1.0.6 leaves a netdev chain's device out of its JSON.
		text := netnstest.Run(t, "ip", "netns", "exec", l.router, "nft", "list", "chain", "netdev", nftTableName(labTUN), "hairpin_lan0")
		if strings.Contains(text, `device "lan0"`) {
			ch := s.chains["netdev hairpin_lan0"]
			ch.Dev = "lan0"
			s.chains["netdev hairpin_lan0"] = ch
		}
	}
	s.forward = readSysctlIn(t, l.router, "net/ipv4/ip_forward")
	if _, err := runQuiet("ip", "netns", "exec", l.router, "test", "-e", "/proc/sys/net/ipv4/conf/"+labTUN); err == nil {
		s.rpFilter = readSysctlIn(t, l.router, "net/ipv4/conf/"+labTUN+"/rp_filter")
	}
	return s
}

// runQuiet runs a command whose failure is an answer, not a test failure.
func runQuiet(args ...string) (string, error) {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	return string(out), err
}

// clean reports what of vpnmasq's objects is still there.
func (s hostState) leftovers() []string {
	var left []string
	left = append(left, s.rules...)
	left = append(left, s.routes...)
	for _, tb := range s.tables {
		if strings.HasSuffix(tb, nftTableName(labTUN)) {
			left = append(left, "nft table "+tb)
		}
	}
	return left
}

func TestHostSetupInstallsEverythingAndCloseRemovesIt(t *testing.T) {
	lab := newHostLab(t)
	// Strict reverse path filtering everywhere (RHEL's default) is what
	// the TUN must be exempted from.
	netnstest.Run(t, "ip", "netns", "exec", lab.router, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
	lab.openTUN(t)
	before := lab.state(t)
	if before.forward != "0" {
		t.Fatalf("a new namespace starts with ip_forward=%s, want 0", before.forward)
	}
	h := lab.mustSetup(t, lab.spec())
	st := lab.state(t)

	table := nftTableName(labTUN)
	checks := []struct {
		name string
		ok   bool
		got  any
	}{
		{"the TUN link is up", st.tunUp, st.tunUp},
		{"the TUN's default route is in the policy table", len(st.routes) == 1 && st.routes[0] == "default dev vmq0 scope link", st.routes},
		{"one rule sends the LAN interface to the policy table", len(st.rules) == 1 && st.rules[0] == fmt.Sprintf("iif lan0 lookup %d priority %d", labTable, labPriority), st.rules},
		{"IPv4 forwarding is on", st.forward == "1", st.forward},
		{"the TUN's reverse path filter is loose", st.rpFilter == "2", st.rpFilter},
		{"the guard table exists as ip " + table, contains(st.tables, "ip "+table), st.tables},
		{"the hairpin table exists as netdev " + table, contains(st.tables, "netdev "+table), st.tables},
		{"guard_input hooks input at priority -150", st.chains["ip guard_input"].Hook == "input" && st.chains["ip guard_input"].Prio == -150, st.chains["ip guard_input"]},
		{"guard_prerouting hooks prerouting at priority -300", st.chains["ip guard_prerouting"].Hook == "prerouting" && st.chains["ip guard_prerouting"].Prio == -300, st.chains["ip guard_prerouting"]},
		{"the hairpin chain hooks ingress of lan0", st.chains["netdev hairpin_lan0"].Hook == "ingress" && fmt.Sprint(st.chains["netdev hairpin_lan0"].Dev) == "lan0", st.chains["netdev hairpin_lan0"]},
		{"the NAT port set holds the merged ranges", st.sets["ip nat_ports"] == `[8080,{"range":[20000,20010]}]`, st.sets["ip nat_ports"]},
		{"the NAT protocol set holds GRE and ESP", st.sets["ip nat_protocols"] == `["gre","esp"]` || st.sets["ip nat_protocols"] == `[47,50]`, st.sets["ip nat_protocols"]},
		{"the LAN prefix set holds the LAN", st.sets["ip lan_prefixes"] == `[{"prefix":{"addr":"10.77.0.0","len":24}}]`, st.sets["ip lan_prefixes"]},
		{"the hairpin port set holds the hairpin ports", st.sets["netdev hairpin_ports"] == `[8080,{"range":[20000,20010]}]`, st.sets["netdev hairpin_ports"]},
		{"guard_input drops tcp, udp and owned protocols", strings.Count(st.rulesIn["ip guard_input"], `"drop"`) == 3 && strings.Contains(st.rulesIn["ip guard_input"], "@nat_ports") && strings.Contains(st.rulesIn["ip guard_input"], "@nat_protocols"), st.rulesIn["ip guard_input"]},
		{"guard_prerouting drops the LAN prefixes", strings.Contains(st.rulesIn["ip guard_prerouting"], "@lan_prefixes") && strings.Contains(st.rulesIn["ip guard_prerouting"], `"drop"`), st.rulesIn["ip guard_prerouting"]},
		{"the hairpin rules forward into the TUN", strings.Count(st.rulesIn["netdev hairpin_lan0"], `"fwd"`) == 3 && strings.Contains(st.rulesIn["netdev hairpin_lan0"], `"vmq0"`), st.rulesIn["netdev hairpin_lan0"]},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if !c.ok {
				t.Fatalf("got %v", c.got)
			}
		})
	}

	if err := netnstest.Do(lab.router, h.Close); err != nil {
		t.Fatalf("Close: %v", err)
	}
	after := lab.state(t)
	t.Run("Close removes every rule, route and table", func(t *testing.T) {
		if left := after.leftovers(); len(left) > 0 {
			t.Fatalf("left behind: %v", left)
		}
	})
	t.Run("Close turns forwarding back off because it was off", func(t *testing.T) {
		if after.forward != "0" {
			t.Fatalf("ip_forward=%s after Close, want 0", after.forward)
		}
	})
	t.Run("Close restores the TUN's reverse path filter", func(t *testing.T) {
		if after.rpFilter != before.rpFilter {
			t.Fatalf("rp_filter=%s after Close, was %s", after.rpFilter, before.rpFilter)
		}
	})
	t.Run("a second Close does nothing and succeeds", func(t *testing.T) {
		if err := h.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	})
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestHostLeavesForwardingOnWhenItWasAlreadyOn(t *testing.T) {
	lab := newHostLab(t)
	lab.openTUN(t)
	netnstest.Run(t, "ip", "netns", "exec", lab.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	h := lab.mustSetup(t, lab.spec())
	// Close from an unrelated goroutine: the Host remembers its namespace.
	if err := h.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	st := lab.state(t)
	if st.forward != "1" {
		t.Fatalf("ip_forward=%s after Close, want it left at 1", st.forward)
	}
	if left := st.leftovers(); len(left) > 0 {
		t.Fatalf("Close from another thread left %v behind", left)
	}
}

func TestHostSetupRefusesBadSpecs(t *testing.T) {
	good := hostLab{}.spec()
	tests := []struct {
		name   string
		mutate func(s *Spec)
	}{
		{"a missing TUN name is refused", func(s *Spec) { s.TUN = "" }},
		{"a TUN name longer than IFNAMSIZ is refused", func(s *Spec) { s.TUN = "vpnmasq-much-too-long" }},
		{"the main table is refused", func(s *Spec) { s.Table = 254 }},
		{"the local table is refused", func(s *Spec) { s.Table = 255 }},
		{"table zero is refused", func(s *Spec) { s.Table = 0 }},
		{"rule priority 0 (before local) is refused", func(s *Spec) { s.RulePriority = 0 }},
		{"a rule priority after main is refused", func(s *Spec) { s.RulePriority = 32766 }},
		{"no LAN interface is refused", func(s *Spec) { s.LANInterfaces = nil }},
		{"the WAN as a LAN interface is refused", func(s *Spec) { s.LANInterfaces = []string{"wan0"} }},
		{"the TUN as a LAN interface is refused", func(s *Spec) { s.LANInterfaces = []string{labTUN} }},
		// The guard has no interface of its own: it is always the WAN's.
		{"no WAN interface is refused", func(s *Spec) { s.WANInterface = "" }},
		{"guarding all of ICMP is refused", func(s *Spec) { s.Guard.Protocols = []uint8{1} }},
		{"hairpinning all of TCP is refused", func(s *Spec) { s.HairpinProtocols = []uint8{6} }},
		{"a reversed hairpin range is refused", func(s *Spec) { s.HairpinPorts = []config.PortRange{{First: 2, Last: 1}} }},
		{"an invalid WAN address is refused", func(s *Spec) { s.Guard.Addr = netip.Addr{} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := good
			tt.mutate(&s)
			if err := s.Validate(); err == nil {
				t.Fatalf("Validate accepted %+v", s)
			}
		})
	}
}

func TestHostSetupFailureLeavesNothingBehind(t *testing.T) {
	lab := newHostLab(t)
	lab.openTUN(t)
	// A rule identical to the one Setup adds last makes it fail at
	// the very end, after everything else was installed.
	netnstest.Run(t, "ip", "-n", lab.router, "rule", "add", "iif", "lan0", "lookup", fmt.Sprint(labTable), "priority", fmt.Sprint(labPriority))
	_, err := lab.setup(t, lab.spec())
	if err == nil {
		t.Fatal("Setup succeeded despite a conflicting rule")
	}
	if !strings.Contains(err.Error(), "CleanupStale") {
		t.Errorf("error %q does not point at CleanupStale", err)
	}
	st := lab.state(t)
	if len(st.routes) != 0 || len(st.tables) != 0 {
		t.Fatalf("failed Setup left routes %v, tables %v", st.routes, st.tables)
	}
	if len(st.rules) != 1 {
		t.Fatalf("rules %v: the pre-existing one must stay, no other", st.rules)
	}
	if st.forward != "0" {
		t.Fatalf("failed Setup left ip_forward=%s", st.forward)
	}
}

func TestHostSetupFailsOnMissingTUN(t *testing.T) {
	lab := newHostLab(t)
	_, err := lab.setup(t, lab.spec())
	if err == nil || !strings.Contains(err.Error(), labTUN) {
		t.Fatalf("Setup without the TUN: %v, want an error naming %s", err, labTUN)
	}
	if st := lab.state(t); st.forward != "0" || len(st.leftovers()) > 0 {
		t.Fatalf("left ip_forward=%s and %v", st.forward, st.leftovers())
	}
}

func TestHostCleanupStaleRecoversFromACrash(t *testing.T) {
	lab := newHostLab(t)
	spec := lab.spec()
	tun := lab.openTUN(t)
	crashed := lab.mustSetup(t, spec) // never closed: the process "dies"
	_ = crashed

	t.Run("a second Setup over live objects fails and removes none of them", func(t *testing.T) {
		_, err := lab.setup(t, spec)
		if err == nil {
			t.Fatal("second Setup succeeded")
		}
		if !strings.Contains(err.Error(), "already exists") {
			t.Errorf("error %q does not say what is in the way", err)
		}
		st := lab.state(t)
		if len(st.rules) != 1 || len(st.routes) != 1 || len(st.tables) != 2 {
			t.Fatalf("the first instance's objects were touched: rules %v routes %v tables %v", st.rules, st.routes, st.tables)
		}
	})
	t.Run("CleanupStale refuses while the TUN is still open", func(t *testing.T) {
		err := lab.cleanupStale(t, spec)
		if err == nil || !strings.Contains(err.Error(), "running") {
			t.Fatalf("CleanupStale with the TUN attached: %v, want a refusal", err)
		}
		if st := lab.state(t); len(st.rules) != 1 || len(st.tables) != 2 {
			t.Fatalf("refusing CleanupStale removed things anyway: rules %v tables %v", st.rules, st.tables)
		}
	})

	tun.Close() // the kernel removes a non-persistent TUN with its last fd
	t.Run("CleanupStale removes the dead instance's rules, routes and tables", func(t *testing.T) {
		if err := lab.cleanupStale(t, spec); err != nil {
			t.Fatalf("CleanupStale: %v", err)
		}
		if left := lab.state(t).leftovers(); len(left) > 0 {
			t.Fatalf("left behind: %v", left)
		}
	})
	t.Run("CleanupStale with nothing to clean succeeds", func(t *testing.T) {
		if err := lab.cleanupStale(t, spec); err != nil {
			t.Fatalf("CleanupStale: %v", err)
		}
	})
	t.Run("Setup works again afterwards and Close cleans up", func(t *testing.T) {
		lab.openTUN(t)
		h := lab.mustSetup(t, spec)
		if st := lab.state(t); len(st.rules) != 1 || len(st.routes) != 1 || len(st.tables) != 2 {
			t.Fatalf("rules %v routes %v tables %v", st.rules, st.routes, st.tables)
		}
		if err := h.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if left := lab.state(t).leftovers(); len(left) > 0 {
			t.Fatalf("left behind: %v", left)
		}
	})
}

func TestHostCleanupStaleTUNLink(t *testing.T) {
	tests := []struct {
		name        string
		create      []string // command creating a link named vmq0 in the router
		wantRemoved bool
	}{
		{"a persistent TUN nobody has open is removed", []string{"tuntap", "add", "dev", labTUN, "mode", "tun"}, true},
		{"a persistent multi-queue TUN nobody has open is removed", []string{"tuntap", "add", "dev", labTUN, "mode", "tun", "multi_queue"}, true},
		{"a TAP device of that name is left alone", []string{"tuntap", "add", "dev", labTUN, "mode", "tap"}, false},
		{"a veth link of that name is left alone", []string{"link", "add", labTUN, "type", "veth", "peer", "name", labTUN + "p"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lab := newHostLab(t)
			netnstest.Run(t, append([]string{"ip", "-n", lab.router}, tt.create...)...)
			if err := lab.cleanupStale(t, lab.spec()); err != nil {
				t.Fatalf("CleanupStale: %v", err)
			}
			_, err := runQuiet("ip", "-n", lab.router, "link", "show", labTUN)
			if removed := err != nil; removed != tt.wantRemoved {
				t.Fatalf("removed=%v, want %v", removed, tt.wantRemoved)
			}
		})
	}
}

// sendUDPFrom sends one datagram from a fresh socket in ns.
func sendUDPFrom(t *testing.T, ns, to string, payload string) {
	t.Helper()
	c := netnstest.DialUDP(t, ns, to)
	if _, err := c.Write([]byte(payload)); err != nil {
		t.Fatalf("sending to %s from %s: %v", to, ns, err)
	}
}

// expectTUNPacket reads the next packet from the TUN and checks it is the
// IPv4 UDP datagram sent, unchanged except for the TTL.
func expectTUNPacket(t *testing.T, tun *os.File, src, dst string, dport uint16, payload string) {
	t.Helper()
	pkt, err := readTUN(tun, 3*time.Second)
	if err != nil {
		t.Fatalf("no packet on the TUN: %v", err)
	}
	if pkt[0]>>4 != 4 {
		t.Fatalf("TUN packet does not start at an IPv4 version nibble (link header in front?): % x", pkt[:min(len(pkt), 48)])
	}
	ip := header.IPv4(pkt)
	if !ip.IsValid(len(pkt)) || !ip.IsChecksumValid() {
		t.Fatalf("TUN packet is not a valid IPv4 packet: % x", pkt)
	}
	gotSrc, gotDst := netip.AddrFrom4(ip.SourceAddress().As4()), netip.AddrFrom4(ip.DestinationAddress().As4())
	if gotSrc.String() != src || gotDst.String() != dst {
		t.Fatalf("TUN packet %v -> %v, want %s -> %s", gotSrc, gotDst, src, dst)
	}
	if ip.TTL() != 63 {
		t.Errorf("TTL %d, want 63 (decremented once by the router)", ip.TTL())
	}
	if ip.Protocol() != uint8(header.UDPProtocolNumber) {
		t.Fatalf("TUN packet is not UDP: % x", pkt)
	}
	u := header.UDP(ip.Payload())
	port, got := u.DestinationPort(), u.Payload()
	if port != dport || string(got) != payload {
		t.Fatalf("TUN packet to port %d with %q, want %d with %q", port, got, dport, payload)
	}
}

func TestHostHairpinAndPolicyRoutingDeliverIntoTheTUN(t *testing.T) {
	lab := newHostLab(t)
	tun := lab.openTUN(t)
	lab.mustSetup(t, lab.spec())
	local := netnstest.ListenUDP(t, lab.router, "0.0.0.0:7000")

	t.Run("a LAN host reaching a NAT port on the WAN address is hairpinned into the TUN as plain IPv4", func(t *testing.T) {
		sendUDPFrom(t, lab.lan, "198.18.0.1:20005", "hairpin")
		expectTUNPacket(t, tun, "10.77.0.2", "198.18.0.1", 20005, "hairpin")
	})
	t.Run("a forwarded single port is hairpinned too", func(t *testing.T) {
		sendUDPFrom(t, lab.lan, "198.18.0.1:8080", "forward")
		expectTUNPacket(t, tun, "10.77.0.2", "198.18.0.1", 8080, "forward")
	})
	t.Run("a LAN host reaching another port on the WAN address is served by the host", func(t *testing.T) {
		sendUDPFrom(t, lab.lan, "198.18.0.1:7000", "to-host")
		got, _, err := netnstest.ReadUDP(local, 3*time.Second)
		if err != nil || string(got) != "to-host" {
			t.Fatalf("the host's socket got %q, %v", got, err)
		}
		// Nothing of it reached the TUN: the next TUN packet is the marker.
		sendUDPFrom(t, lab.lan, "198.18.0.1:20006", "marker")
		expectTUNPacket(t, tun, "10.77.0.2", "198.18.0.1", 20006, "marker")
	})
	t.Run("a LAN host reaching the router's LAN address stays local", func(t *testing.T) {
		sendUDPFrom(t, lab.lan, "10.77.0.1:7000", "lan-local")
		got, _, err := netnstest.ReadUDP(local, 3*time.Second)
		if err != nil || string(got) != "lan-local" {
			t.Fatalf("the host's socket got %q, %v", got, err)
		}
	})
	t.Run("LAN traffic to the outside is policy-routed into the TUN", func(t *testing.T) {
		sendUDPFrom(t, lab.lan, "198.18.0.2:5000", "outbound")
		expectTUNPacket(t, tun, "10.77.0.2", "198.18.0.2", 5000, "outbound")
	})
}

func TestHostGuardsKeepTheHostOutOfTheNAT(t *testing.T) {
	lab := newHostLab(t)
	lab.openTUN(t)
	// Forwarding on before setup, so the prerouting guard is what stops
	// the host from forwarding WAN traffic to the LAN by itself.
	netnstest.Run(t, "ip", "netns", "exec", lab.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	lanListener := netnstest.ListenUDP(t, lab.lan, "10.77.0.2:6000")

	// refused sends from the WAN peer and reports whether the router
	// answered with ICMP port unreachable.
	refused := func(t *testing.T, port int) bool {
		t.Helper()
		c := netnstest.DialUDP(t, lab.wan, fmt.Sprintf("198.18.0.1:%d", port))
		if _, err := c.Write([]byte("probe")); err != nil {
			t.Fatal(err)
		}
		_, _, err := netnstest.ReadUDP(c, 500*time.Millisecond)
		switch {
		case err == nil:
			t.Fatalf("port %d answered: nothing listens there", port)
		case isTimeout(err):
			return false
		case errors.Is(err, syscall.ECONNREFUSED):
			return true
		}
		t.Fatalf("port %d: %v", port, err)
		return false
	}
	forwarded := func(t *testing.T, payload string) bool {
		t.Helper()
		sendUDPFrom(t, lab.wan, "10.77.0.2:6000", payload)
		got, _, err := netnstest.ReadUDP(lanListener, 500*time.Millisecond)
		if isTimeout(err) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(got) == payload
	}

	t.Run("without vpnmasq the host answers a NAT port with port unreachable", func(t *testing.T) {
		if !refused(t, 20005) {
			t.Fatal("no port unreachable before setup: the lab does not show what the guard prevents")
		}
	})
	t.Run("without vpnmasq the host forwards WAN traffic to the LAN", func(t *testing.T) {
		if !forwarded(t, "before") {
			t.Fatal("not forwarded before setup: the lab does not show what the guard prevents")
		}
	})

	h := lab.mustSetup(t, lab.spec())

	t.Run("the host stays silent on a NAT port", func(t *testing.T) {
		if refused(t, 20005) {
			t.Fatal("the host answered port unreachable for a NAT-owned port")
		}
	})
	t.Run("the host still answers ports outside the NAT's", func(t *testing.T) {
		if !refused(t, 7001) {
			t.Fatal("the host no longer answers port unreachable outside the NAT range")
		}
	})
	t.Run("the host no longer forwards WAN traffic to the LAN itself", func(t *testing.T) {
		if forwarded(t, "during") {
			t.Fatal("the host forwarded a WAN packet to the LAN: vpnmasq and the kernel would both deliver it")
		}
	})

	if err := h.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	t.Run("after Close the host answers NAT ports again", func(t *testing.T) {
		if !refused(t, 20005) {
			t.Fatal("guard still active after Close")
		}
	})
	t.Run("after Close the host forwards again", func(t *testing.T) {
		if !forwarded(t, "after") {
			t.Fatal("forward guard still active after Close")
		}
	})
}

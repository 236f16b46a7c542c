package config

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/vpnmasq/vpnmasq/nat"
)

// Validate checks the configuration as it stands (for example after
// building one in code); Load and Resolve already call it. Problems come
// back as an *Errors.
func (c *Config) Validate() error {
	return validate(c, c.positions()).orNil()
}

// positions locates problems in c's file: by the lines Load recorded, or,
// when no file text was at hand, by the lines the forwards remember.
func (c *Config) positions() *positions {
	if c.pos != nil {
		return c.pos
	}
	p := &positions{lines: map[string]int{}}
	for i, f := range c.Forwards {
		if f.Line > 0 {
			p.lines[indexPath("forward", i)] = f.Line
		}
	}
	return p
}

var (
	logLevels  = []string{"trace", "debug", "info", "warn", "error"}
	logFormats = []string{"auto", "console", "json"}
	protocols  = []string{"tcp", "udp", "gre", "esp"}
)

// Linux routing tables that already have a meaning (RT_TABLE_DEFAULT,
// RT_TABLE_MAIN, RT_TABLE_LOCAL); taking one over would break the host.
var reservedTables = map[int]string{253: "default", 254: "main", 255: "local"}

// validate returns every semantic problem of c; pos places them in the file.
func validate(c *Config, pos *positions) Errors {
	v := &validator{c: c, pos: pos}
	v.nat()
	v.limits()
	v.ipsec()
	v.pptp()
	v.lan()
	v.wan()
	v.routing()
	v.services()
	v.tun()
	v.state()
	v.log()
	v.forwards()
	return v.errs
}

type validator struct {
	c    *Config
	pos  *positions
	errs Errors
}

func (v *validator) errorf(key, format string, args ...any) {
	v.errs.add(v.c.Source, v.pos.line(key), key, format, args...)
}

func (v *validator) nat() {
	n := v.c.NAT
	switch r := n.PortRange; {
	case r.IsZero() || r.First == 0:
		v.errorf("nat.port_range", "must not be empty; the default is 20000-32767")
	case r.First > r.Last:
		v.errorf("nat.port_range", "first port %d is above last port %d", r.First, r.Last)
	case r.First < 1024:
		v.errorf("nat.port_range", "%s starts below 1024; those ports belong to well-known services", r)
	}
	timeouts := []struct {
		key   string
		value int64
	}{
		{"nat.udp_timeout", int64(n.UDPTimeout)},
		{"nat.tcp_established_timeout", int64(n.TCPEstablishedTimeout)},
		{"nat.tcp_transitory_timeout", int64(n.TCPTransitoryTimeout)},
		{"nat.icmp_timeout", int64(n.ICMPTimeout)},
	}
	for _, t := range timeouts {
		if t.value <= 0 {
			v.errorf(t.key, "must be a positive duration")
		}
	}
	if n.UDPFiltering != UDPFilteringAddressDependent && n.UDPFiltering != UDPFilteringEndpointIndependent {
		v.errorf("nat.udp_filtering", "%q is not %q or %q", n.UDPFiltering, UDPFilteringAddressDependent, UDPFilteringEndpointIndependent)
	}
	if n.MaxMappings <= 0 {
		v.errorf("nat.max_mappings", "must be at least 1")
	}
}

func (v *validator) limits() {
	l := v.c.Limits
	counts := []struct {
		key   string
		value int
	}{
		{"limits.max_flows", l.MaxFlows},
		{"limits.max_flows_per_host", l.MaxFlowsPerHost},
		{"limits.max_mappings_per_host", l.MaxMappingsPerHost},
		{"limits.max_esp_per_host", l.MaxESPPerHost},
		{"limits.max_ike_per_host", l.MaxIKEPerHost},
		{"limits.max_remote_ike", l.MaxRemoteIKE},
		{"limits.max_calls_per_host", l.MaxCallsPerHost},
		{"limits.max_fragments_per_host", l.MaxFragmentsPerHost},
		{"limits.host_flow_rate", l.HostFlowRate},
		{"limits.host_flow_burst", l.HostFlowBurst},
		{"limits.forward_flow_rate", l.ForwardFlowRate},
		{"limits.forward_flow_burst", l.ForwardFlowBurst},
		{"limits.icmp_error_rate", l.ICMPErrorRate},
		{"limits.icmp_error_burst", l.ICMPErrorBurst},
	}
	for _, c := range counts {
		if c.value < 1 {
			v.errorf(c.key, "must be at least 1")
		}
	}
	if l.MaxFlowsPerHost > l.MaxFlows && l.MaxFlows >= 1 {
		v.errorf("limits.max_flows_per_host", "%d is above limits.max_flows (%d): one host could take every flow", l.MaxFlowsPerHost, l.MaxFlows)
	}
	v.positive(map[string]time.Duration{
		"limits.remote_ike_timeout": l.RemoteIKETimeout,
		"limits.unreplied_timeout":  l.UnrepliedTimeout,
	})
}

func (v *validator) ipsec() {
	c := v.c.IPsec
	v.positive(map[string]time.Duration{
		"ipsec.ike_timeout": c.IKETimeout,
		"ipsec.esp_timeout": c.ESPTimeout,
		"ipsec.esp_wait":    c.ESPWait,
		"ipsec.esp_squelch": c.ESPSquelch,
	})
	if c.ESPRetries < 1 {
		v.errorf("ipsec.esp_retries", "must be at least 1")
	}
	if c.MaxESP < 1 {
		v.errorf("ipsec.max_esp", "must be at least 1")
	}
}

// positive requires each duration to be above zero, reporting keys in
// order so that errors come out the same way every time.
func (v *validator) positive(durations map[string]time.Duration) {
	for _, key := range slices.Sorted(maps.Keys(durations)) {
		if durations[key] <= 0 {
			v.errorf(key, "must be a positive duration")
		}
	}
}

func (v *validator) pptp() {
	c := v.c.PPTP
	v.positive(map[string]time.Duration{
		"pptp.call_setup_timeout": c.CallSetupTimeout,
		"pptp.teardown_grace":     c.TeardownGrace,
		"pptp.gre_timeout":        c.GRETimeout,
	})
	if c.MaxCalls < 1 {
		v.errorf("pptp.max_calls", "must be at least 1")
	}
}

func (v *validator) lan() {
	seen := map[string]int{}
	for i, name := range v.c.LAN.Interfaces {
		key := indexPath("lan.interfaces", i)
		if err := CheckInterfaceName(name); err != nil {
			v.errorf(key, "%v", err)
			continue
		}
		if j, dup := seen[name]; dup {
			v.errorf(key, "%q is already listed as lan.interfaces[%d]", name, j)
		}
		seen[name] = i
		switch name {
		case v.c.WAN.Interface:
			v.errorf(key, "%q is also wan.interface; the LAN and WAN must be different interfaces", name)
		case v.c.TUN.Name:
			v.errorf(key, "%q is tun.name; the TUN device cannot be a LAN interface", name)
		}
	}
	v.prefixes("lan.prefixes", v.c.LAN.Prefixes)
}

// prefixes checks that a list holds canonical IPv4 prefixes that do not
// overlap one another.
func (v *validator) prefixes(key string, list []netip.Prefix) {
	for i, p := range list {
		k := indexPath(key, i)
		if err := checkIPv4Prefix(p); err != nil {
			v.errorf(k, "%v", err)
			continue
		}
		for j, q := range list[:i] {
			if q.IsValid() && p.Overlaps(q) {
				v.errorf(k, "%s overlaps %s[%d] (%s)", p, key, j, q)
				break
			}
		}
	}
}

func checkIPv4Prefix(p netip.Prefix) error {
	switch {
	case !p.IsValid() || !p.Addr().Is4():
		return fmt.Errorf("%s is not an IPv4 prefix", p)
	case p.Masked() != p:
		return fmt.Errorf("%s has host bits set: did you mean %q?", p, p.Masked().String())
	}
	return nil
}

func (v *validator) wan() {
	w := v.c.WAN
	if w.Interface != "" {
		if err := CheckInterfaceName(w.Interface); err != nil {
			v.errorf("wan.interface", "%v", err)
		} else if w.Interface == v.c.TUN.Name {
			v.errorf("wan.interface", "%q is tun.name; the TUN device cannot be the WAN", w.Interface)
		}
	}
	if w.Address.IsValid() {
		if err := checkUnicast(w.Address); err != nil {
			v.errorf("wan.address", "%v", err)
		} else if i, p, in := containing(v.c.LAN.Prefixes, w.Address); in {
			v.errorf("wan.address", "%s lies inside lan.prefixes[%d] (%s); the WAN address must be outside the LAN", w.Address, i, p)
		}
	}
	if w.MTU != 0 && (w.MTU < 576 || w.MTU > 65535) {
		// 576 is the smallest datagram every IPv4 host must accept (RFC 791).
		v.errorf("wan.mtu", "%d is outside 576-65535", w.MTU)
	}
}

func (v *validator) routing() {
	v.prefixes("routing.no_nat", v.c.Routing.NoNAT)
	for i, p := range v.c.Routing.NoNAT {
		for j, q := range v.c.LAN.Prefixes {
			if p.IsValid() && q.IsValid() && p.Overlaps(q) {
				v.errorf(indexPath("routing.no_nat", i), "%s overlaps lan.prefixes[%d] (%s); traffic to the LAN is never routed through vpnmasq", p, j, q)
				break
			}
		}
	}
}

func (v *validator) services() {
	a := v.c.Services.Address
	const key = "services.address"
	if !a.IsValid() {
		v.errorf(key, "must be set; the default is 192.0.2.53")
		return
	}
	if err := checkUnicast(a); err != nil {
		v.errorf(key, "%v", err)
		return
	}
	if i, p, in := containing(v.c.LAN.Prefixes, a); in {
		v.errorf(key, "%s lies inside lan.prefixes[%d] (%s); it must be an address no LAN host uses", a, i, p)
	}
	if i, p, in := containing(v.c.Routing.NoNAT, a); in {
		v.errorf(key, "%s lies inside routing.no_nat[%d] (%s); it would shadow a routed destination", a, i, p)
	}
	if a == v.c.WAN.Address {
		v.errorf(key, "%s is also wan.address", a)
	}
	s := v.c.Services
	for i, u := range s.DNSUpstream {
		if u.AddrPort().Addr() == a {
			v.errorf(indexPath("services.dns_upstream", i), "%s is the service address itself", u.AddrPort())
		}
	}
	for i, p := range s.AdminAllow {
		if !p.Addr().Is4() {
			v.errorf(indexPath("services.admin_allow", i), "%s is not an IPv4 prefix", p)
		}
	}
	if s.AdminPort == 0 {
		v.errorf("services.admin_port", "must be a port from 1 to 65535")
	}
	if s.AdminSocket == "" || !strings.HasPrefix(s.AdminSocket, "/") {
		v.errorf("services.admin_socket", "must be an absolute path, e.g. /run/vpnmasq/admin.sock")
	}
	if strings.ContainsAny(s.AdminToken, " \t\r\n") {
		v.errorf("services.admin_token", "must not contain white space")
	}
}

func (v *validator) tun() {
	t := v.c.TUN
	if err := CheckInterfaceName(t.Name); err != nil {
		v.errorf("tun.name", "%v", err)
	}
	if err := CheckTable(t.Table); err != nil {
		v.errorf("tun.table", "%v", err)
	}
	if err := CheckRulePriority(t.RulePriority); err != nil {
		v.errorf("tun.rule_priority", "%v", err)
	}
}

// CheckTable reports whether table may hold the route into the TUN: a
// routing table number the kernel does not use itself. The configuration
// and hostnet's setup both check with it.
func CheckTable(table int) error {
	if table < 1 || table > 1<<31-1 {
		return fmt.Errorf("%d is outside 1-%d", table, 1<<31-1)
	}
	if name, reserved := reservedTables[table]; reserved {
		return fmt.Errorf("%d is the kernel's %q table; pick another number, e.g. 5353", table, name)
	}
	return nil
}

// CheckRulePriority reports whether priority may order the policy rule
// that sends the LAN to the TUN's table. The rule must come after the
// local table's rule (priority 0), so the router's own addresses stay
// reachable from the LAN, and before the main table's (32766), or it would
// never match. The configuration and hostnet's setup both check with it.
func CheckRulePriority(priority int) error {
	if priority < 1 || priority > 32765 {
		return fmt.Errorf("%d is outside 1-32765 (after the local table's rule 0, before main's 32766)", priority)
	}
	return nil
}

func (v *validator) state() {
	st := v.c.State
	if st.File == "" || !strings.HasPrefix(st.File, "/") || strings.HasSuffix(st.File, "/") {
		v.errorf("state.file", "must be an absolute file path, e.g. /var/lib/vpnmasq/state.bin")
	}
	if st.Interval < 100*time.Millisecond {
		v.errorf("state.interval", "%s is below 100ms", st.Interval)
	}
	if st.MaxAge <= 0 {
		v.errorf("state.max_age", "must be positive")
	}
	// A hold longer than the state is kept would block the LAN for a
	// state the next start ignores.
	if st.Hold < 0 || (st.MaxAge > 0 && st.Hold > st.MaxAge) {
		v.errorf("state.hold", "%s is outside 0s-%s (state.max_age)", st.Hold, st.MaxAge)
	}
}

func (v *validator) log() {
	if !slices.Contains(logLevels, v.c.Log.Level) {
		v.errorf("log.level", "%q is not one of %s", v.c.Log.Level, strings.Join(logLevels, ", "))
	}
	if !slices.Contains(logFormats, v.c.Log.Format) {
		v.errorf("log.format", "%q is not one of %s", v.c.Log.Format, strings.Join(logFormats, ", "))
	}
}

func (v *validator) forwards() {
	natRange := v.c.NAT.PortRange
	for i, f := range v.c.Forwards {
		key := indexPath("forward", i)
		if !v.forwardShape(key, f) {
			continue
		}
		if f.Port.Overlaps(natRange) {
			v.errorf(key+".port", "%s overlaps nat.port_range %s, whose ports belong to dynamic mappings", f.Port, natRange)
		}
		for j, g := range v.c.Forwards[:i] {
			if g.Proto != f.Proto {
				continue
			}
			if f.Proto == "gre" || f.Proto == "esp" {
				v.errorf(key+".proto", "a second %s forward (the first is forward[%d]%s): %s has no ports to tell flows apart", f.Proto, j, v.lineNote(g), strings.ToUpper(f.Proto))
				break
			}
			if f.Port.Overlaps(g.Port) {
				v.errorf(key+".port", "%s %s overlaps forward[%d]%s (%s %s)", f.Proto, f.Port, j, v.lineNote(g), g.Proto, g.Port)
				break
			}
		}
	}
}

func (v *validator) lineNote(f Forward) string {
	if f.Line > 0 {
		return fmt.Sprintf(", line %d", f.Line)
	}
	return ""
}

// forwardShape checks one forward on its own; false means it is too broken
// to compare with the others.
func (v *validator) forwardShape(key string, f Forward) bool {
	ok := true
	switch f.Proto {
	case "tcp", "udp":
		if f.Port.IsZero() {
			v.errorf(key+".port", "missing: a %s forward needs a port (8080) or range (\"1000-1010\")", f.Proto)
			ok = false
		} else if f.Port.First == 0 || f.Port.First > f.Port.Last {
			v.errorf(key+".port", "%s is not a valid port range", f.Port)
			ok = false
		} else if f.ToPort != 0 && int(f.ToPort)+f.Port.Len()-1 > 65535 {
			v.errorf(key+".to", "port %d plus the %d ports of %s runs past 65535", f.ToPort, f.Port.Len(), f.Port)
		}
	case "gre", "esp":
		if !f.Port.IsZero() {
			v.errorf(key+".port", "%s has no ports; remove this key", f.Proto)
		}
		if f.ToPort != 0 {
			v.errorf(key+".to", "%s has no ports; give only the address", f.Proto)
		}
	case "":
		v.errorf(key+".proto", "missing: one of %s", strings.Join(protocols, ", "))
		ok = false
	default:
		v.errorf(key+".proto", "%q is not one of %s", f.Proto, strings.Join(protocols, ", "))
		ok = false
	}
	switch {
	case !f.To.IsValid():
		v.errorf(key+".to", "missing: the LAN host, e.g. \"192.168.77.10:80\" or \"192.168.77.10\"")
	case !f.To.Is4():
		v.errorf(key+".to", "%s is not an IPv4 address", f.To)
	default:
		if err := checkUnicast(f.To); err != nil {
			v.errorf(key+".to", "%v", err)
		} else if len(v.c.LAN.Prefixes) > 0 {
			if _, _, in := containing(v.c.LAN.Prefixes, f.To); !in {
				v.errorf(key+".to", "%s is not inside lan.prefixes (%s)", f.To, joinPrefixes(v.c.LAN.Prefixes))
			}
		}
	}
	return ok
}

// containing returns the first prefix of list that holds a.
func containing(list []netip.Prefix, a netip.Addr) (int, netip.Prefix, bool) {
	for i, p := range list {
		if p.Contains(a) {
			return i, p, true
		}
	}
	return 0, netip.Prefix{}, false
}

func joinPrefixes(list []netip.Prefix) string {
	s := make([]string, len(list))
	for i, p := range list {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

func checkUnicast(a netip.Addr) error {
	switch {
	case !a.Is4():
		return fmt.Errorf("%s is not an IPv4 address", a)
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("%s is not a unicast address", a)
	}
	return nil
}

// CheckInterfaceName applies the kernel's rules for device names
// (dev_valid_name): 1-15 bytes, not "." or "..", no '/', ':' or whitespace.
// The configuration and hostnet's setup both check with it.
func CheckInterfaceName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("interface name is empty")
	case len(name) > 15:
		return fmt.Errorf("interface name %q is longer than 15 bytes", name)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a valid interface name", name)
	}
	for _, r := range name {
		if r == '/' || r == ':' || unicode.IsSpace(r) || r == 0 || r == unicode.ReplacementChar {
			return fmt.Errorf("interface name %q contains %q", name, r)
		}
	}
	return nil
}

// CheckWANClaim reports the first thing that makes a description of what
// vpnmasq takes for itself on the WAN unusable: the WAN address, TCP and
// UDP ports on it, IP protocols to it owned whole, and the LAN prefixes
// whose packets arriving on the WAN it routes. The WAN capture filter and
// the host's nftables guard are built from the same description and refuse
// the same things.
func CheckWANClaim(addr netip.Addr, ports []PortRange, protocols []uint8, prefixes []netip.Prefix) error {
	if !addr.Is4() {
		return fmt.Errorf("WAN address %v is not an IPv4 address", addr)
	}
	for _, r := range ports {
		if r.Last < r.First {
			return fmt.Errorf("port range %d-%d is reversed", r.First, r.Last)
		}
	}
	for _, p := range protocols {
		switch p {
		case nat.ProtoTCP, nat.ProtoUDP:
			return fmt.Errorf("protocol %d is claimed by port, not as a whole protocol", p)
		case nat.ProtoICMP:
			return errors.New("ICMP is never owned as a whole protocol: the host keeps answering its own pings")
		}
	}
	for _, p := range prefixes {
		if !p.IsValid() || !p.Addr().Is4() {
			return fmt.Errorf("prefix %v is not an IPv4 prefix", p)
		}
	}
	return nil
}

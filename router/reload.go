package router

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/rs/zerolog"

	"github.com/vpnmasq/vpnmasq/admin"
	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/datapath"
	"github.com/vpnmasq/vpnmasq/hostnet"
	"github.com/vpnmasq/vpnmasq/internal/interval"
	"github.com/vpnmasq/vpnmasq/nat"
)

// Live reconfiguration (SIGHUP, `vpnmasq reload`). A reload reads and
// validates the whole file first; a file with any problem changes nothing.
// A valid file is compared with the running configuration:
//
//   - applied live: the NAT's timeouts, filtering, limits and forwards
//     (nat.Engine.Reconfigure, which keeps every mapping), the capture
//     filter and nftables guard for the forwards' ports, routing.no_nat,
//     the ICMP error rate, the admin allow list and token, the DNS
//     upstreams, and the log level;
//   - needs a restart: what the host plumbing or the sockets were built
//     from (LAN and WAN interfaces and addresses, WAN MTU, the TUN's name,
//     table and rule priority, the service address, admin port and socket,
//     nat.port_range, log.format, [state], and turning the DNS forwarder
//     on or off). These are named, logged and left as they run.

// reloadState is what reloads keep between them.
type reloadState struct {
	mu sync.Mutex // guards cfg, and serialises reloads with the WAN watcher's changes
	// cfg is the configuration running now: the start's, with the live
	// settings of the last reload. nil until the first reload.
	cfg *config.Config
}

// running returns the configuration in force. Call with reload.mu held.
func (r *Router) running() *config.Config {
	if r.reload.cfg != nil {
		return r.reload.cfg
	}
	return r.cfg
}

// Reload applies a resolved configuration to the running router. It
// returns what it applied and what differs but needs a restart; err means
// nothing was applied.
func (r *Router) Reload(cfg *config.Config) (applied, needsRestart []string, err error) {
	r.reload.mu.Lock()
	defer r.reload.mu.Unlock()
	old := r.running()
	needsRestart = restartChanges(old, cfg)
	next := withRestartFields(cfg, old)
	ncfg, ports, hairpinProtos, err := engineConfig(next)
	if err != nil {
		return nil, needsRestart, err
	}

	// The capture filter and the guard first: they can fail, and then
	// nothing else has changed.
	_, oldPorts, oldHairpin, _ := engineConfig(old)
	if !slices.Equal(ports, oldPorts) || !slices.Equal(hairpinProtos, oldHairpin) {
		if err := r.updateCapture(ports, hairpinProtos); err != nil {
			return nil, needsRestart, err
		}
	}

	res := r.nat.Reconfigure(ncfg)
	for _, f := range res.Removed {
		applied = append(applied, "forward removed: "+describeForward(f))
	}
	for _, f := range res.Added {
		applied = append(applied, "forward added: "+describeForward(f))
	}
	if res.FlowsEnded > 0 {
		applied = append(applied, fmt.Sprintf("flows ended by forward changes: %d", res.FlowsEnded))
	}
	changed := func(name string, differs bool) {
		if differs {
			applied = append(applied, name)
		}
	}
	changed("nat.udp_timeout", old.NAT.UDPTimeout != next.NAT.UDPTimeout)
	changed("nat.tcp_established_timeout", old.NAT.TCPEstablishedTimeout != next.NAT.TCPEstablishedTimeout)
	changed("nat.tcp_transitory_timeout", old.NAT.TCPTransitoryTimeout != next.NAT.TCPTransitoryTimeout)
	changed("nat.icmp_timeout", old.NAT.ICMPTimeout != next.NAT.ICMPTimeout)
	changed("nat.udp_filtering", old.NAT.UDPFiltering != next.NAT.UDPFiltering)
	changed("nat.max_mappings", old.NAT.MaxMappings != next.NAT.MaxMappings)
	changed("nat.udp_inbound_refresh", old.NAT.UDPInboundRefresh != next.NAT.UDPInboundRefresh)
	changed("limits", old.Limits != next.Limits)
	changed("ipsec", old.IPsec != next.IPsec)
	changed("pptp", old.PPTP != next.PPTP)

	if !slices.Equal(old.Routing.NoNAT, next.Routing.NoNAT) {
		// Flows to networks that are masqueraded now are not routed
		// flows any more: SetNoNAT forgets them.
		r.path.SetNoNAT(next.Routing.NoNAT)
		applied = append(applied, "routing.no_nat")
	}
	r.path.SetRoutedTimeouts(routedTimeouts(next))
	if old.Limits.ICMPErrorRate != next.Limits.ICMPErrorRate || old.Limits.ICMPErrorBurst != next.Limits.ICMPErrorBurst {
		r.path.SetICMPErrorRate(next.Limits.ICMPErrorRate, next.Limits.ICMPErrorBurst)
	}

	if r.services != nil {
		s, o := next.Services, old.Services
		if !slices.Equal(s.AdminAllow, o.AdminAllow) || s.AdminToken != o.AdminToken {
			r.services.lan.set(r, s.AdminAllow, s.AdminToken)
			changed("services.admin_allow", !slices.Equal(s.AdminAllow, o.AdminAllow))
			changed("services.admin_token", s.AdminToken != o.AdminToken)
		}
		if !slices.Equal(s.DNSUpstream, o.DNSUpstream) {
			if err := r.services.stack.SetDNSUpstreams(upstreamAddrs(s.DNSUpstream)); err != nil {
				// Turning the forwarder on or off is a restart
				// (restartChanges); nothing else fails here.
				r.log.Warn().Err(err).Msg("reload: dns upstreams")
				next.Services.DNSUpstream = o.DNSUpstream
			} else {
				applied = append(applied, "services.dns_upstream")
			}
		}
	}

	if old.Log.Level != next.Log.Level {
		if lvl, err := zerolog.ParseLevel(next.Log.Level); err == nil && next.Log.Level != "" {
			zerolog.SetGlobalLevel(lvl)
			applied = append(applied, "log.level")
		}
	}
	r.reload.cfg = next
	return applied, needsRestart, nil
}

// ReloadConfig re-reads the configuration file the router started from,
// validates and resolves it against the host as it is now, and applies it
// (Reload). Every problem, each "file:line: key: message", is logged at
// error level and returned, and the running configuration stays. It is
// what SIGHUP and POST /api/v1/reload on the admin socket do.
func (r *Router) ReloadConfig() admin.ReloadResult {
	path := r.cfg.Source
	res := admin.ReloadResult{Source: path}
	fail := func(errs []string) admin.ReloadResult {
		for _, e := range errs {
			r.log.Error().Str("config", path).Msg(e)
		}
		r.log.Error().Str("config", path).Int("problems", len(errs)).Msg("reload refused; the running configuration stays")
		res.Errors = errs
		return res
	}
	if path == "" || path == config.DefaultSource {
		return fail([]string{config.DefaultSource + ": nothing to reload: vpnmasq runs on its embedded default; start it with --config FILE to reload that file"})
	}
	cfg, err := config.Load(path)
	if err == nil {
		var host *config.Host
		if host, err = hostnet.ReadHost(); err != nil {
			err = fmt.Errorf("reading interfaces: %w", err)
		} else {
			err = cfg.Resolve(host)
		}
	}
	if err != nil {
		return fail(configErrorLines(err))
	}
	for _, w := range cfg.Warnings {
		r.log.Warn().Str("config", path).Msg(w.Error())
	}
	applied, restart, err := r.Reload(cfg)
	res.Applied, res.NeedsRestart = applied, restart
	for _, what := range restart {
		r.log.Warn().Str("config", path).Str("setting", what).Msg("changed in the file, needs a restart: left as it runs")
	}
	if err != nil {
		return fail([]string{path + ": " + err.Error()})
	}
	r.log.Info().Str("config", path).Strs("applied", applied).Strs("needs_restart", restart).Msg("configuration reloaded")
	return res
}

var _ admin.Reloader = (*Router)(nil)

// configErrorLines splits a Load or Resolve error into its problems.
func configErrorLines(err error) []string {
	var es *config.Errors
	if errors.As(err, &es) {
		out := make([]string, len(*es))
		for i, e := range *es {
			out[i] = e.Error()
		}
		return out
	}
	return []string{err.Error()}
}

// restartChanges names the settings that differ between the running
// configuration and cfg and are only read at start.
func restartChanges(old, cfg *config.Config) []string {
	var out []string
	diff := func(name string, differs bool, was, now any) {
		if differs {
			out = append(out, fmt.Sprintf("%s (%v → %v)", name, was, now))
		}
	}
	diff("lan.interfaces", !slices.Equal(old.LAN.Interfaces, cfg.LAN.Interfaces), old.LAN.Interfaces, cfg.LAN.Interfaces)
	diff("lan.prefixes", !slices.Equal(old.LAN.Prefixes, cfg.LAN.Prefixes), old.LAN.Prefixes, cfg.LAN.Prefixes)
	diff("wan.interface", old.WAN.Interface != cfg.WAN.Interface, old.WAN.Interface, cfg.WAN.Interface)
	// An address taken from the interface is followed as it changes
	// (wanwatch_linux.go); only a pinned one, or a change between pinned
	// and taken, needs a restart.
	addrDiffers := old.WAN.AddressFromHost != cfg.WAN.AddressFromHost ||
		(!cfg.WAN.AddressFromHost && old.WAN.Address != cfg.WAN.Address)
	diff("wan.address", addrDiffers, old.WAN.Address, cfg.WAN.Address)
	diff("wan.mtu", old.WAN.MTU != cfg.WAN.MTU, old.WAN.MTU, cfg.WAN.MTU)
	diff("nat.port_range", old.NAT.PortRange != cfg.NAT.PortRange, old.NAT.PortRange, cfg.NAT.PortRange)
	diff("tun.name", old.TUN.Name != cfg.TUN.Name, old.TUN.Name, cfg.TUN.Name)
	diff("tun.table", old.TUN.Table != cfg.TUN.Table, old.TUN.Table, cfg.TUN.Table)
	diff("tun.rule_priority", old.TUN.RulePriority != cfg.TUN.RulePriority, old.TUN.RulePriority, cfg.TUN.RulePriority)
	diff("services.address", old.Services.Address != cfg.Services.Address, old.Services.Address, cfg.Services.Address)
	diff("services.admin_port", old.Services.AdminPort != cfg.Services.AdminPort, old.Services.AdminPort, cfg.Services.AdminPort)
	diff("services.admin_socket", old.Services.AdminSocket != cfg.Services.AdminSocket, old.Services.AdminSocket, cfg.Services.AdminSocket)
	if (len(old.Services.DNSUpstream) == 0) != (len(cfg.Services.DNSUpstream) == 0) {
		out = append(out, fmt.Sprintf("services.dns_upstream (the DNS forwarder turned %s)", map[bool]string{true: "on", false: "off"}[len(cfg.Services.DNSUpstream) > 0]))
	}
	diff("log.format", old.Log.Format != cfg.Log.Format, old.Log.Format, cfg.Log.Format)
	diff("state", old.State != cfg.State, fmt.Sprintf("%+v", old.State), fmt.Sprintf("%+v", cfg.State))
	return out
}

// withRestartFields returns a copy of cfg with the settings only read at
// start taken from the running configuration: what the router runs after
// the reload.
func withRestartFields(cfg, old *config.Config) *config.Config {
	next := *cfg
	next.Source = old.Source
	next.LAN = old.LAN
	next.WAN = old.WAN
	next.NAT.PortRange = old.NAT.PortRange
	next.TUN = old.TUN
	next.Services.Address = old.Services.Address
	next.Services.AdminPort = old.Services.AdminPort
	next.Services.AdminSocket = old.Services.AdminSocket
	if (len(old.Services.DNSUpstream) == 0) != (len(cfg.Services.DNSUpstream) == 0) {
		next.Services.DNSUpstream = old.Services.DNSUpstream
	}
	next.Log.Format = old.Log.Format
	next.State = old.State
	next.Forwards = slices.Clone(cfg.Forwards)
	return &next
}

// engineConfig is the NAT engine's configuration for cfg, with the ports
// and protocols the capture and guards must own: the mapping range, IKE and
// NAT-T, and the forwards' (ports sorted, for comparison).
func engineConfig(cfg *config.Config) (nc nat.Config, ports []config.PortRange, hairpinProtos []uint8, err error) {
	if nc, err = cfg.NATConfig(); err != nil {
		return nc, nil, nil, err
	}
	ports = []config.PortRange{cfg.NAT.PortRange, {First: nat.PortIKE, Last: nat.PortIKE}, {First: nat.PortNATT, Last: nat.PortNATT}}
	for _, f := range nc.Forwards {
		switch f.Proto {
		case nat.ProtoTCP, nat.ProtoUDP:
			ports = append(ports, config.PortRange{First: f.Ports.First, Last: f.Ports.Last})
		default:
			hairpinProtos = append(hairpinProtos, f.Proto)
		}
	}
	ports = interval.MergePorts(ports)
	slices.Sort(hairpinProtos)
	return nc, ports, hairpinProtos, nil
}

// routedTimeouts are the no-NAT flows' lifetimes for cfg.
func routedTimeouts(cfg *config.Config) datapath.RoutedTimeouts {
	return datapath.RoutedTimeouts{TCP: cfg.NAT.TCPEstablishedTimeout, UDP: cfg.NAT.UDPTimeout,
		ICMP: cfg.NAT.ICMPTimeout, ESP: cfg.IPsec.ESPTimeout, GRE: cfg.PPTP.GRETimeout}
}

func upstreamAddrs(us []config.Upstream) []netip.AddrPort {
	out := make([]netip.AddrPort, len(us))
	for i, u := range us {
		out[i] = u.AddrPort()
	}
	return out
}

// describeForward writes a forward for operators: "tcp 8080 → 10.0.0.2:80".
func describeForward(f nat.Forward) string {
	var b strings.Builder
	switch f.Proto {
	case nat.ProtoTCP:
		b.WriteString("tcp ")
	case nat.ProtoUDP:
		b.WriteString("udp ")
	case nat.ProtoGRE:
		return "gre → " + f.To.String()
	case nat.ProtoESP:
		return "esp → " + f.To.String()
	default:
		return fmt.Sprintf("proto %d → %s", f.Proto, f.To)
	}
	fmt.Fprintf(&b, "%d", f.Ports.First)
	if f.Ports.Last != f.Ports.First {
		fmt.Fprintf(&b, "-%d", f.Ports.Last)
	}
	to := f.ToPort
	if to == 0 {
		to = f.Ports.First
	}
	fmt.Fprintf(&b, " → %s", netip.AddrPortFrom(f.To, to))
	return b.String()
}

// updateCapture gives the WAN capture filter and the host's guards the
// ports and hairpin protocols of the new forwards. On failure it puts the
// old capture back.
func (r *Router) updateCapture(ports []config.PortRange, hairpinProtos []uint8) (err error) {
	capture := r.capture
	capture.Ports = ports
	// While the capture and the guard change, the router's own sockets
	// keep off the old ports and the new ones.
	old := r.owned.Load()
	var both []config.PortRange
	if old != nil {
		both = slices.Clone(*old)
	}
	both = append(both, ports...)
	r.owned.Store(&both)
	defer func() {
		if err != nil {
			r.owned.Store(old)
		} else {
			r.owned.Store(&ports)
		}
	}()
	if r.wan != nil {
		if err := r.wan.SetCapture(capture); err != nil {
			return fmt.Errorf("updating the WAN capture filter: %w", err)
		}
	}
	if r.host != nil {
		if err := r.host.UpdateGuard(r.spec.TUN, ports, ports, hairpinProtos); err != nil {
			if r.wan != nil {
				_ = r.wan.SetCapture(r.capture)
			}
			return fmt.Errorf("updating the nftables guard: %w", err)
		}
	}
	r.capture = capture
	r.spec.Guard.Ports = ports
	r.spec.HairpinPorts = ports
	r.spec.HairpinProtocols = hairpinProtos
	return nil
}

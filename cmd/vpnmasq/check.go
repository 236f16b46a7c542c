package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/hostnet"
)

// cmdCheck implements `vpnmasq check --config FILE`.
func cmdCheck(args []string) int {
	return runCheck(args, os.Stdout, os.Stderr, hostnet.ReadEphemeral)
}

const checkAbout = `Loads and validates FILE without changing anything on the host; values
left to the host (interfaces, addresses, MTU) are filled in only by
` + "`vpnmasq run`" + `. The NAT's ports are compared with the ephemeral ports of
the network namespace check runs in (net.ipv4.ip_local_port_range, less
net.ipv4.ip_local_reserved_ports): run it where vpnmasq runs. An overlap
with nat.port_range is an error, one with a forward's port a warning.`

// runCheck loads and validates a configuration file, and compares its ports
// with the ephemeral ports of the network namespace it runs in, which
// ephemeral reads; it changes nothing on the host. It prints every problem
// as "file:line: key: msg" and returns 2, or prints "<file>: OK" and a
// summary and returns 0; warnings go to stderr either way.
func runCheck(args []string, stdout, stderr io.Writer, ephemeral func() (config.Ephemeral, error)) int {
	flags := newFlags("check", "check --config FILE", checkAbout, stderr)
	path := flags.String("config", "", "configuration `FILE` to check (required)")
	if code, ok := parseFlags(flags, args); !ok {
		return code
	}
	if *path == "" {
		fmt.Fprintln(stderr, "check: --config FILE is required")
		flags.Usage()
		return 2
	}

	c, err := config.Load(*path)
	if err != nil {
		printConfigErrors(stderr, err)
		return 2
	}
	host, err := ephemeral()
	if err != nil {
		fmt.Fprintf(stderr, "%s: warning: the ports were not compared with the host's ephemeral ports: %v\n", *path, err)
	} else {
		warnings, err := c.CheckEphemeral(host)
		if err != nil {
			printConfigErrors(stderr, err)
			return 2
		}
		for _, w := range warnings {
			fmt.Fprintln(stderr, w)
		}
	}
	fmt.Fprintf(stdout, "%s: OK\n", *path)
	printSummary(stdout, c, host)
	return 0
}

// fromHost stands for a value Resolve will take from the host at run time.
const fromHost = "(from the host at start)"

func printSummary(out io.Writer, c *config.Config, host config.Ephemeral) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(key, value string) { fmt.Fprintf(w, "  %s\t%s\n", key, value) }
	orHost := func(s string) string {
		if s == "" {
			return fromHost
		}
		return s
	}

	row("lan.interfaces", orHost(strings.Join(c.LAN.Interfaces, ", ")))
	row("lan.prefixes", orHost(joinStrings(c.LAN.Prefixes)))
	row("wan.interface", orHost(c.WAN.Interface))
	if c.WAN.Address.IsValid() {
		row("wan.address", c.WAN.Address.String())
	} else {
		row("wan.address", fromHost)
	}
	if c.WAN.MTU != 0 {
		row("wan.mtu", fmt.Sprint(c.WAN.MTU))
	} else {
		row("wan.mtu", fromHost)
	}
	n := c.NAT
	row("nat.port_range", fmt.Sprintf("%s (%d ports)", n.PortRange, n.PortRange.Len()))
	if host.IsZero() {
		row("host ephemeral ports", "unknown: not compared")
	} else {
		row("host ephemeral ports", host.String()+" (net.ipv4.ip_local_port_range of this namespace): apart from nat.port_range")
	}
	row("nat timeouts", fmt.Sprintf("udp %s, tcp established %s, tcp transitory %s, icmp %s",
		shortDuration(n.UDPTimeout), shortDuration(n.TCPEstablishedTimeout),
		shortDuration(n.TCPTransitoryTimeout), shortDuration(n.ICMPTimeout)))
	row("nat.udp_filtering", n.UDPFiltering)
	row("nat.max_mappings", fmt.Sprint(n.MaxMappings))
	row("nat.udp_inbound_refresh", fmt.Sprint(n.UDPInboundRefresh))
	l := c.Limits
	row("limits", fmt.Sprintf("flows %d (%d per host), mappings %d per host, esp %d, ike %d (remote-started %d for %s), calls %d, fragments %d per host",
		l.MaxFlows, l.MaxFlowsPerHost, l.MaxMappingsPerHost, l.MaxESPPerHost, l.MaxIKEPerHost,
		l.MaxRemoteIKE, shortDuration(l.RemoteIKETimeout), l.MaxCallsPerHost, l.MaxFragmentsPerHost))
	row("limits rates", fmt.Sprintf("new flows %d/s (burst %d) per LAN host, %d/s (burst %d) per WAN source to forwards, unreplied %s, icmp errors %d/s (burst %d) per destination",
		l.HostFlowRate, l.HostFlowBurst, l.ForwardFlowRate, l.ForwardFlowBurst, shortDuration(l.UnrepliedTimeout),
		l.ICMPErrorRate, l.ICMPErrorBurst))
	ip := c.IPsec
	row("ipsec", fmt.Sprintf("ike %s, esp %s, esp wait %s x%d, squelch %s, max %d",
		shortDuration(ip.IKETimeout), shortDuration(ip.ESPTimeout), shortDuration(ip.ESPWait),
		ip.ESPRetries, shortDuration(ip.ESPSquelch), ip.MaxESP))
	pp := c.PPTP
	row("pptp", fmt.Sprintf("call setup %s, teardown grace %s, gre %s, max calls %d",
		shortDuration(pp.CallSetupTimeout), shortDuration(pp.TeardownGrace),
		shortDuration(pp.GRETimeout), pp.MaxCalls))
	if st := c.State; st.Enabled {
		row("state", fmt.Sprintf("%s, every %s and on stop, restored when younger than %s",
			st.File, shortDuration(st.Interval), shortDuration(st.MaxAge)))
	} else {
		row("state", "disabled (a restart drops every mapping)")
	}
	if len(c.Routing.NoNAT) > 0 {
		row("routing.no_nat", joinStrings(c.Routing.NoNAT))
	} else {
		row("routing.no_nat", "none")
	}
	if len(c.Forwards) == 0 {
		row("forward", "none")
	}
	for i, f := range c.Forwards {
		row(fmt.Sprintf("forward[%d]", i), describeForward(f))
	}
	row("services.address", c.Services.Address.String())
	sv := c.Services
	var ups []string
	for _, u := range sv.DNSUpstream {
		ups = append(ups, u.AddrPort().String())
	}
	if len(ups) == 0 {
		row("services.dns_upstream", "none (no DNS forwarder)")
	} else {
		row("services.dns_upstream", strings.Join(ups, ", "))
	}
	var allow []string
	for _, p := range sv.AdminAllow {
		allow = append(allow, p.String())
	}
	token := "no token"
	if sv.AdminToken != "" {
		token = "bearer token"
	}
	row("services admin", fmt.Sprintf("http://%s:%d from %s (%s); socket %s",
		sv.Address, sv.AdminPort, strings.Join(allow, ", "), token, sv.AdminSocket))
	row("tun", fmt.Sprintf("%s, table %d, rule priority %d, UDP GRO forwarding %s", c.TUN.Name, c.TUN.Table, c.TUN.RulePriority, map[bool]string{true: "on", false: "off"}[c.TUN.UDPGRO]))
	row("log", fmt.Sprintf("level %s, format %s", c.Log.Level, c.Log.Format))
	w.Flush()
}

// describeForward reads like "tcp 8080 -> 192.168.77.10:80 (line 82)".
func describeForward(f config.Forward) string {
	var b strings.Builder
	b.WriteString(f.Proto)
	if !f.Port.IsZero() {
		fmt.Fprintf(&b, " %s", f.Port)
	}
	fmt.Fprintf(&b, " -> %s", f.To)
	if f.ToPort != 0 {
		to := config.PortRange{First: f.ToPort, Last: f.ToPort + uint16(f.Port.Len()-1)}
		fmt.Fprintf(&b, ":%s", to)
	}
	if f.Line > 0 {
		fmt.Fprintf(&b, " (line %d)", f.Line)
	}
	return b.String()
}

// shortDuration prints 2h4m instead of time.Duration's 2h4m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func joinStrings[T fmt.Stringer](list []T) string {
	s := make([]string, len(list))
	for i, v := range list {
		s[i] = v.String()
	}
	return strings.Join(s, ", ")
}

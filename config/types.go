// Package config loads, validates and resolves vpnmasq's TOML configuration.
//
// Loading is pure: it reads one file (or the embedded default), reports every
// problem with its file, line and key, and never touches the host. Resolving
// fills what the file left open (WAN interface, addresses, LAN prefixes, MTU)
// from a snapshot of the host's interfaces and routes, a Host that
// hostnet.ReadHost reads; this package reads nothing of the host itself, so
// it builds and tests on any system. The defaults are nat's where the
// engine has one (Default, NATConfig).
package config

import (
	"fmt"
	"net/netip"
	"time"
)

// Config is the whole router configuration after defaults are applied.
type Config struct {
	// Source names where the configuration came from: a file path or
	// "<embedded default>". Used in messages.
	Source string `toml:"-"`
	// pos holds the line of every key of the file it was loaded from, so
	// that Resolve's problems name their line too; nil for the embedded
	// default and for configurations built in code.
	pos *positions
	// Warnings are what Resolve found worth a look on this host without
	// refusing it (see CheckEphemeral); vpnmasq run logs them.
	Warnings Errors `toml:"-"`

	LAN      LAN       `toml:"lan"`
	WAN      WAN       `toml:"wan"`
	NAT      NAT       `toml:"nat"`
	Routing  Routing   `toml:"routing"`
	Forwards []Forward `toml:"forward"`
	Limits   Limits    `toml:"limits"`
	IPsec    IPsec     `toml:"ipsec"`
	PPTP     PPTP      `toml:"pptp"`
	Services Services  `toml:"services"`
	TUN      TUN       `toml:"tun"`
	State    State     `toml:"state"`
	Log      Log       `toml:"log"`
}

// LAN is the inside: where LAN hosts arrive and which sources are masqueraded.
type LAN struct {
	Interfaces []string       `toml:"interfaces"` // default: every interface with an IPv4 address except WAN, loopback and the TUN
	Prefixes   []netip.Prefix `toml:"prefixes"`   // default: the subnets of Interfaces
}

// WAN is the outside: one interface and the one address LAN hosts hide behind.
type WAN struct {
	Interface string     `toml:"interface"` // default: interface of the IPv4 default route
	Address   netip.Addr `toml:"address"`   // default: first IPv4 address of Interface
	MTU       int        `toml:"mtu"`       // default: the interface's MTU; lower it to clamp
	// AddressFromHost and InterfaceFromHost say that Resolve took Address
	// and Interface from the host, not from the configuration: the router
	// follows a new address of the interface, and reports a default route
	// that moved to another interface.
	AddressFromHost   bool `toml:"-"`
	InterfaceFromHost bool `toml:"-"`
}

// NAT holds the masquerade's mapping range and timers.
type NAT struct {
	PortRange             PortRange     `toml:"port_range"`              // default 20000-32767
	UDPTimeout            time.Duration `toml:"udp_timeout"`             // default 5m (RFC 4787 REQ-5)
	TCPEstablishedTimeout time.Duration `toml:"tcp_established_timeout"` // default 2h4m (RFC 5382 REQ-5)
	TCPTransitoryTimeout  time.Duration `toml:"tcp_transitory_timeout"`  // default 4m
	ICMPTimeout           time.Duration `toml:"icmp_timeout"`            // default 60s (RFC 5508)
	// UDPFiltering is "address-dependent" (default) or "endpoint-independent" (RFC 4787 REQ-8).
	UDPFiltering string `toml:"udp_filtering"`
	MaxMappings  int    `toml:"max_mappings"` // default 65536; at the limit new flows are refused (ICMP 3/13)
	// UDPInboundRefresh lets inbound packets extend a UDP mapping's timer
	// (RFC 4787 REQ-6 allows it); default false: outbound traffic only.
	UDPInboundRefresh bool `toml:"udp_inbound_refresh"`
}

// Limits bound the NAT state and give every LAN host a fair share of it
// (see nat.Limits and the README's Security model).
type Limits struct {
	MaxFlows            int           `toml:"max_flows"`              // all flows, default 131072 (like nf_conntrack_max)
	MaxFlowsPerHost     int           `toml:"max_flows_per_host"`     // default 8192
	MaxMappingsPerHost  int           `toml:"max_mappings_per_host"`  // external ports one LAN host holds, default 4096
	MaxESPPerHost       int           `toml:"max_esp_per_host"`       // ESP SPI pairs, default 64
	MaxIKEPerHost       int           `toml:"max_ike_per_host"`       // IKE sessions, default 64
	MaxRemoteIKE        int           `toml:"max_remote_ike"`         // unanswered IKE sessions a remote may start per LAN host, default 4
	RemoteIKETimeout    time.Duration `toml:"remote_ike_timeout"`     // their lifetime until answered, default 30s
	MaxCallsPerHost     int           `toml:"max_calls_per_host"`     // PPTP calls, default 64
	MaxFragmentsPerHost int           `toml:"max_fragments_per_host"` // fragment table entries and held fragments, default 256
	HostFlowRate        int           `toml:"host_flow_rate"`         // new flows per second per LAN host, default 1000
	HostFlowBurst       int           `toml:"host_flow_burst"`        // default 2000
	ForwardFlowRate     int           `toml:"forward_flow_rate"`      // new forwarded flows per second per WAN source, default 50
	ForwardFlowBurst    int           `toml:"forward_flow_burst"`     // default 100
	UnrepliedTimeout    time.Duration `toml:"unreplied_timeout"`      // a flow opened from the WAN until the inside answers, default 30s
	ICMPErrorRate       int           `toml:"icmp_error_rate"`        // ICMP errors the router sends per second per destination, default 1
	ICMPErrorBurst      int           `toml:"icmp_error_burst"`       // default 6 (Linux's icmp_ratelimit and burst)
}

// Routing lists destinations that are routed, not masqueraded.
type Routing struct {
	NoNAT []netip.Prefix `toml:"no_nat"`
}

// Forward is one port forward: traffic to the WAN address on Port is sent to To.
type Forward struct {
	Proto string    `toml:"proto"` // tcp, udp, gre, esp
	Port  PortRange `toml:"port"`  // external port or range (tcp, udp); zero for gre, esp
	// To is the internal host. For tcp/udp its port may be omitted (same port
	// as external); with a range, To's port is the first of an equally long range.
	To     netip.Addr `toml:"-"`
	ToPort uint16     `toml:"-"` // 0: same as the external port
	Line   int        `toml:"-"` // line of the [[forward]] table in the file, for messages
}

// IPsec holds the lifetimes and limits of IKE and ESP masquerading.
type IPsec struct {
	IKETimeout time.Duration `toml:"ike_timeout"` // IKE session idle lifetime, default 35m (must outlast rekeys)
	ESPTimeout time.Duration `toml:"esp_timeout"` // established SPI pair idle lifetime, default 35m
	ESPWait    time.Duration `toml:"esp_wait"`    // a new outbound SPI holds its remote this long, default 2m
	ESPRetries int           `toml:"esp_retries"` // re-arms of that wait before squelching, default 5
	ESPSquelch time.Duration `toml:"esp_squelch"` // how long a squelched SPI is dropped, default 30s
	MaxESP     int           `toml:"max_esp"`     // most SPI pairs (and IKE sessions) at once, default 4096
}

// PPTP holds the timers of PPTP masquerading (Call IDs on TCP 1723 and the
// GRE that follows them).
type PPTP struct {
	CallSetupTimeout time.Duration `toml:"call_setup_timeout"` // a requested call waits this long for the server's reply, default 2m
	TeardownGrace    time.Duration `toml:"teardown_grace"`     // a cleared call keeps its GRE mapping this long, default 30s
	GRETimeout       time.Duration `toml:"gre_timeout"`        // idle lifetime of a non-PPTP GRE binding, default 5m
	MaxCalls         int           `toml:"max_calls"`          // most masqueraded calls at once, default 4096
}

// Services is the router's own address for local services (netstack) and
// what runs on it.
type Services struct {
	Address     netip.Addr     `toml:"address"`      // default 192.0.2.53 (see README)
	DNSUpstream []Upstream     `toml:"dns_upstream"` // default: the IPv4 nameservers of the host's /etc/resolv.conf
	AdminAllow  []netip.Prefix `toml:"admin_allow"`  // LAN sources allowed to use the admin server, default lan.prefixes
	AdminToken  string         `toml:"admin_token"`  // when set, the admin API on the LAN asks for "Authorization: Bearer <token>"
	AdminPort   uint16         `toml:"admin_port"`   // admin HTTP port on the service address, default 80
	AdminSocket string         `toml:"admin_socket"` // host-side unix socket (root-only), default /run/vpnmasq/admin.sock
}

// Upstream is a DNS server: "192.0.2.1" or "192.0.2.1:5353" in TOML.
type Upstream netip.AddrPort

// UnmarshalText reads an IPv4 address with an optional port (default 53).
func (u *Upstream) UnmarshalText(text []byte) error {
	s := string(text)
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if !ap.Addr().Is4() || ap.Port() == 0 {
			return fmt.Errorf("%q: want an IPv4 address with an optional non-zero port", s)
		}
		*u = Upstream(ap)
		return nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return fmt.Errorf("%q: want an IPv4 address with an optional port, e.g. \"192.0.2.1\" or \"192.0.2.1:53\"", s)
	}
	*u = Upstream(netip.AddrPortFrom(a, 53))
	return nil
}

// MarshalText writes "address:port".
func (u Upstream) MarshalText() ([]byte, error) { return []byte(netip.AddrPort(u).String()), nil }

// AddrPort is the upstream as an address and port.
func (u Upstream) AddrPort() netip.AddrPort { return netip.AddrPort(u) }

// TUN is the device that captures LAN traffic, and its policy routing.
type TUN struct {
	Name         string `toml:"name"`          // default "vpnmasq0"
	Table        int    `toml:"table"`         // policy routing table, default 5353
	RulePriority int    `toml:"rule_priority"` // ip rule priority, default 5353
	// UDPGRO turns on UDP GRO forwarding on the LAN and WAN interfaces while
	// vpnmasq runs, so that UDP flows cross the router as super-packets.
	UDPGRO bool `toml:"udp_gro"` // default true
}

// State is where the NAT state is kept across restarts: written every
// Interval and on shutdown, read back on start when younger than MaxAge.
type State struct {
	Enabled  bool          `toml:"enabled"`  // default true
	File     string        `toml:"file"`     // default /var/lib/vpnmasq/state.bin
	Interval time.Duration `toml:"interval"` // periodic snapshot, default 5s
	MaxAge   time.Duration `toml:"max_age"`  // an older file is ignored, default 10m
	// Hold is how long a stop keeps dropping, in the kernel, what the
	// router would have handled (hostnet/nfthold_linux.go), so that the
	// host neither resets restored connections nor forwards the LAN
	// unmasqueraded before the next start. 0 leaves nothing; default 30s.
	Hold time.Duration `toml:"hold"`
}

// Log selects the zerolog level and output format.
type Log struct {
	Level  string `toml:"level"`  // trace, debug, info (default), warn, error
	Format string `toml:"format"` // auto (default: console on a terminal, JSON otherwise), console, json
}

// PortRange is an inclusive range of ports. In TOML it is written "20000-60999"
// or as a single number (8080) or "8080".
type PortRange struct {
	First, Last uint16
}

// Len is the number of ports in the range.
func (r PortRange) Len() int {
	if r.Last < r.First {
		return 0
	}
	return int(r.Last) - int(r.First) + 1
}

// Contains reports whether port lies in the range.
func (r PortRange) Contains(port uint16) bool { return port >= r.First && port <= r.Last }

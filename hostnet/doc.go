// Package hostnet is vpnmasq's host plumbing: what it changes on the host
// around the TUN device, how it takes that back, and what it reads of the
// host to resolve the configuration against.
//
// Setup installs, in the network namespace of the calling thread:
//
//   - sysctls: net.ipv4.ip_forward=1; the TUN's rp_filter raised to loose
//     (2) when the effective mode is strict, since replies come out of the
//     TUN from WAN sources; the TUN's accept_local=1, since the router
//     writes packets from the host's own addresses into it; the TUN's
//     disable_ipv6=1, since vpnmasq routes IPv4 only. A setting that
//     already has the value is left alone.
//   - with Spec.UDPGRO ([tun] udp_gro), UDP GRO forwarding on the LAN
//     interfaces (a bridge's ports, where a bridge's GRO happens) and the WAN
//     interface: ethtool's rx-gro and rx-udp-gro-forwarding on, rx-gro-list
//     off, each only where it was not so already; an interface that cannot
//     is left alone (logged at info). The previous values come back at
//     Close.
//   - the TUN link up.
//   - nftables table ip vpnmasq_<tun>, the guards: guard_input drops what
//     arrives on the WAN for the NAT's ports and protocols on the WAN
//     address, before a host firewall could answer it, so that the host's
//     stack never resets a connection vpnmasq masquerades; guard_prerouting
//     drops what arrives on the WAN for the LAN prefixes, before conntrack,
//     so that the host never forwards a second copy of what vpnmasq routes.
//   - nftables table netdev vpnmasq_<tun>, hairpin: one ingress chain per
//     LAN interface that hands LAN packets for the WAN address's NAT ports
//     straight to the TUN.
//   - policy routing: a default route through the TUN in table tun.table,
//     and one rule per LAN interface (iif <lan> lookup <table>, priority
//     tun.rule_priority) that sends the LAN's packets there.
//
// Undoing: every object is recorded as it is added, and Host.Close removes
// them newest first, going on past failures; a sysctl is written back only
// if Setup changed it, and settings of the TUN go with the device. A
// failing Setup closes what it added. The objects are created
// exclusively, so a previous run's leftovers make Setup fail instead of
// being shared; CleanupStale removes them by name (TUN name, table and
// rule priority), and refuses while a process still has the TUN open,
// since then the instance is alive.
//
// A stop that leaves NAT state for the next start installs the hold
// (Host.Hold): table ip vpnmasq_<tun>_hold drops what the guards and the
// policy rules would have handled until the next start, for at most
// [state] hold, a bound the kernel keeps through timing-out set elements.
// The next start removes it once its own guards are in (ReleaseHold).
//
// While vpnmasq runs, a reload replaces the elements of the guards' port
// and protocol sets in one transaction (UpdateGuard), and a new WAN address
// the rules that name it (SetWANAddr: the input guard in one transaction,
// then each hairpin chain). The tables stay.
//
// ReadHost and ReadEphemeral only read: the interfaces, addresses and IPv4
// default route (netlink), the nameservers (/etc/resolv.conf) and the
// ephemeral ports (/proc/sys/net/ipv4) of the calling thread's namespace,
// into the config package's Host, which resolves a configuration.
package hostnet

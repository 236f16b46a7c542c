package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/nat"
)

// Spec is what Setup installs on the host around the TUN device.
type Spec struct {
	TUN           string // TUN device name (already created by the caller, exists)
	Table         int    // policy routing table for the TUN
	RulePriority  int
	LANInterfaces []string
	WANInterface  string
	// UDPGRO turns on UDP GRO forwarding on the LAN and WAN interfaces
	// while vpnmasq runs (gro_linux.go).
	UDPGRO bool
	// Guard is what the guards drop on the WAN side.
	Guard Guard
	// HairpinPorts are TCP/UDP ports on the WAN address that LAN hosts may
	// reach through vpnmasq (hairpin): mapping range + forwards.
	HairpinPorts []config.PortRange
	// HairpinProtocols are whole protocols hairpinned the same way (GRE/ESP
	// forwards).
	HairpinProtocols []uint8
	// Log receives one debug line per object added or removed.
	Log zerolog.Logger
}

// Validate reports the first thing that makes s unusable.
func (s Spec) Validate() error {
	if err := config.CheckInterfaceName(s.TUN); err != nil {
		return fmt.Errorf("host: TUN: %w", err)
	}
	if err := config.CheckTable(s.Table); err != nil {
		return fmt.Errorf("host: routing table: %w", err)
	}
	if err := config.CheckRulePriority(s.RulePriority); err != nil {
		return fmt.Errorf("host: rule priority: %w", err)
	}
	if err := config.CheckInterfaceName(s.WANInterface); err != nil {
		return fmt.Errorf("host: WAN: %w", err)
	}
	if len(s.LANInterfaces) == 0 {
		return errors.New("host: no LAN interface")
	}
	for _, lan := range s.LANInterfaces {
		if err := config.CheckInterfaceName(lan); err != nil {
			return fmt.Errorf("host: LAN: %w", err)
		}
		switch lan {
		case s.WANInterface:
			return fmt.Errorf("host: %s cannot be both LAN and WAN", lan)
		case s.TUN:
			return fmt.Errorf("host: the TUN %s cannot be a LAN interface", lan)
		}
	}
	if err := s.Guard.Validate(); err != nil {
		return fmt.Errorf("host: %w", err)
	}
	for _, r := range s.HairpinPorts {
		if r.Last < r.First {
			return fmt.Errorf("host: hairpin port range %d-%d is reversed", r.First, r.Last)
		}
	}
	for _, p := range s.HairpinProtocols {
		if p == nat.ProtoTCP || p == nat.ProtoUDP || p == nat.ProtoICMP {
			return fmt.Errorf("host: hairpin protocol %d cannot be owned as a whole", p)
		}
	}
	return nil
}

// Guard is what the guards drop on the WAN side: built from the same
// description as the WAN transport's capture filter, so that what vpnmasq
// reads from the WAN is what the host's own stack never handles.
type Guard struct {
	Addr netip.Addr // the WAN address
	// Ports are TCP and UDP destination ports on Addr owned by the NAT
	// (mapping range, forwards, IKE's 500 and 4500).
	Ports []config.PortRange
	// Protocols are IP protocols to Addr owned whole (47 GRE, 50 ESP, 51
	// AH). ICMP never is: the host keeps answering its own pings.
	Protocols []uint8
	// Prefixes are destinations (the LAN prefixes) whose packets arriving
	// on the WAN vpnmasq routes, so the host must not forward them too.
	Prefixes []netip.Prefix
}

// Validate reports the first thing that makes g unusable.
func (g Guard) Validate() error {
	if err := config.CheckWANClaim(g.Addr, g.Ports, g.Protocols, g.Prefixes); err != nil {
		return fmt.Errorf("guard: %w", err)
	}
	return nil
}

// Host is the plumbing Setup installed. It remembers the network
// namespace it was installed in, so Close may run on any thread.
type Host struct {
	log  zerolog.Logger
	ns   netns.NsHandle
	mu   sync.Mutex // guards undo and done: Close, Hold and the updates may come from any goroutine
	undo []hostUndo // in the order things were added
	done bool
	// ethtool is the socket that changed interface features, kept for
	// their restore: it addresses the namespace it was opened in.
	ethtool *ethtool.Ethtool
}

type hostUndo struct {
	what string
	fn   func() error
}

// Setup installs everything, in the network namespace of the calling
// thread: TUN link up, the TUN's default route in Table, one policy rule per
// LAN interface, IPv4 forwarding, loose reverse path filtering on the TUN,
// and the nftables guards and hairpin rules. On any failure it removes what
// it added and returns the error. Leftovers of a previous run make it fail
// (with EEXIST-style errors) rather than share objects: run CleanupStale
// first.
func Setup(s Spec) (*Host, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("host: opening the current network namespace: %w", err)
	}
	h := &Host{log: s.Log, ns: ns}
	if err := h.setup(s); err != nil {
		return nil, errors.Join(err, h.Close())
	}
	return h, nil
}

func (h *Host) added(what string, undo func() error) {
	h.undo = append(h.undo, hostUndo{what: what, fn: undo})
	h.log.Debug().Str("object", what).Msg("added")
}

// setup installs, in order: the sysctls (setupSysctls), the TUN link up,
// the nftables guards, and the policy routing (setupRouting). Each object
// registers its undo as soon as it exists, so that Close, which Setup
// calls on failure, removes exactly what was added.
func (h *Host) setup(s Spec) error {
	nl, err := netlinkAt(h.ns)
	if err != nil {
		return fmt.Errorf("host: netlink: %w", err)
	}
	defer nl.Close()

	tun, err := nl.LinkByName(s.TUN)
	if err != nil {
		return fmt.Errorf("host: TUN %s: %w", s.TUN, err)
	}
	if t, ok := tun.(*netlink.Tuntap); !ok || t.Mode != netlink.TUNTAP_MODE_TUN {
		return fmt.Errorf("host: %s is a %s device, not a TUN", s.TUN, tun.Type())
	}
	for _, lan := range s.LANInterfaces {
		if _, err := nl.LinkByName(lan); err != nil {
			return fmt.Errorf("host: LAN interface %s: %w", lan, err)
		}
	}

	if err := h.setupSysctls(s.TUN); err != nil {
		return err
	}
	if s.UDPGRO {
		ifaces, err := receivingInterfaces(nl, append(slices.Clone(s.LANInterfaces), s.WANInterface))
		if err != nil {
			return fmt.Errorf("host: %w", err)
		}
		h.setupUDPGRO(ifaces)
	}

	if err := nl.LinkSetUp(tun); err != nil {
		return fmt.Errorf("host: setting %s up: %w", s.TUN, err)
	}
	h.log.Debug().Str("object", "link "+s.TUN+" up").Msg("set")

	if err := installNft(int(h.ns), s.nft(tun.Attrs().Index)); err != nil {
		return fmt.Errorf("host: %w", err)
	}
	h.added("nftables tables ip+netdev "+nftTableName(s.TUN), func() error { return removeNft(int(h.ns), s.TUN) })

	return h.setupRouting(nl, s, tun.Attrs().Index)
}

// setupSysctls turns on IPv4 forwarding and makes the TUN accept what the
// router writes into it. A setting already as needed is left alone, and
// left as it is at Close too.
func (h *Host) setupSysctls(tun string) error {
	// Sysctls first: without forwarding nothing works, and a read-only
	// /proc/sys is the most likely failure in a container.
	fwd, err := ensureSysctl(sysctlIPForward, "1")
	if err != nil {
		return fmt.Errorf("host: enabling IPv4 forwarding: %w", err)
	}
	if fwd.restore != "" {
		h.added("sysctl net.ipv4.ip_forward=1 (was "+fwd.restore+")", fwd.undo)
	} else {
		fwd.undo() // already on: leave it, and leave it on at Close
		h.log.Debug().Msg("net.ipv4.ip_forward already 1, left as it is")
	}
	rp, err := ensureLooseRPFilter(tun)
	if err != nil {
		return fmt.Errorf("host: loose reverse path filter on %s: %w", tun, err)
	}
	if rp.restore != "" {
		h.added("sysctl "+dotted(sysctlRPFilterKey(tun))+"=2 (was "+rp.restore+")", rp.undo)
	} else {
		rp.undo()
		h.log.Debug().Str("device", tun).Msg("reverse path filter not strict, left as it is")
	}

	// The packet path writes packets into the TUN whose source is one of this
	// host's own addresses: ICMP errors from the router's LAN address, and
	// hairpinned packets from the WAN address. Without accept_local the
	// kernel drops them as martians. The setting dies with the device.
	if err := ensureAcceptLocal(tun); err != nil {
		return fmt.Errorf("host: accept_local on %s: %w", tun, err)
	}

	// vpnmasq routes IPv4 only. Without this the kernel sends its own IPv6
	// chatter (router solicitations, MLD) into the TUN as soon as it is up.
	// The setting dies with the device; where /proc/sys is read-only or
	// IPv6 is off, there is nothing to silence.
	if v6, err := ensureSysctl("net/ipv6/conf/"+tun+"/disable_ipv6", "1"); err == nil {
		v6.file.close()
	} else {
		h.log.Debug().Err(err).Str("device", tun).Msg("IPv6 left enabled on the TUN")
	}
	return nil
}

// setupRouting sends the LAN into the TUN: a default route through the
// TUN in the instance's table, and one rule per LAN interface looking that
// table up. A route or rule already there (EEXIST) is a previous run's
// leftover, which the error points at.
func (h *Host) setupRouting(nl *netlink.Handle, s Spec, tunIndex int) error {
	route := tunDefaultRoute(tunIndex, s.Table)
	if err := nl.RouteAdd(route); err != nil {
		return fmt.Errorf("host: adding route default dev %s table %d: %w%s", s.TUN, s.Table, err, staleHint(err))
	}
	h.added(fmt.Sprintf("route default dev %s table %d", s.TUN, s.Table), func() error {
		return h.withNetlink(func(nl *netlink.Handle) error { return ignoreGone(nl.RouteDel(route)) })
	})

	for _, lan := range s.LANInterfaces {
		rule := lanRule(lan, s.Table, s.RulePriority)
		if err := nl.RuleAdd(rule); err != nil {
			return fmt.Errorf("host: adding rule iif %s lookup %d priority %d: %w%s", lan, s.Table, s.RulePriority, err, staleHint(err))
		}
		h.added(fmt.Sprintf("rule iif %s lookup %d priority %d", lan, s.Table, s.RulePriority), func() error {
			return h.withNetlink(func(nl *netlink.Handle) error { return ignoreGone(nl.RuleDel(rule)) })
		})
	}
	return nil
}

// nft is the description of the instance's nftables objects.
func (s Spec) nft(tunIndex int) nftSpec {
	return nftSpec{
		tun:              s.TUN,
		tunIndex:         tunIndex,
		wan:              s.WANInterface,
		addr:             s.Guard.Addr,
		ports:            s.Guard.Ports,
		protocols:        s.Guard.Protocols,
		prefixes:         s.Guard.Prefixes,
		lans:             s.LANInterfaces,
		hairpinPorts:     s.HairpinPorts,
		hairpinProtocols: s.HairpinProtocols,
	}
}

// Hold installs the hold (nfthold_linux.go) for d: called by a stop that
// leaves state for a successor, before Close removes the guards, so that
// no packet finds neither.
func (h *Host) Hold(s Spec, d time.Duration) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done {
		return errors.New("host: already closed")
	}
	return installHold(int(h.ns), holdSpec{nftSpec: s.nft(0), hold: d})
}

// ReleaseHold deletes a hold a previous stop left, once this instance's
// guards are in place; it reports whether there was one.
func (h *Host) ReleaseHold(tun string) (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	present, err := holdPresent(int(h.ns), tun)
	if err != nil || !present {
		return false, err
	}
	return true, removeHold(int(h.ns), tun)
}

// Close removes everything Setup added, newest first, and keeps going
// past failures so one stuck object does not leave the rest behind. It is
// idempotent.
func (h *Host) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done {
		return nil
	}
	h.done = true
	var errs []error
	for _, u := range slices.Backward(h.undo) {
		if err := u.fn(); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", u.what, err))
			continue
		}
		h.log.Debug().Str("object", u.what).Msg("removed")
	}
	h.undo = nil
	if h.ethtool != nil {
		h.ethtool.Close()
	}
	errs = append(errs, h.ns.Close())
	return errors.Join(errs...)
}

func (h *Host) withNetlink(fn func(*netlink.Handle) error) error {
	nl, err := netlinkAt(h.ns)
	if err != nil {
		return err
	}
	defer nl.Close()
	return fn(nl)
}

func tunDefaultRoute(tunIndex, table int) *netlink.Route {
	return &netlink.Route{
		Family:    netlink.FAMILY_V4,
		LinkIndex: tunIndex,
		Table:     table,
		Scope:     netlink.SCOPE_LINK,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
	}
}

func lanRule(lan string, table, priority int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = netlink.FAMILY_V4
	r.IifName = lan
	r.Table = table
	r.Priority = priority
	return r
}

// ignoreGone treats an object that disappeared by itself (the TUN went
// away and took its route along) as removed.
func ignoreGone(err error) error {
	if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) {
		return nil
	}
	return err
}

func staleHint(err error) string {
	if errors.Is(err, unix.EEXIST) {
		return " (left by a previous run? CleanupStale removes it)"
	}
	return ""
}

// netlinkAt opens a netlink handle operating in ns. When ns is the calling
// thread's own namespace (always so for `vpnmasq run`), no setns(2) is done:
// entering a network namespace needs CAP_SYS_ADMIN even when it is the one
// the thread is already in, and a container runs vpnmasq with NET_ADMIN and
// NET_RAW only.
func netlinkAt(ns netns.NsHandle) (*netlink.Handle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if isCurrentNS(int(ns)) {
		return netlink.NewHandle()
	}
	return netlink.NewHandleAt(ns)
}

// isCurrentNS reports whether the namespace fd nsFd is the calling thread's
// network namespace; the caller keeps its goroutine on the thread until it
// has used the answer.
func isCurrentNS(nsFd int) bool {
	cur, err := netns.Get()
	if err != nil {
		return false
	}
	defer cur.Close()
	return cur.Equal(netns.NsHandle(nsFd))
}

package router

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/wan"
)

// HostSpec is what SetupHost installs on the host around the TUN device.
type HostSpec struct {
	TUN           string // TUN device name (already created by the caller, exists)
	Table         int    // policy routing table for the TUN
	RulePriority  int
	LANInterfaces []string
	WANInterface  string
	// Capture is what the input guard drops on the WAN side: the same
	// description the WAN transport's filter is built from.
	Capture wan.Capture
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
func (s HostSpec) Validate() error {
	if s.TUN == "" || len(s.TUN) >= unix.IFNAMSIZ {
		return fmt.Errorf("host: TUN name %q must have 1 to %d characters", s.TUN, unix.IFNAMSIZ-1)
	}
	switch {
	case s.Table <= 0:
		return fmt.Errorf("host: routing table %d: must be positive", s.Table)
	case s.Table == unix.RT_TABLE_DEFAULT || s.Table == unix.RT_TABLE_MAIN || s.Table == unix.RT_TABLE_LOCAL:
		return fmt.Errorf("host: routing table %d is one of the kernel's own (default, main, local); pick a free one", s.Table)
	}
	// 0 is the local table's rule and 32766/32767 main and default: ours
	// must come after local and before main.
	if s.RulePriority < 1 || s.RulePriority > 32765 {
		return fmt.Errorf("host: rule priority %d: must be between 1 and 32765 (after local, before main)", s.RulePriority)
	}
	if s.WANInterface == "" {
		return errors.New("host: no WAN interface")
	}
	if len(s.LANInterfaces) == 0 {
		return errors.New("host: no LAN interface")
	}
	for _, lan := range s.LANInterfaces {
		switch lan {
		case "":
			return errors.New("host: empty LAN interface name")
		case s.WANInterface:
			return fmt.Errorf("host: %s cannot be both LAN and WAN", lan)
		case s.TUN:
			return fmt.Errorf("host: the TUN %s cannot be a LAN interface", lan)
		}
	}
	c := s.Capture
	if c.Interface == "" {
		c.Interface = s.WANInterface
	}
	if c.Interface != s.WANInterface {
		return fmt.Errorf("host: capture interface %s is not the WAN interface %s", c.Interface, s.WANInterface)
	}
	if err := c.Validate(); err != nil {
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

// Host is the plumbing SetupHost installed. It remembers the network
// namespace it was installed in, so Close may run on any thread.
type Host struct {
	log  zerolog.Logger
	ns   netns.NsHandle
	mu   sync.Mutex
	undo []hostUndo // in the order things were added
	done bool
}

type hostUndo struct {
	what string
	fn   func() error
}

// SetupHost installs everything, in the network namespace of the calling
// thread: TUN link up, the TUN's default route in Table, one policy rule per
// LAN interface, IPv4 forwarding, loose reverse path filtering on the TUN,
// and the nftables guards and hairpin rules. On any failure it removes what
// it added and returns the error. Leftovers of a previous run make it fail
// (with EEXIST-style errors) rather than share objects: run CleanupStale
// first.
func SetupHost(s HostSpec) (*Host, error) {
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

func (h *Host) setup(s HostSpec) error {
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
	rp, err := ensureLooseRPFilter(s.TUN)
	if err != nil {
		return fmt.Errorf("host: loose reverse path filter on %s: %w", s.TUN, err)
	}
	if rp.restore != "" {
		h.added("sysctl "+dotted(sysctlRPFilterKey(s.TUN))+"=2 (was "+rp.restore+")", rp.undo)
	} else {
		rp.undo()
		h.log.Debug().Str("device", s.TUN).Msg("reverse path filter not strict, left as it is")
	}

	// The core writes packets into the TUN whose source is one of this
	// host's own addresses: ICMP errors from the router's LAN address, and
	// hairpinned packets from the WAN address. Without accept_local the
	// kernel drops them as martians. The setting dies with the device.
	if err := ensureAcceptLocal(s.TUN); err != nil {
		return fmt.Errorf("host: accept_local on %s: %w", s.TUN, err)
	}

	// vpnmasq routes IPv4 only. Without this the kernel sends its own IPv6
	// chatter (router solicitations, MLD) into the TUN as soon as it is up.
	// The setting dies with the device; where /proc/sys is read-only or
	// IPv6 is off, there is nothing to silence.
	if v6, err := ensureSysctl("net/ipv6/conf/"+s.TUN+"/disable_ipv6", "1"); err == nil {
		v6.file.close()
	} else {
		h.log.Debug().Err(err).Str("device", s.TUN).Msg("IPv6 left enabled on the TUN")
	}

	if err := nl.LinkSetUp(tun); err != nil {
		return fmt.Errorf("host: setting %s up: %w", s.TUN, err)
	}
	h.log.Debug().Str("object", "link "+s.TUN+" up").Msg("set")

	if err := installNft(int(h.ns), s.nft(tun.Attrs().Index)); err != nil {
		return fmt.Errorf("host: %w", err)
	}
	h.added("nftables tables ip+netdev "+nftTableName(s.TUN), func() error { return removeNft(int(h.ns), s.TUN) })

	route := tunDefaultRoute(tun.Attrs().Index, s.Table)
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
func (s HostSpec) nft(tunIndex int) nftSpec {
	return nftSpec{
		tun:              s.TUN,
		tunIndex:         tunIndex,
		wan:              s.WANInterface,
		addr:             s.Capture.Addr,
		ports:            s.Capture.Ports,
		protocols:        s.Capture.Protocols,
		prefixes:         s.Capture.Prefixes,
		lans:             s.LANInterfaces,
		hairpinPorts:     s.HairpinPorts,
		hairpinProtocols: s.HairpinProtocols,
	}
}

// Hold installs the hold (nfthold_linux.go) for d: called by a stop that
// leaves state for a successor, before Close removes the guards, so that
// no packet finds neither.
func (h *Host) Hold(s HostSpec, d time.Duration) error {
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

// Close removes everything SetupHost added, newest first, and keeps going
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

// CleanupStale removes what a previous run with the same TUN name, table
// and rule priority left behind after dying without Close (kill -9), in the
// network namespace of the calling thread: rules with that priority and
// table, routes in that table, the instance's nftables tables, and the TUN
// link itself if it is a TUN device nobody has open (a persistent one). It
// never deletes a link of that name that is not a TUN, and refuses to touch
// anything while the TUN is attached to a process: then the instance is
// alive, not stale. Call it before creating the TUN.
func CleanupStale(s HostSpec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	ns, err := netns.Get()
	if err != nil {
		return fmt.Errorf("cleanup: opening the current network namespace: %w", err)
	}
	defer ns.Close()
	nl, err := netlinkAt(ns)
	if err != nil {
		return fmt.Errorf("cleanup: netlink: %w", err)
	}
	defer nl.Close()
	log := s.Log

	var deleteTUN netlink.Link
	switch link, err := nl.LinkByName(s.TUN); {
	case errors.As(err, new(netlink.LinkNotFoundError)):
	case err != nil:
		return fmt.Errorf("cleanup: looking up %s: %w", s.TUN, err)
	default:
		t, ok := link.(*netlink.Tuntap)
		switch {
		case !ok || t.Mode != netlink.TUNTAP_MODE_TUN:
			log.Debug().Str("link", s.TUN).Str("type", link.Type()).Msg("not a TUN device, left alone")
		default:
			inUse, err := tunInUse(t)
			if err != nil {
				return fmt.Errorf("cleanup: checking whether TUN %s is in use: %w", s.TUN, err)
			}
			if inUse {
				return fmt.Errorf("cleanup: TUN %s is open by a running process (another instance?); not removing anything", s.TUN)
			}
			deleteTUN = link
		}
	}

	var errs []error
	rules, err := listWithRetry(func() ([]netlink.Rule, error) {
		return nl.RuleListFiltered(netlink.FAMILY_V4, &netlink.Rule{Table: s.Table, Priority: s.RulePriority}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PRIORITY)
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("cleanup: listing rules: %w", err))
	}
	for _, r := range rules {
		if err := ignoreGone(nl.RuleDel(&r)); err != nil {
			errs = append(errs, fmt.Errorf("cleanup: deleting rule %s: %w", r, err))
			continue
		}
		log.Debug().Str("object", fmt.Sprintf("rule iif %s lookup %d priority %d", r.IifName, r.Table, r.Priority)).Msg("removed stale")
	}

	routes, err := listWithRetry(func() ([]netlink.Route, error) {
		return nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: s.Table}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("cleanup: listing routes of table %d: %w", s.Table, err))
	}
	for _, r := range routes {
		if err := ignoreGone(nl.RouteDel(&r)); err != nil {
			errs = append(errs, fmt.Errorf("cleanup: deleting route %s: %w", r, err))
			continue
		}
		log.Debug().Str("object", fmt.Sprintf("route %s table %d", r.Dst, r.Table)).Msg("removed stale")
	}

	present, err := nftTablesPresent(int(ns), s.TUN)
	if err != nil {
		errs = append(errs, fmt.Errorf("cleanup: listing nftables tables: %w", err))
	} else if len(present) > 0 {
		if err := removeNft(int(ns), s.TUN); err != nil {
			errs = append(errs, fmt.Errorf("cleanup: %w", err))
		} else {
			log.Debug().Str("object", "nftables "+strings.Join(present, ", ")).Msg("removed stale")
		}
	}

	if deleteTUN != nil {
		if err := ignoreGone(nl.LinkDel(deleteTUN)); err != nil {
			errs = append(errs, fmt.Errorf("cleanup: deleting TUN %s: %w", s.TUN, err))
		} else {
			log.Debug().Str("object", "link "+s.TUN).Msg("removed stale")
		}
	}
	return errors.Join(errs...)
}

// listWithRetry repeats a netlink dump the kernel interrupted because the
// list changed meanwhile.
func listWithRetry[T any](list func() ([]T, error)) ([]T, error) {
	var err error
	for range 3 {
		var out []T
		out, err = list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, err
}

// tunInUse reports whether a process has the TUN open. The kernel deletes
// a non-persistent TUN with its last file descriptor, so one that exists is
// in use; a persistent one is in use when it has queues attached, which the
// kernel reports as a queue count for multi-queue devices and as carrier
// (on while attached) for the others.
func tunInUse(t *netlink.Tuntap) (bool, error) {
	if t.NonPersist || t.Queues > 0 {
		return true, nil
	}
	// vishvananda/netlink does not decode IFLA_CARRIER: ask for the link
	// again and read it from the raw attributes.
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(t.Index)
	req.AddData(msg)
	replies, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return false, err
	}
	for _, reply := range replies {
		if len(reply) < unix.SizeofIfInfomsg {
			continue
		}
		attrs, err := nl.ParseRouteAttr(reply[unix.SizeofIfInfomsg:])
		if err != nil {
			return false, err
		}
		for _, a := range attrs {
			if a.Attr.Type == unix.IFLA_CARRIER && len(a.Value) > 0 {
				return a.Value[0] != 0, nil
			}
		}
	}
	return false, nil
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

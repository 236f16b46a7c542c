package hostnet

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// CleanupStale removes what a previous run with the same TUN name, table
// and rule priority left behind after dying without Close (kill -9), in the
// network namespace of the calling thread: rules with that priority and
// table, routes in that table, the instance's nftables tables, and the TUN
// link itself if it is a TUN device nobody has open (a persistent one). It
// never deletes a link of that name that is not a TUN, and refuses to touch
// anything while the TUN is attached to a process: then the instance is
// alive, not stale. Call it before creating the TUN.
func CleanupStale(s Spec) error {
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

	// The TUN decides whether the instance is dead at all: look at it
	// before removing anything, delete it last.
	staleTUN, err := findStaleTUN(nl, s)
	if err != nil {
		return err
	}
	errs := removeStaleRouting(nl, s)
	if err := removeStaleNft(int(ns), s); err != nil {
		errs = append(errs, err)
	}
	if staleTUN != nil {
		if err := ignoreGone(nl.LinkDel(staleTUN)); err != nil {
			errs = append(errs, fmt.Errorf("cleanup: deleting TUN %s: %w", s.TUN, err))
		} else {
			s.Log.Debug().Str("object", "link "+s.TUN).Msg("removed stale")
		}
	}
	return errors.Join(errs...)
}

// findStaleTUN returns the link named s.TUN when it is a TUN device nobody
// has open, nil when there is no such link or it is not a TUN (which is
// not vpnmasq's to delete), and an error when a process has the TUN open:
// then its instance is alive and nothing may be removed.
func findStaleTUN(nl *netlink.Handle, s Spec) (netlink.Link, error) {
	link, err := nl.LinkByName(s.TUN)
	switch {
	case errors.As(err, new(netlink.LinkNotFoundError)):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("cleanup: looking up %s: %w", s.TUN, err)
	}
	t, ok := link.(*netlink.Tuntap)
	if !ok || t.Mode != netlink.TUNTAP_MODE_TUN {
		s.Log.Debug().Str("link", s.TUN).Str("type", link.Type()).Msg("not a TUN device, left alone")
		return nil, nil
	}
	inUse, err := tunInUse(t)
	if err != nil {
		return nil, fmt.Errorf("cleanup: checking whether TUN %s is in use: %w", s.TUN, err)
	}
	if inUse {
		return nil, fmt.Errorf("cleanup: TUN %s is open by a running process (another instance?); not removing anything", s.TUN)
	}
	return link, nil
}

// removeStaleRouting deletes the rules with the instance's table and
// priority and the routes of its table, going on past failures.
func removeStaleRouting(nl *netlink.Handle, s Spec) []error {
	var errs []error
	rules, err := retryInterrupted(func() ([]netlink.Rule, error) {
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
		s.Log.Debug().Str("object", fmt.Sprintf("rule iif %s lookup %d priority %d", r.IifName, r.Table, r.Priority)).Msg("removed stale")
	}

	routes, err := retryInterrupted(func() ([]netlink.Route, error) {
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
		s.Log.Debug().Str("object", fmt.Sprintf("route %s table %d", r.Dst, r.Table)).Msg("removed stale")
	}
	return errs
}

// removeStaleNft deletes the instance's guard and hairpin tables. The hold
// table stays: it is the dead instance's last word to its successor, and
// the successor removes it once its own guards are in place.
func removeStaleNft(nsFd int, s Spec) error {
	present, err := nftTablesPresent(nsFd, s.TUN)
	if err != nil {
		return fmt.Errorf("cleanup: listing nftables tables: %w", err)
	}
	if len(present) == 0 {
		return nil
	}
	if err := removeNft(nsFd, s.TUN); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	s.Log.Debug().Str("object", "nftables "+strings.Join(present, ", ")).Msg("removed stale")
	return nil
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

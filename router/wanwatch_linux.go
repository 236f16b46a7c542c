package router

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/hostnet"
)

// Following the WAN interface. The router watches its own network
// namespace through netlink (address, link and route updates) and, after a
// burst of updates settled (wanDebounce), reads the interfaces and the
// default route again and compares them with what it runs on (planWAN):
//
//   - A new address on the WAN interface, when wan.address was not written
//     in the configuration and the address in use is gone: the capture
//     filter and the nftables rules that name the address are replaced,
//     the engine drops the state bound to the old address
//     (nat.SetWANAddr), and the next-hop cache is emptied. The packet path, the ICMP
//     errors and the admin snapshot read the address from the engine.
//   - A configured wan.address that disappears: logged loudly and kept.
//   - The WAN link going down and up: the state is kept; the capture
//     socket stays bound and resumes (its one ENETDOWN is skipped).
//   - The WAN interface recreated (another index), the default route moved
//     to another interface (embedded default), LAN prefixes that changed:
//     logged loudly, not applied; a restart follows them.
//
// A slow poll (wanPoll) catches what a lost netlink message would miss.

const (
	wanDebounce = 150 * time.Millisecond
	wanPoll     = 5 * time.Second
)

// wanPolicy is what the router runs on, as the watcher compares it.
type wanPolicy struct {
	iface         string
	index         int  // the WAN interface's index at start
	followAddr    bool // wan.address came from the host: follow it
	followDefault bool // wan.interface came from the default route
	lanPrefixes   map[string][]netip.Prefix
}

// wanPlan is what planWAN decided.
type wanPlan struct {
	// NewAddr, when valid, is the address to move to.
	NewAddr netip.Addr
	// Gone: the interface is missing; Recreated: it came back with
	// another index (the capture socket is bound to the old one).
	Gone, Recreated bool
	// Up is the interface's administrative state.
	Up bool
	// Lost: the address in use is no longer on the interface and is kept
	// (pinned by the configuration, or no other address to take).
	Lost bool
	// DefaultMoved names the interface the default route moved to when
	// the WAN interface came from the default route.
	DefaultMoved string
	// LANChanged describes LAN interfaces whose prefixes changed.
	LANChanged []string
}

// planWAN compares the host with the policy and the address in use.
func planWAN(p wanPolicy, cur netip.Addr, h *config.Host) wanPlan {
	var pl wanPlan
	wan, ok := h.Interface(p.iface)
	if !ok {
		pl.Gone = true
	} else {
		pl.Up = wan.Up
		pl.Recreated = p.index != 0 && wan.Index != p.index
		present := slices.ContainsFunc(wan.Prefixes, func(q netip.Prefix) bool { return q.Addr() == cur })
		switch {
		case present:
		case p.followAddr && len(wan.Prefixes) > 0:
			pl.NewAddr = wan.Prefixes[0].Addr()
		default:
			pl.Lost = true
		}
	}
	if p.followDefault && h.DefaultRouteInterface != "" && h.DefaultRouteInterface != p.iface {
		pl.DefaultMoved = h.DefaultRouteInterface
	}
	names := make([]string, 0, len(p.lanPrefixes))
	for name := range p.lanPrefixes {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		was := p.lanPrefixes[name]
		var now []netip.Prefix
		if li, ok := h.Interface(name); ok {
			now = li.Prefixes
		}
		if !slices.Equal(sortedPrefixes(was), sortedPrefixes(now)) {
			pl.LANChanged = append(pl.LANChanged, fmt.Sprintf("%s: %s → %s", name, prefixList(was), prefixList(now)))
		}
	}
	return pl
}

func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := slices.Clone(ps)
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
}

func prefixList(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "none"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// wanWatcher follows the WAN interface (see above).
type wanWatcher struct {
	r      *Router
	policy wanPolicy
	last   wanPlan // what was logged, to log each change once
}

// newWANWatcher takes the policy from the configuration and the host as
// the router started on it.
func (r *Router) newWANWatcher(h *config.Host) *wanWatcher {
	p := wanPolicy{
		iface:         r.cfg.WAN.Interface,
		followAddr:    r.cfg.WAN.AddressFromHost,
		followDefault: r.cfg.WAN.InterfaceFromHost,
		lanPrefixes:   make(map[string][]netip.Prefix),
	}
	if wi, ok := h.Interface(p.iface); ok {
		p.index = wi.Index
	}
	for _, name := range r.cfg.LAN.Interfaces {
		if li, ok := h.Interface(name); ok {
			p.lanPrefixes[name] = slices.Clone(li.Prefixes)
		}
	}
	return &wanWatcher{r: r, policy: p, last: wanPlan{Up: true}}
}

// run watches until done is closed.
func (w *wanWatcher) run(done <-chan struct{}) {
	log := w.r.log.With().Str("component", "wanwatch").Logger()
	events := make(chan struct{}, 1)
	poke := func() {
		select {
		case events <- struct{}{}:
		default:
		}
	}
	subscribe := func() error {
		addrs := make(chan netlink.AddrUpdate, 64)
		links := make(chan netlink.LinkUpdate, 64)
		routes := make(chan netlink.RouteUpdate, 64)
		onErr := func(err error) { log.Debug().Err(err).Msg("netlink subscription") }
		// No namespace option: the subscriptions open their sockets in
		// the router's own namespace without setns, which would need
		// CAP_SYS_ADMIN.
		if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
			return fmt.Errorf("address updates: %w", err)
		}
		if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
			return fmt.Errorf("link updates: %w", err)
		}
		if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
			return fmt.Errorf("route updates: %w", err)
		}
		go func() {
			for range addrs {
				poke()
			}
		}()
		go func() {
			for range links {
				poke()
			}
		}()
		go func() {
			for range routes {
				poke()
			}
		}()
		return nil
	}
	if err := subscribe(); err != nil {
		log.Warn().Err(err).Dur("poll", wanPoll).Msg("cannot watch the WAN interface through netlink; polling it instead")
	}
	poll := time.NewTicker(wanPoll)
	defer poll.Stop()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	for {
		select {
		case <-done:
			return
		case <-events:
			// A burst of updates (address added, old one removed,
			// routes following) settles before the host is read.
			debounce.Reset(wanDebounce)
		case <-debounce.C:
			w.check()
		case <-poll.C:
			w.check()
		}
	}
}

// check reads the host and acts on what changed.
func (w *wanWatcher) check() {
	log := w.r.log
	h, err := hostnet.ReadHost()
	if err != nil {
		log.Debug().Err(err).Msg("wanwatch: reading the host")
		return
	}
	cur := netip.AddrFrom4(w.r.nat.WANAddr())
	pl := planWAN(w.policy, cur, h)
	last := w.last
	w.last = pl
	iface := w.policy.iface
	if pl.Gone && !last.Gone {
		log.Warn().Str("wan", iface).Msg("WAN interface is gone; keeping the state until it returns")
	}
	if pl.Recreated && !last.Recreated {
		log.Error().Str("wan", iface).Msg("WAN interface was recreated (new index): the capture socket is bound to the old one; restart vpnmasq")
	}
	if !pl.Gone && pl.Up != last.Up {
		if pl.Up {
			log.Info().Str("wan", iface).Msg("WAN link up: resuming with the state kept")
			if w.r.wan != nil {
				w.r.wan.FlushNexthops()
			}
		} else {
			log.Warn().Str("wan", iface).Msg("WAN link down: state kept")
		}
	}
	if pl.Lost && !last.Lost {
		if w.policy.followAddr {
			log.Warn().Str("wan", iface).Stringer("wan_addr", cur).
				Msg("WAN interface has no IPv4 address; keeping the old one until a new one appears")
		} else {
			log.Error().Str("wan", iface).Stringer("wan_addr", cur).
				Msg("the configured wan.address is no longer on the WAN interface; keeping it (remove wan.address from the configuration to follow the interface)")
		}
	}
	if pl.DefaultMoved != "" && pl.DefaultMoved != last.DefaultMoved {
		log.Error().Str("wan", iface).Str("default_route", pl.DefaultMoved).
			Msg("the default route moved to another interface; vpnmasq keeps its WAN interface: restart it to follow")
	}
	if !slices.Equal(pl.LANChanged, last.LANChanged) {
		for _, c := range pl.LANChanged {
			log.Error().Str("change", c).
				Msg("LAN interface prefixes changed; not applied (routing and capture still use the old ones): restart vpnmasq")
		}
	}
	if pl.NewAddr.IsValid() {
		if err := w.r.setWANAddr(pl.NewAddr); err != nil {
			log.Error().Err(err).Stringer("wan_addr", pl.NewAddr).Msg("following the new WAN address")
		}
	}
}

// setWANAddr moves the router to a new WAN address: the capture filter and
// the nftables rules first, so that the answers to the first packets from
// the new address reach the engine rather than the host's stack (which
// would reset them), then the engine (the packet path reads the address from it),
// then the next-hop cache.
func (r *Router) setWANAddr(a netip.Addr) error {
	// A reload rewrites the capture ports and the guard's sets from
	// r.spec: the two never run at once, and the spec keeps the address.
	r.reload.mu.Lock()
	defer r.reload.mu.Unlock()
	r.capture.Addr = a
	r.spec.Guard.Addr = a
	start := time.Now()
	var errs []error
	if r.wan != nil {
		errs = append(errs, r.wan.SetCaptureAddr(a))
	}
	if r.host != nil {
		errs = append(errs, r.host.SetWANAddr(r.spec))
	}
	r.nat.SetWANAddr(a)
	if r.wan != nil {
		r.wan.FlushNexthops()
	}
	err := errors.Join(errs...)
	r.log.Info().Stringer("wan_addr", a).Dur("took", time.Since(start)).Bool("ok", err == nil).
		Msg("WAN address followed: capture filter and nftables rules replaced")
	return err
}

// Package router is vpnmasq's composition root: it builds the NAT engine,
// the packet path (package datapath), the TUN device (tundev), the WAN
// transport (wan), the host plumbing and the services from a
// configuration, starts them, reloads them and stops them. It keeps the
// state file and follows the WAN address.
//
// One packet's way from the LAN to the WAN, in the packages: the kernel
// forwards a LAN host's packet into the TUN (policy rule "iif <lan> lookup
// <table>", default route dev TUN) → datapath reads it (tundev), decides,
// calls nat.Engine.Outbound and writes it out through wan as an Ethernet
// frame to the next hop, or through a raw IPv4 socket while the neighbour is
// not resolved. The reply: wan's AF_PACKET capture (kernel BPF filter: the
// WAN address on NAT-owned ports and protocols, or a LAN prefix) →
// datapath → nat.Engine.Inbound → the TUN, and the kernel forwards it to the
// LAN host. The nftables input guard drops the host's own copy of those
// packets, so the host never answers them with RST or ICMP unreachable.
// datapath/path.go lists the stages in order.
package router

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/vpnmasq/vpnmasq/admin"
	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/datapath"
	"github.com/vpnmasq/vpnmasq/hostnet"
	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/tundev"
	"github.com/vpnmasq/vpnmasq/wan"
)

// Router is one running vpnmasq instance.
type Router struct {
	cfg      *config.Config
	log      zerolog.Logger
	path     *datapath.Path
	nat      *nat.Engine
	spec     hostnet.Spec
	capture  wan.Capture // what the WAN transport reads; spec.Guard mirrors it
	tunMTU   int
	tun      *tundev.Device
	wan      *wan.Transport
	host     *hostnet.Host
	services *services
	wg       sync.WaitGroup
	closing  chan struct{}
	wanBad   uint64 // truncated+malformed captures already counted
	reload   reloadState
	watch    *wanWatcher
	state    routerState
	// history is the ring of samples behind the status page's graphs;
	// Run records one every admin.HistoryInterval.
	history *admin.History
	// owned are the ports the capture and the guard take on the WAN
	// address (the NAT range, IKE's, the forwards'); the DNS forwarder's
	// upstream sockets stay off them. A reload replaces them.
	owned atomic.Pointer[[]config.PortRange]
}

// New prepares a router from a resolved configuration. It changes nothing on
// the host; Start does.
func New(cfg *config.Config, h *config.Host, log zerolog.Logger) (*Router, error) {
	wanIf, ok := h.Interface(cfg.WAN.Interface)
	if !ok {
		return nil, fmt.Errorf("wan.interface: no interface %q", cfg.WAN.Interface)
	}
	r := &Router{cfg: cfg, log: log, closing: make(chan struct{}), history: admin.NewHistory(admin.HistorySamples)}

	// The NAT owns its mapping range and, for IKE and NAT-T, UDP 500 and
	// 4500 on the WAN address (a LAN host's IKE keeps port 500), and the
	// forwards' ports; the capture and the guards follow (reload.go builds
	// the same for a reload).
	nc, ports, hairpinProtos, err := engineConfig(cfg)
	if err != nil {
		return nil, err
	}
	r.owned.Store(&ports)
	protocols := []uint8{nat.ProtoGRE, nat.ProtoESP, nat.ProtoAH}
	nc.Clock = nat.SystemClock{}
	nc.Log = log.With().Str("component", "nat").Logger()
	r.nat = nat.New(nc)

	lanAddrs, tunMTU, err := lanLinks(cfg, h, wanIf.MTU)
	if err != nil {
		return nil, err
	}
	r.tunMTU = tunMTU
	wanMTU := cfg.WAN.MTU
	if wanMTU == 0 {
		wanMTU = wanIf.MTU
	}
	r.path = datapath.New(datapath.Config{
		NAT:            r.nat,
		LAN:            cfg.LAN.Prefixes,
		NoNAT:          cfg.Routing.NoNAT,
		Service:        cfg.Services.Address,
		WANMTU:         wanMTU,
		LANAddrs:       lanAddrs,
		ICMPErrorRate:  cfg.Limits.ICMPErrorRate,
		ICMPErrorBurst: cfg.Limits.ICMPErrorBurst,
		Routed:         routedTimeouts(cfg),
		Log:            log,
	})
	capture := wan.Capture{
		Interface: cfg.WAN.Interface,
		Addr:      cfg.WAN.Address,
		Ports:     ports,
		Protocols: protocols,
		ICMP:      true,
		Prefixes:  cfg.LAN.Prefixes,
	}
	r.capture = capture
	r.spec = hostnet.Spec{
		TUN:           cfg.TUN.Name,
		Table:         cfg.TUN.Table,
		RulePriority:  cfg.TUN.RulePriority,
		LANInterfaces: cfg.LAN.Interfaces,
		WANInterface:  cfg.WAN.Interface,
		UDPGRO:        cfg.TUN.UDPGRO,
		// The guards keep the host's stack off what the capture reads.
		Guard: hostnet.Guard{
			Addr:      capture.Addr,
			Ports:     capture.Ports,
			Protocols: capture.Protocols,
			Prefixes:  capture.Prefixes,
		},
		HairpinPorts:     ports,
		HairpinProtocols: hairpinProtos,
		Log:              log.With().Str("component", "host").Logger(),
	}
	r.watch = r.newWANWatcher(h)
	return r, nil
}

// lanLinks returns the router's own addresses on the LAN interfaces and
// the TUN's MTU: the largest of the LAN and WAN interfaces', since the TUN
// must take whatever the LAN delivers; the WAN MTU is enforced by the
// packet path, which answers with Fragmentation Needed.
func lanLinks(cfg *config.Config, h *config.Host, wanMTU int) (addrs []netip.Prefix, tunMTU int, err error) {
	tunMTU = wanMTU
	for _, name := range cfg.LAN.Interfaces {
		li, ok := h.Interface(name)
		if !ok {
			return nil, 0, fmt.Errorf("lan.interfaces: no interface %q", name)
		}
		addrs = append(addrs, li.Prefixes...)
		tunMTU = max(tunMTU, li.MTU)
	}
	return addrs, tunMTU, nil
}

// Engine is the router's NAT engine (for status and tables).
func (r *Router) Engine() *nat.Engine { return r.nat }

// Stats are the router's traffic counters.
func (r *Router) Stats() *datapath.Stats { return r.path.Stats() }

// Drops returns every drop counter that is not zero, router and engine
// together, by reason name.
func (r *Router) Drops() map[string]uint64 {
	out := make(map[string]uint64)
	for _, reason := range nat.AllDropReasons() {
		if n := r.path.Drops().Get(reason) + r.nat.Drops.Get(reason); n > 0 {
			out[reason.String()] = n
		}
	}
	return out
}

// Start removes what a previous run may have left, then creates the TUN,
// opens the WAN transport and installs the host plumbing. On failure it
// undoes what it did.
func (r *Router) Start() error {
	r.restoreState()
	if err := hostnet.CleanupStale(r.spec); err != nil {
		return fmt.Errorf("removing leftovers of a previous run: %w", err)
	}
	if err := r.openDevices(); err != nil {
		return err
	}
	var err error
	if r.host, err = hostnet.Setup(r.spec); err != nil {
		r.wan.Close()
		r.tun.Close()
		return fmt.Errorf("setting up host routing: %w", err)
	}
	// Our guards are in: the previous stop's hold has done its job.
	if released, err := r.host.ReleaseHold(r.spec.TUN); err != nil {
		r.log.Warn().Err(err).Str("table", "ip "+hostnet.HoldTableName(r.spec.TUN)).Msg("hold of the previous stop not removed")
	} else if released {
		r.log.Info().Str("table", "ip "+hostnet.HoldTableName(r.spec.TUN)).Msg("hold of the previous stop released")
	}
	if err := r.startServices(); err != nil {
		r.host.Close()
		r.wan.Close()
		r.tun.Close()
		return err
	}
	return nil
}

// openDevices creates the TUN and opens the WAN transport, and gives them
// to the packet path.
func (r *Router) openDevices() error {
	dev, err := tundev.Open(r.cfg.TUN.Name, r.tunMTU)
	if err != nil {
		return fmt.Errorf("creating TUN %q: %w", r.cfg.TUN.Name, err)
	}
	r.tun = dev
	// Super-packets from the WAN go to the TUN whole only when it takes
	// them; wire packets leave as frames wherever the next hop is known.
	opts := wan.Options{KeepSuperPackets: dev.SuperPackets(), KeepUDPSuperPackets: dev.UDPSuperPackets(), Frames: true}
	if r.wan, err = wan.Open(r.capture, opts); err != nil {
		r.tun.Close()
		return fmt.Errorf("opening WAN transport on %s: %w", r.cfg.WAN.Interface, err)
	}
	r.path.Attach(datapath.Devices{TUN: r.tun, WAN: r.wan, Closed: r.closed})
	return nil
}

// Run moves packets until ctx is done, then tears everything down.
func (r *Router) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	r.wg.Add(3)
	go func() { defer r.wg.Done(); errc <- r.path.RunLAN() }()
	go func() { defer r.wg.Done(); errc <- r.path.RunWAN() }()
	go func() { defer r.wg.Done(); r.watch.run(r.closing) }()
	r.startStateSaver()
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	var runErr error
	var lastDrops map[string]uint64
	lastReport := time.Now()
	// The graphs' samples come from the ticker's goroutine, never from the
	// packet path; the first one now, so that the page has a line after
	// one interval.
	r.history.Record(r.Snapshot())
	lastSample := time.Now()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-errc:
			runErr = err
			break loop
		case now := <-ticker.C:
			r.nat.Expire()
			r.path.Expire()
			r.pollWANStats()
			if now.Sub(lastReport) >= 10*time.Second {
				lastReport = now
				lastDrops = r.reportDrops(lastDrops)
			}
			if now.Sub(lastSample) >= admin.HistoryInterval {
				lastSample = now
				r.history.Record(r.Snapshot())
			}
		}
	}
	r.pollWANStats()
	closeErr := r.Close()
	r.reportDrops(lastDrops) // the final count, so a short run's drops are not lost
	return errors.Join(runErr, closeErr)
}

// pollWANStats moves the WAN transport's own drop counts into the drop
// counters: packets the kernel dropped because the capture socket's buffer
// was full (PACKET_STATISTICS, reset by each read), and captured packets
// the transport refused as truncated or malformed.
func (r *Router) pollWANStats() {
	if r.wan == nil {
		return
	}
	s, err := r.wan.Stats()
	if err != nil {
		return
	}
	r.path.Drops().AddN(nat.DropWANOverflow, s.KernelDrops)
	bad := s.Truncated + s.Malformed
	r.path.Drops().AddN(nat.DropMalformed, bad-r.wanBad)
	r.wanBad = bad
}

// reportDrops logs the drop counters at info when they changed, one line
// for all reasons, so a flood is summarised instead of logged per packet.
func (r *Router) reportDrops(last map[string]uint64) map[string]uint64 {
	now := r.Drops()
	changed := len(now) != len(last)
	for k, v := range now {
		if last[k] != v {
			changed = true
		}
	}
	if changed {
		ev := r.log.Info()
		for k, v := range now {
			ev = ev.Uint64(k, v)
		}
		ev.Msg("drops")
	}
	return now
}

// Close stops the packet loops and removes everything Start added.
func (r *Router) Close() error {
	select {
	case <-r.closing:
		return nil
	default:
	}
	close(r.closing)
	var errs []error
	if r.services != nil {
		errs = append(errs, r.services.close())
	}
	if r.host != nil {
		r.holdForSuccessor()
		errs = append(errs, r.host.Close())
	}
	if r.wan != nil {
		errs = append(errs, r.wan.Close())
	}
	if r.tun != nil {
		errs = append(errs, r.tun.Close())
	}
	r.wg.Wait()
	r.saveStateOnClose() // the loops stopped: the final state
	return errors.Join(errs...)
}

// closed reports whether an I/O error just means Close was called.
func (r *Router) closed(err error) bool {
	select {
	case <-r.closing:
		return true
	default:
	}
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}

// ownsPort reports whether port is one of the router's on the WAN address:
// a host socket bound to it would never see its answers.
func (r *Router) ownsPort(port uint16) bool {
	owned := r.owned.Load()
	if owned == nil {
		return false
	}
	for _, p := range *owned {
		if p.Contains(port) {
			return true
		}
	}
	return false
}

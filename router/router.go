// Package router is vpnmasq's packet path and everything that touches the
// host: the TUN device that captures LAN traffic, the WAN transport (raw
// socket out, AF_PACKET capture in), the policy routing and nftables guards,
// and the routing core that decides per packet and calls the NAT engine.
//
// One packet's way from LAN to WAN: the kernel forwards a LAN host's packet
// into the TUN (policy rule "iif <lan> lookup <table>", default route dev
// TUN) → tunLoop reads a batch from the TUN's file, each packet whole with
// its virtio-net header (tunio_linux.go) → core.fromTUN keeps a TCP
// super-packet whole or splits it (gso.go) → core.fromLAN parses it once
// into a nat.Packet and decides (masquerade, route unchanged, local, drop)
// → nat.Engine.Outbound rewrites it in place → outbox queues it → one
// batched WAN.Write (or WriteGSO) sends the batch as Ethernet frames to the
// next hop's link address through an AF_PACKET socket, or through a raw
// IPv4 socket while the neighbour is not resolved (the host kernel then
// routes it and resolves the neighbour). The reply: the WAN transport's
// AF_PACKET socket (kernel BPF filter: the WAN address on NAT-owned ports and
// protocols, or a LAN prefix) hands it to wanLoop → core.fromWAN →
// nat.Engine.Inbound → TUN.Write, and the kernel forwards it to the LAN host.
// The nftables input guard drops the host's own copy of those packets, so the
// host never answers them with RST or ICMP unreachable.
package router

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/hostnet"
	"github.com/vpnmasq/vpnmasq/nat"
)

// packetOffset is the headroom before every packet in every buffer: the TUN
// needs room for its virtio-net header (10 bytes), and using the same
// headroom on the WAN side lets a buffer move between the sides uncopied.
const packetOffset = 16

// maxPacket is the largest IPv4 packet.
const maxPacket = 65535

// Router is one running vpnmasq instance.
type Router struct {
	cfg      *config.Config
	log      zerolog.Logger
	core     core
	nat      *nat.Engine
	spec     hostnet.Spec
	capture  Capture // what the WAN transport reads; spec.Guard mirrors it
	tunMTU   int
	tun      tun.Device
	tunIO    *tunIO // whole-packet reads; nil: wireguard-go's Read
	wan      WAN
	host     *hostnet.Host
	services *services
	wg       sync.WaitGroup
	closing  chan struct{}
	wanBad   uint64 // truncated+malformed captures already counted
	reload   reloadState
	watch    *wanWatcher
	state    routerState
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
	r := &Router{cfg: cfg, log: log, closing: make(chan struct{})}

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

	var lanAddrs []netip.Prefix
	tunMTU := wanIf.MTU
	for _, name := range cfg.LAN.Interfaces {
		li, ok := h.Interface(name)
		if !ok {
			return nil, fmt.Errorf("lan.interfaces: no interface %q", name)
		}
		lanAddrs = append(lanAddrs, li.Prefixes...)
		// The TUN must take whatever the LAN delivers; the WAN MTU is
		// enforced by the core, which answers with Fragmentation Needed.
		tunMTU = max(tunMTU, li.MTU)
	}
	r.tunMTU = tunMTU
	wanMTU := cfg.WAN.MTU
	if wanMTU == 0 {
		wanMTU = wanIf.MTU
	}
	r.core = core{
		nat:      r.nat,
		lan:      newPrefixSet(cfg.LAN.Prefixes),
		noNAT:    newSharedPrefixSet(cfg.Routing.NoNAT),
		service:  cfg.Services.Address.As4(),
		wanMTU:   wanMTU,
		offset:   packetOffset,
		lanAddrs: lanAddrs,
		log:      log,
		icmp:     newICMPLimiter(cfg.Limits.ICMPErrorRate, cfg.Limits.ICMPErrorBurst),
		now:      monotonicClock(),
		routed: newRoutedFlows(RoutedTimeouts{TCP: cfg.NAT.TCPEstablishedTimeout, UDP: cfg.NAT.UDPTimeout,
			ICMP: cfg.NAT.ICMPTimeout, ESP: cfg.IPsec.ESPTimeout, GRE: cfg.PPTP.GRETimeout}),
	}
	capture := Capture{
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

// Engine is the router's NAT engine (for status and tables).
func (r *Router) Engine() *nat.Engine { return r.nat }

// Stats are the router's traffic counters.
func (r *Router) Stats() *Stats { return &r.core.stats }

// Drops returns every drop counter that is not zero, router and engine
// together, by reason name.
func (r *Router) Drops() map[string]uint64 {
	out := make(map[string]uint64)
	for _, reason := range nat.AllDropReasons() {
		if n := r.core.drops.Get(reason) + r.nat.Drops.Get(reason); n > 0 {
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
	dev, err := tun.CreateTUN(r.cfg.TUN.Name, r.tunMTU)
	if err != nil {
		return fmt.Errorf("creating TUN %q: %w", r.cfg.TUN.Name, err)
	}
	r.tun = dev
	go func() {
		// The device reports link events on a channel that blocks its
		// netlink listener when nobody reads it.
		for range dev.Events() {
		}
	}()
	if r.wan, err = OpenWAN(r.capture); err != nil {
		r.tun.Close()
		return fmt.Errorf("opening WAN transport on %s: %w", r.cfg.WAN.Interface, err)
	}
	if r.tunIO, err = newTunIO(dev); err != nil {
		r.wan.Close()
		r.tun.Close()
		return fmt.Errorf("TUN %q: %w", r.cfg.TUN.Name, err)
	}
	if g, ok := r.wan.(gsoWAN); ok && g.CanSendGSO() && r.tunIO != nil {
		r.core.gsoOut = true
	}
	if f, ok := r.wan.(interface{ SendFrames() }); ok {
		f.SendFrames()
	}
	if kw, ok := r.wan.(interface{ KeepWhole() }); ok && r.tunIO != nil {
		kw.KeepWhole()
		r.core.gsoIn = true
	}
	r.log.Debug().Bool("tun_whole_reads", r.tunIO != nil).Bool("wan_gso_send", r.core.gsoOut).Bool("wan_gso_receive", r.core.gsoIn).Msg("data path")
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

// Run moves packets until ctx is done, then tears everything down.
func (r *Router) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	r.wg.Add(3)
	go func() { defer r.wg.Done(); errc <- r.tunLoop() }()
	go func() { defer r.wg.Done(); errc <- r.wanLoop() }()
	go func() { defer r.wg.Done(); r.watch.run(r.closing) }()
	r.startStateSaver()
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	var runErr error
	var lastDrops map[string]uint64
	lastReport := time.Now()
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
			r.core.routed.expire(r.core.now())
			r.core.icmp.expire(r.core.now())
			r.pollWANStats()
			if now.Sub(lastReport) >= 10*time.Second {
				lastReport = now
				lastDrops = r.reportDrops(lastDrops)
			}
		}
	}
	r.pollWANStats()
	closeErr := r.Close()
	r.reportDrops(lastDrops) // the final count, so a short run's drops are not lost
	return errors.Join(runErr, closeErr)
}

// wanStatser is the optional statistics side of a WAN transport.
type wanStatser interface{ Stats() (WANStats, error) }

// pollWANStats moves the WAN transport's own drop counts into the drop
// counters: packets the kernel dropped because the capture socket's buffer
// was full (PACKET_STATISTICS, reset by each read), and captured packets
// the transport refused as truncated or malformed.
func (r *Router) pollWANStats() {
	ws, ok := r.wan.(wanStatser)
	if !ok {
		return
	}
	s, err := ws.Stats()
	if err != nil {
		return
	}
	r.core.drops.AddN(nat.DropWANOverflow, s.KernelDrops)
	bad := s.Truncated + s.Malformed
	r.core.drops.AddN(nat.DropMalformed, bad-r.wanBad)
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

// gsoWAN is a WAN transport that can send GSO super-packets whole.
type gsoWAN interface {
	CanSendGSO() bool
	WriteGSO(bufs [][]byte, offset int) (int, error)
}

// tunLoop reads batches of LAN packets from the TUN.
func (r *Router) tunLoop() error {
	if r.tunIO != nil {
		return r.tunLoopWhole()
	}
	batch := r.tun.BatchSize()
	bufs, sizes := newBuffers(batch)
	o := newOutbox(batch, packetOffset, 2*batch, max(r.core.wanMTU, maxICMPErrorLen))
	released := &segmentPool{offset: packetOffset}
	var p nat.Packet
	for {
		n, err := r.tun.Read(bufs, sizes, packetOffset)
		if err != nil {
			if r.closed(err) {
				return nil
			}
			if errors.Is(err, tun.ErrTooManySegments) {
				r.log.Debug().Err(err).Msg("tun read")
			} else {
				return fmt.Errorf("reading TUN: %w", err)
			}
		}
		o.reset()
		for i := range n {
			r.core.fromLAN(bufs[i], sizes[i], &p, o)
		}
		r.flushReleased(o, released, &p, true, batch)
	}
}

// tunLoopWhole reads the TUN's packets whole (tunIO): GSO super-packets
// go to the WAN as one frame where they can, split otherwise.
func (r *Router) tunLoopWhole() error {
	batch := r.tun.BatchSize()
	bufs, sizes := newBuffers(batch)
	o := newOutbox(batch, packetOffset, 2*batch, max(r.core.wanMTU, maxICMPErrorLen))
	segs := &segmentPool{offset: packetOffset}
	released := &segmentPool{offset: packetOffset}
	var p nat.Packet
	for {
		n, err := r.tunIO.read(bufs, sizes, packetOffset)
		if err != nil {
			if r.closed(err) {
				return nil
			}
			return err
		}
		o.reset()
		segs.reset()
		for i := range n {
			r.core.fromTUN(bufs[i], sizes[i], &p, o, segs)
		}
		r.flushReleased(o, released, &p, true, batch)
	}
}

// wanLoop reads batches of captured WAN packets.
func (r *Router) wanLoop() error {
	batch := r.wan.BatchSize()
	bufs, sizes := newBuffers(batch)
	o := newOutbox(batch, packetOffset, batch, maxICMPErrorLen)
	released := &segmentPool{offset: packetOffset}
	var p nat.Packet
	for {
		n, err := r.wan.Read(bufs, sizes, packetOffset)
		if err != nil {
			if r.closed(err) {
				return nil
			}
			return fmt.Errorf("reading WAN: %w", err)
		}
		o.reset()
		for i := range n {
			whole := r.core.gsoIn && decodeVnetHdr(bufs[i][packetOffset-vnetHdrLen:packetOffset]).isGSO()
			r.core.fromWANAs(bufs[i], sizes[i], &p, o, whole)
		}
		r.flushReleased(o, released, &p, false, batch)
	}
}

// flush writes what one pass queued: runs of ordinary packets to the WAN
// transport's Write, super-packets to WriteGSO, in queue order; then the
// LAN side.
func (r *Router) flush(o *outbox) {
	for start, end := range runs(o.whole) {
		if o.whole[start] {
			if _, err := r.wan.(gsoWAN).WriteGSO(o.wan[start:end], packetOffset); err != nil && !r.closed(err) {
				r.core.drop(nat.DropWriteFailed)
				r.log.Debug().Err(err).Msg("wan gso write")
			}
		} else {
			r.writeWAN(o.wan[start:end])
		}
	}
	for start, end := range runs(o.lanWhole) {
		if o.lanWhole[start] {
			for _, b := range o.lan[start:end] {
				if err := r.tunIO.write(b[packetOffset-vnetHdrLen:]); err != nil && !r.closed(err) {
					r.core.drop(nat.DropWriteFailed)
					r.log.Debug().Err(err).Msg("tun gso write")
				}
			}
		} else if _, err := r.tun.Write(o.lan[start:end], packetOffset); err != nil && !r.closed(err) {
			r.core.drop(nat.DropWriteFailed)
			r.log.Debug().Err(err).Msg("tun write")
		}
	}
}

// flushReleased writes what one pass queued together with the fragments
// the pass released from the engine's hold (outbound: the TUN loop's,
// else the WAN loop's), which follow their first fragments in the same
// write; more than max of them take further writes.
func (r *Router) flushReleased(o *outbox, pool *segmentPool, p *nat.Packet, outbound bool, max int) {
	pool.reset()
	more := r.core.sendReleased(outbound, o, pool, p, max)
	r.flush(o)
	for more {
		o.reset()
		pool.reset()
		more = r.core.sendReleased(outbound, o, pool, p, max)
		r.flush(o)
	}
}

// runs yields the [start, end) bounds of each maximal run of equal flags,
// in order: a queue's ordinary packets and super-packets go to different
// writers, and order within a flow is kept.
func runs(flags []bool) iter.Seq2[int, int] {
	return func(yield func(int, int) bool) {
		for start := 0; start < len(flags); {
			end := start + 1
			for end < len(flags) && flags[end] == flags[start] {
				end++
			}
			if !yield(start, end) {
				return
			}
			start = end
		}
	}
}

// writeWAN sends ordinary packets through the WAN transport's Write.
func (r *Router) writeWAN(bufs [][]byte) {
	_, err := r.wan.Write(bufs, packetOffset)
	if err == nil || r.closed(err) {
		return
	}
	var we *WriteError
	if errors.As(err, &we) {
		for range we.Refused {
			r.core.drop(nat.DropWriteFailed)
		}
	} else {
		r.core.drop(nat.DropWriteFailed)
	}
	r.log.Debug().Err(err).Msg("wan write")
}

// monotonicClock returns the core's clock: nanoseconds since the call, on
// the monotonic clock, so wall-clock steps do not age flows or refill
// rate limits.
func monotonicClock() func() int64 {
	base := time.Now()
	return func() int64 { return int64(time.Since(base)) }
}

func newBuffers(batch int) ([][]byte, []int) {
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, packetOffset+maxPacket)
	}
	return bufs, make([]int, batch)
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

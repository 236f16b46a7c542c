package router

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/vpnmasq/vpnmasq/admin"
	"github.com/vpnmasq/vpnmasq/datapath"
	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/netstack"
)

// Version is the vpnmasq version the admin API reports; the command sets it.
var Version = "dev"

// The local services: a gVisor netstack owns the service address. The packet
// path (datapath) hands it every LAN packet addressed there (and nothing from the WAN: the
// policy rule only brings LAN traffic into the TUN, and fromWAN never
// delivers to it); what the netstack sends goes back into the TUN. On it run
// ICMP echo, the DNS forwarder and the admin HTTP server. The admin API is
// also served on a root-only unix socket on the host, for `vpnmasq status`
// and container health checks.
type services struct {
	stack     *netstack.Stack
	http      *http.Server
	unixClose func() error
	lan       *lanAdmin // the admin server on the service address
	started   time.Time

	mu  sync.Mutex // serialises TUN writes of netstack output
	buf [][]byte
}

// startServices starts the netstack and the admin servers. It runs after
// the TUN exists.
func (r *Router) startServices() error {
	sv := &services{started: time.Now(), buf: [][]byte{make([]byte, datapath.Headroom+datapath.MaxPacket)}}
	cfg := r.cfg.Services
	var upstreams []netip.AddrPort
	for _, u := range cfg.DNSUpstream {
		upstreams = append(upstreams, u.AddrPort())
	}
	log := r.log.With().Str("component", "services").Logger()
	st, err := netstack.New(netstack.Config{
		Address:      cfg.Address,
		MTU:          r.tunMTU,
		Output:       sv.writer(r),
		DNSUpstreams: upstreams,
		OwnedPort:    r.ownsPort,
		Log:          log,
	})
	if err != nil {
		return fmt.Errorf("starting the netstack on %s: %w", cfg.Address, err)
	}
	sv.stack = st
	ln, err := st.ListenTCP(cfg.AdminPort)
	if err != nil {
		st.Close()
		return fmt.Errorf("admin server on %s:%d: %w", cfg.Address, cfg.AdminPort, err)
	}
	// Addresses outside admin_allow are closed at accept, before any HTTP
	// parsing; the handler checks them again, and the token.
	sv.lan = &lanAdmin{log: log}
	sv.lan.set(r, cfg.AdminAllow, cfg.AdminToken)
	sv.http = admin.NewServer(sv.lan, admin.LANLimits)
	lanLn := admin.Listener(admin.AllowListenerFunc(ln, sv.lan.allowed, log), admin.LANLimits.MaxConns)
	go func() {
		if err := sv.http.Serve(lanLn); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			log.Error().Err(err).Msg("admin server")
		}
	}()
	sv.unixClose, err = admin.ServeUnix(cfg.AdminSocket, admin.NewHandler(r, admin.Options{Trusted: true, Log: log}))
	if err != nil {
		sv.http.Close()
		st.Close()
		return fmt.Errorf("admin socket %s: %w", cfg.AdminSocket, err)
	}
	r.reload.mu.Lock() // the socket already serves: a reload may look
	r.services = sv
	r.reload.mu.Unlock()
	r.path.SetLocal(st.Deliver)
	dns := "off (no upstream)"
	if len(upstreams) > 0 {
		dns = fmt.Sprint(upstreams)
	}
	log.Info().Stringer("address", cfg.Address).Uint16("admin_port", cfg.AdminPort).
		Str("admin_socket", cfg.AdminSocket).Str("dns_upstream", dns).Msg("services ready")
	return nil
}

// writer returns the netstack's output function: each packet is copied
// behind the TUN's headroom and written; the netstack calls it from one
// goroutine, the lock only guards against a second.
func (sv *services) writer(r *Router) func(pkt []byte) {
	return func(pkt []byte) {
		if len(pkt) > datapath.MaxPacket {
			return
		}
		sv.mu.Lock()
		defer sv.mu.Unlock()
		b := sv.buf[0][:datapath.Headroom+copy(sv.buf[0][datapath.Headroom:], pkt)]
		if _, err := r.tun.Write([][]byte{b}, datapath.Headroom); err != nil && !r.closed(err) {
			r.path.Drops().Add(nat.DropWriteFailed)
		}
	}
}

// close stops the servers and the netstack.
func (sv *services) close() error {
	var errs []error
	if sv.unixClose != nil {
		errs = append(errs, sv.unixClose())
	}
	errs = append(errs, sv.http.Close(), sv.stack.Close())
	return errors.Join(errs...)
}

// Snapshot is the router's state for the admin API (admin.Source).
func (r *Router) Snapshot() admin.Snapshot {
	s := admin.Snapshot{
		Time:        time.Now(),
		Version:     Version,
		WANAddr:     netip.AddrFrom4(r.nat.WANAddr()),
		WANIf:       r.cfg.WAN.Interface,
		LANPrefixes: slices.Clone(r.cfg.LAN.Prefixes),
		ServiceAddr: r.cfg.Services.Address,
		Drops:       make(map[string]uint64),
	}
	if r.services != nil {
		s.Uptime = admin.SecondsOf(time.Since(r.services.started))
		d := r.services.stack.DNSStats()
		s.DNS = admin.DNSStats{UDPQueries: d.UDPQueries, TCPQueries: d.TCPQueries,
			CacheHits: d.CacheHits, UpstreamFailures: d.UpstreamFailures, Answered: d.Answered,
			UpstreamIgnored: d.UpstreamIgnored}
	}
	for dir, name := range []string{"lan_to_wan", "wan_to_lan"} {
		var other admin.Traffic
		other.Direction, other.Proto = name, "other"
		for proto := range 256 {
			c := &r.path.Stats().Traffic[dir][proto]
			pk, by := c.Packets.Load(), c.Bytes.Load()
			switch uint8(proto) {
			case nat.ProtoTCP, nat.ProtoUDP, nat.ProtoICMP, nat.ProtoGRE, nat.ProtoESP, nat.ProtoAH:
				s.Traffic = append(s.Traffic, admin.Traffic{Direction: name, Proto: protoLabel(uint8(proto)),
					Packets: pk, Bytes: by, SuperPackets: c.SuperPackets.Load()})
			default:
				other.Packets += pk
				other.Bytes += by
			}
		}
		s.Traffic = append(s.Traffic, other)
	}
	for _, reason := range nat.AllDropReasons() {
		s.Drops[reason.String()] = r.path.Drops().Get(reason) + r.nat.Drops.Get(reason)
	}
	// The mappings themselves are listed by MappingPage, where shown.
	st := r.nat.Stats()
	s.MappingCounts = st.Mappings
	for _, n := range st.Mappings {
		s.MappingsTotal += n
	}
	for _, proto := range []string{"tcp", "udp"} {
		s.Ports = append(s.Ports, admin.PortUse{Proto: proto, InUse: st.PortsInUse[proto], Size: st.PortRangeSize})
	}
	for _, f := range st.FlowsByState {
		s.Flows = append(s.Flows, admin.FlowCount{Proto: f.Proto, State: f.State, Flows: f.Flows})
	}
	for _, h := range st.Hosts {
		s.Hosts = append(s.Hosts, admin.HostUsage{Host: h.Host, Flows: h.Flows, Mappings: h.Mappings,
			ESP: h.ESP, IKE: h.IKE, Calls: h.Calls, Fragments: h.Fragments})
	}
	for _, l := range nat.AllLimits() {
		s.Limits = append(s.Limits, admin.LimitCount{Limit: l.String(), Refused: r.nat.Limits.Refused(l), Evicted: r.nat.Limits.Evicted(l)})
	}
	s.WANChanges = admin.WANChanges{Changes: r.nat.WANChanges.Changes.Load(),
		MappingsDropped: r.nat.WANChanges.MappingsDropped.Load(), FlowsDropped: r.nat.WANChanges.FlowsDropped.Load()}
	s.ICMPErrors = admin.ICMPErrors{Sent: r.path.Stats().ICMPErrorsSent.Load(), Suppressed: r.path.Stats().ICMPErrorsSuppressed.Load()}
	for _, k := range r.nat.IKESessions() {
		s.VPN.IKE = append(s.VPN.IKE, admin.IKESession{LANHost: k.Host, Remote: k.Remote,
			WANPort: k.WANPort, InitiatorSPI: hex64(k.InitiatorSPI), ResponderSPI: hex64(k.ResponderSPI),
			Age: admin.SecondsOf(k.Age), Idle: admin.SecondsOf(k.Idle)})
	}
	for _, p := range r.nat.ESPPairs() {
		s.VPN.ESP = append(s.VPN.ESP, admin.ESPPair{LANHost: netip.AddrFrom4(p.Host), Remote: netip.AddrFrom4(p.Remote),
			OutSPI: hex32(p.OutSPI), InSPI: hex32(p.InSPI), State: p.State,
			Age: admin.SecondsOf(p.Age), Idle: admin.SecondsOf(p.Idle),
			Out: tunnelHealth(p.Out), In: tunnelHealth(p.In)})
	}
	for _, c := range r.nat.PPTPCalls() {
		i := slices.IndexFunc(s.VPN.PPTP, func(pc admin.PPTPConn) bool { return pc.Client == c.Client && pc.Server == c.Server })
		if i < 0 {
			s.VPN.PPTP = append(s.VPN.PPTP, admin.PPTPConn{Client: c.Client, Server: c.Server, State: c.Connection})
			i = len(s.VPN.PPTP) - 1
		}
		s.VPN.PPTP[i].Calls = append(s.VPN.PPTP[i].Calls, admin.PPTPCall{CallID: c.CallID, MasqCallID: c.MasqCallID,
			PeerCallID: c.PeerCallID, State: c.State, GREOut: c.GREOut, GREIn: c.GREIn, Age: admin.SecondsOf(c.Age),
			Out: tunnelHealth(c.Out), In: tunnelHealth(c.In)})
	}
	for _, a := range r.nat.AHRefusals() {
		s.VPN.AH = append(s.VPN.AH, admin.AHRefusal{LANHost: a.Host, Remote: a.Remote, Packets: a.Packets,
			LastSeen: admin.SecondsOf(a.LastSeen)})
	}
	return s
}

// MappingPage lists one page of the NAT's mappings for the admin API
// (admin.MappingLister): the engine copies its table, and only the page is
// converted.
func (r *Router) MappingPage(offset, limit int) ([]admin.Mapping, int) {
	all := r.nat.Mappings()
	if offset >= len(all) {
		return nil, len(all)
	}
	page := all[offset:min(len(all), offset+limit)]
	out := make([]admin.Mapping, len(page))
	for i, m := range page {
		out[i] = admin.Mapping{Proto: m.Proto, LAN: m.LAN, WAN: m.WAN, Remote: m.Remote,
			Flows: m.Flows, Static: m.Static, Age: admin.SecondsOf(m.Age), Idle: admin.SecondsOf(m.Idle)}
	}
	return out, len(all)
}

var _ admin.MappingLister = (*Router)(nil)

// History is the ring of samples the status page draws its graphs from
// (admin.HistorySource).
func (r *Router) History() *admin.History { return r.history }

var _ admin.HistorySource = (*Router)(nil)

func protoLabel(p uint8) string {
	switch p {
	case nat.ProtoTCP:
		return "tcp"
	case nat.ProtoUDP:
		return "udp"
	case nat.ProtoICMP:
		return "icmp"
	case nat.ProtoGRE:
		return "gre"
	case nat.ProtoESP:
		return "esp"
	case nat.ProtoAH:
		return "ah"
	}
	return "other"
}

// hex64 writes an IKE SPI as 16 hex digits; 0 (not yet known) as "".
func hex64(v uint64) string {
	if v == 0 {
		return ""
	}
	s := strconv.FormatUint(v, 16)
	return "0000000000000000"[len(s):] + s
}

// hex32 writes an ESP SPI as 8 hex digits; 0 (not yet known) as "".
func hex32(v uint32) string {
	if v == 0 {
		return ""
	}
	s := strconv.FormatUint(uint64(v), 16)
	return "00000000"[len(s):] + s
}

// tunnelHealth is one direction of a tunnel for the admin API.
func tunnelHealth(h nat.TunnelHealth) admin.TunnelHealth {
	return admin.TunnelHealth{Packets: h.Packets, Bytes: h.Bytes, Sequenced: h.Sequenced,
		Lost: h.Lost, Late: h.Late, Idle: admin.SecondsOf(h.Idle)}
}

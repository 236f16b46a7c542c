// Package netstack runs vpnmasq's local services on a userspace gVisor TCP/IP
// stack: the router hands it the IPv4 packets LAN hosts send to the service
// address, and it hands back the packets the stack sends in reply. The stack
// answers ICMP echo, forwards DNS on UDP and TCP port 53 to the upstream
// resolvers (reached through the host's own sockets), and offers TCP
// listeners for the admin HTTP server.
//
// The stack owns exactly one address and is neither promiscuous nor allowed
// to spoof: it never answers for a destination other than the service
// address, so it cannot be used to impersonate other hosts.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/buffer"
	gvlog "gvisor.dev/gvisor/pkg/log"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

const (
	nicID = 1

	defaultMTU          = 1500
	defaultDNSCacheSize = 1024
	defaultDNSTimeout   = 2 * time.Second

	// inQueueLen bounds the packets Deliver has accepted but the stack has
	// not processed yet; beyond it Deliver drops instead of blocking the
	// router's TUN reader.
	inQueueLen = 512
	// outQueueLen bounds the packets the stack has sent but Output has not
	// consumed yet; beyond it the stack drops (and TCP retransmits).
	outQueueLen = 512
)

var broadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// Config describes the stack and its services.
type Config struct {
	// Address is the service address (IPv4) and the stack's only address.
	Address netip.Addr
	// MTU of the link between the router and the stack; default 1500.
	MTU int
	// Output is called with each IPv4 packet the stack sends (a LAN host is
	// the destination). It is called from one goroutine the Stack runs; pkt
	// is only valid during the call.
	Output func(pkt []byte)
	// DNSUpstreams are asked in order; empty: no DNS service on port 53.
	DNSUpstreams []netip.AddrPort
	// DNSCacheSize is the number of cached answers; default 1024.
	DNSCacheSize int
	// DNSTimeout bounds each query to an upstream; default 2s.
	DNSTimeout time.Duration
	// OwnedPort reports whether the router owns a local port of the host
	// (its NAT range, IKE's and the forwards' ports on the WAN address,
	// whose packets the host never sees): the DNS forwarder's upstream
	// sockets never use one (upstream.go). It is asked for every upstream
	// socket, so its answer may change while the stack runs (a reload);
	// nil: any port will do.
	OwnedPort func(port uint16) bool
	// Now is the DNS cache's clock; nil means time.Now. Tests use it to
	// age cache entries without sleeping.
	Now func() time.Time
	Log zerolog.Logger
}

// Stats counts packets between the router and the stack.
type Stats struct {
	PacketsIn  uint64 // accepted by Deliver and handed to the stack
	PacketsOut uint64 // passed to Output
	// Dropped counts every packet Deliver refused; Malformed, Misaddressed
	// and QueueFull say why (a packet after Close counts only here).
	Dropped      uint64
	Malformed    uint64 // not a valid IPv4 packet
	Misaddressed uint64 // not to Address, or from a source nobody can be answered at
	QueueFull    uint64 // the stack was behind; the router must not wait for it
	// OutputDropped counts packets the stack sent while the Output queue
	// was full.
	OutputDropped uint64
}

// Stack is the userspace stack holding the service address.
type Stack struct {
	cfg   Config
	addr  tcpip.Address
	log   zerolog.Logger
	stack *stack.Stack
	ep    *linkEndpoint

	in     chan []byte
	ctx    context.Context
	cancel context.CancelFunc
	loops  sync.WaitGroup // inbound and output goroutines

	// closeMu orders Close against ListenTCP and Deliver's queueing so that
	// nothing is registered after Close took its snapshot.
	closeMu   sync.RWMutex
	closed    bool
	closeOnce sync.Once
	listeners map[*tcpListener]struct{}

	dns *dnsServer

	packetsIn, packetsOut                   atomic.Uint64
	dropped, malformed, misaddressed, qfull atomic.Uint64
}

// New builds the stack, assigns Address, and starts the DNS forwarder when
// upstreams are configured.
func New(cfg Config) (*Stack, error) {
	if !cfg.Address.Is4() {
		return nil, fmt.Errorf("netstack: service address %v is not IPv4", cfg.Address)
	}
	if a := cfg.Address; a.IsLoopback() || a.IsMulticast() || a.IsUnspecified() || a == broadcast {
		// None of these is a destination the router hands over.
		return nil, fmt.Errorf("netstack: service address %v is not a unicast address", a)
	}
	if cfg.Output == nil {
		return nil, errors.New("netstack: Output is nil")
	}
	if cfg.MTU == 0 {
		cfg.MTU = defaultMTU
	}
	if cfg.MTU < header.IPv4MinimumProcessableDatagramSize || cfg.MTU > math.MaxUint16 {
		return nil, fmt.Errorf("netstack: MTU %d out of range %d..%d", cfg.MTU, header.IPv4MinimumProcessableDatagramSize, math.MaxUint16)
	}
	if cfg.DNSCacheSize == 0 {
		cfg.DNSCacheSize = defaultDNSCacheSize
	}
	if cfg.DNSCacheSize < 0 {
		return nil, fmt.Errorf("netstack: DNS cache size %d is negative", cfg.DNSCacheSize)
	}
	if cfg.DNSTimeout == 0 {
		cfg.DNSTimeout = defaultDNSTimeout
	}
	if cfg.DNSTimeout < 0 {
		return nil, fmt.Errorf("netstack: DNS timeout %v is negative", cfg.DNSTimeout)
	}
	for _, u := range cfg.DNSUpstreams {
		if !u.IsValid() || u.Port() == 0 {
			return nil, fmt.Errorf("netstack: DNS upstream %v is not an address and port", u)
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}

	routeGVisorLog(cfg.Log)

	s := &Stack{
		cfg:       cfg,
		addr:      tcpip.AddrFrom4(cfg.Address.As4()),
		log:       cfg.Log.With().Str("component", "netstack").Logger(),
		in:        make(chan []byte, inQueueLen),
		listeners: make(map[*tcpListener]struct{}),
	}
	// IPv4 with TCP and UDP only: ICMP echo is answered by the IPv4
	// protocol itself, and no ICMP sockets are needed.
	s.stack = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
		// The stack never talks to itself; nothing local is to be looped back.
		HandleLocal: false,
	})
	s.ctx, s.cancel = context.WithCancel(context.Background())
	abort := func(err error) (*Stack, error) {
		s.cancel()
		s.stack.Close()
		s.stack.Wait()
		return nil, err
	}
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.stack.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return abort(fmt.Errorf("netstack: enable TCP SACK: %v", err))
	}
	s.ep = &linkEndpoint{Endpoint: channel.New(outQueueLen, uint32(cfg.MTU), "")}
	if err := s.stack.CreateNIC(nicID, s.ep); err != nil {
		return abort(fmt.Errorf("netstack: create NIC: %v", err))
	}
	// Promiscuous mode and spoofing stay off (the defaults): the stack
	// accepts only packets to its own address and sends only from it.
	pa := tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: s.addr.WithPrefix(), // a /32: no subnet, no subnet broadcast
	}
	if err := s.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		return abort(fmt.Errorf("netstack: add address %v: %v", cfg.Address, err))
	}
	// Every LAN host is reached through the router, whatever its prefix.
	s.stack.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}})

	if len(cfg.DNSUpstreams) > 0 {
		d, err := s.startDNS()
		if err != nil {
			return abort(err)
		}
		s.dns = d
	}

	s.loops.Add(2)
	go s.inbound()
	go s.output()
	return s, nil
}

var gvisorLogOnce sync.Once

// routeGVisorLog sends gVisor's own log, which otherwise goes to stderr in
// glog format, to the first Stack's logger. It is process-wide, like
// gVisor's logger. Its messages are about single packets and connections a
// LAN host controls (e.g. "handleListenSegment failed"), so they are debug
// messages: a host must not be able to flood the log.
func routeGVisorLog(l zerolog.Logger) {
	gvisorLogOnce.Do(func() {
		gvlog.SetTarget(gvisorEmitter{l.With().Str("component", "gvisor").Logger()})
	})
}

type gvisorEmitter struct{ log zerolog.Logger }

func (e gvisorEmitter) Emit(_ int, level gvlog.Level, _ time.Time, format string, v ...any) {
	e.log.Debug().Str("level_gvisor", level.String()).Msgf(format, v...)
}

// linkEndpoint is the stack's link: a channel endpoint that counts the
// packets it drops when Output is behind (the channel endpoint drops them
// silently, and the stack then counts them as sent).
type linkEndpoint struct {
	*channel.Endpoint
	dropped atomic.Uint64
}

func (e *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n, err := e.Endpoint.WritePackets(pkts)
	if err == nil && n < pkts.Len() {
		e.dropped.Add(uint64(pkts.Len() - n))
	}
	return n, err
}

// Deliver hands the stack one IPv4 packet from a LAN host to Address. It
// copies pkt and never blocks: when the stack is behind, the packet is
// dropped and counted.
func (s *Stack) Deliver(pkt []byte) {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		s.dropped.Add(1)
		return
	}
	n, ok := s.check(pkt)
	if !ok {
		s.dropped.Add(1)
		return
	}
	b := make([]byte, n)
	copy(b, pkt)
	select {
	case s.in <- b:
		s.packetsIn.Add(1)
	default:
		s.qfull.Add(1)
		s.dropped.Add(1)
	}
}

// check validates pkt before it is copied and queued, and returns the length
// of the IPv4 datagram (link padding after it is not the stack's business).
// gVisor validates again; checking here keeps the counters meaningful and
// the stack's input to what it was built for.
func (s *Stack) check(pkt []byte) (int, bool) {
	h := header.IPv4(pkt)
	if !h.IsValid(len(pkt)) || !h.IsChecksumValid() {
		s.malformed.Add(1)
		return 0, false
	}
	if h.DestinationAddress() != s.addr {
		s.misaddressed.Add(1)
		return 0, false
	}
	// Replies go to the source: one that is not a unicast host elsewhere
	// would make the stack talk to itself, to a group or to everyone.
	src := netip.AddrFrom4(h.SourceAddress().As4())
	if src == s.cfg.Address || src.IsUnspecified() || src.IsLoopback() || src.IsMulticast() || src == broadcast {
		s.misaddressed.Add(1)
		return 0, false
	}
	return int(h.TotalLength()), true
}

// inbound feeds queued packets to the stack, so that the router's goroutine
// never runs gVisor's receive path.
func (s *Stack) inbound() {
	defer s.loops.Done()
	for {
		select {
		case <-s.ctx.Done():
			return
		case b := <-s.in:
			s.inject(b)
		}
	}
}

// inject hands one packet to the stack without Deliver's checks; tests use
// it to show that the stack itself ignores what is not for it.
func (s *Stack) inject(b []byte) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	s.ep.InjectInbound(ipv4.ProtocolNumber, pkt)
	pkt.DecRef()
}

// output is the one goroutine that calls Output.
func (s *Stack) output() {
	defer s.loops.Done()
	for {
		pkt := s.ep.ReadContext(s.ctx)
		if pkt == nil {
			return
		}
		v := pkt.ToView()
		pkt.DecRef()
		s.cfg.Output(v.AsSlice())
		v.Release()
		s.packetsOut.Add(1)
	}
}

// ListenTCP listens on Address:port, for the admin HTTP server. Close the
// listener to stop listening; Stack.Close closes it too.
func (s *Stack) ListenTCP(port uint16) (net.Listener, error) {
	if port == 0 {
		return nil, errors.New("netstack: listen on TCP port 0")
	}
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil, net.ErrClosed
	}
	l, err := gonet.ListenTCP(s.stack, tcpip.FullAddress{NIC: nicID, Addr: s.addr, Port: port}, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("netstack: listen on %v: %w", netip.AddrPortFrom(s.cfg.Address, port), err)
	}
	tl := &tcpListener{TCPListener: l, s: s}
	s.listeners[tl] = struct{}{}
	return tl, nil
}

// tcpListener makes a gonet listener behave like a net one when closed:
// Accept unblocks and reports net.ErrClosed, which servers recognise.
type tcpListener struct {
	*gonet.TCPListener
	s      *Stack
	once   sync.Once
	closed atomic.Bool
}

func (l *tcpListener) Accept() (net.Conn, error) {
	c, err := l.TCPListener.Accept()
	if err != nil && l.closed.Load() {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
	}
	return c, err
}

func (l *tcpListener) Close() error {
	l.once.Do(func() {
		l.closed.Store(true)
		// Shutdown wakes a blocked Accept; Close releases the endpoint.
		l.TCPListener.Shutdown()
		_ = l.TCPListener.Close()
		l.s.closeMu.Lock()
		delete(l.s.listeners, l)
		l.s.closeMu.Unlock()
	})
	return nil
}

// Stats returns the packet counters.
func (s *Stack) Stats() Stats {
	return Stats{
		PacketsIn:     s.packetsIn.Load(),
		PacketsOut:    s.packetsOut.Load(),
		Dropped:       s.dropped.Load(),
		Malformed:     s.malformed.Load(),
		Misaddressed:  s.misaddressed.Load(),
		QueueFull:     s.qfull.Load(),
		OutputDropped: s.ep.dropped.Load(),
	}
}

// Close stops the services and the stack and waits for every goroutine the
// Stack started; Output is not called after Close returns.
func (s *Stack) Close() error {
	s.closeOnce.Do(func() {
		s.closeMu.Lock()
		s.closed = true
		ls := make([]*tcpListener, 0, len(s.listeners))
		for l := range s.listeners {
			ls = append(ls, l)
		}
		s.closeMu.Unlock()

		// Cancelling first aborts upstream DNS queries in flight.
		s.cancel()
		for _, l := range ls {
			_ = l.Close()
		}
		if s.dns != nil {
			s.dns.close()
		}
		// Aborting the remaining endpoints (accepted admin connections)
		// wakes whoever still reads or writes them.
		s.stack.Close()
		s.stack.Wait() // also removes the NIC, which closes s.ep
		s.loops.Wait()
	})
	return nil
}

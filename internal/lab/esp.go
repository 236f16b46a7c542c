package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// ESP test traffic. The kernels the labs run on may have no ESP of their
// own, so a raw IPPROTO_ESP socket in a namespace sees every ESP packet
// addressed to it, and one sent through such a socket gets its IP header
// from the kernel. The packets carry a plain ESP header (SPI, sequence
// number) and an unencrypted payload the test chooses: enough for a NAT,
// which never looks past the SPI.

// ESPHeaderLen is the size of the SPI and sequence number fields.
const ESPHeaderLen = 8

// ESPPacket is one ESP packet: its header fields and the rest.
type ESPPacket struct {
	// Peer is the source of a received packet or the destination of a
	// sent one.
	Peer    netip.Addr
	SPI     uint32
	Seq     uint32
	Payload []byte
	// At is when the packet was received or sent.
	At time.Time
}

// ErrESPTooShort is the error for a packet too short for an ESP header.
var ErrESPTooShort = errors.New("lab: ESP packet shorter than its 8-byte header")

// MarshalESP returns the ESP packet body (without IP header).
func MarshalESP(spi, seq uint32, payload []byte) []byte {
	b := make([]byte, ESPHeaderLen+len(payload))
	binary.BigEndian.PutUint32(b[0:4], spi)
	binary.BigEndian.PutUint32(b[4:8], seq)
	copy(b[ESPHeaderLen:], payload)
	return b
}

// ParseESP splits an ESP packet body (without IP header) into its fields.
func ParseESP(b []byte) (spi, seq uint32, payload []byte, err error) {
	if len(b) < ESPHeaderLen {
		return 0, 0, nil, fmt.Errorf("%w: %d bytes", ErrESPTooShort, len(b))
	}
	return binary.BigEndian.Uint32(b[0:4]), binary.BigEndian.Uint32(b[4:8]), append([]byte(nil), b[ESPHeaderLen:]...), nil
}

// ESPConn is a raw IPPROTO_ESP socket inside a namespace.
type ESPConn struct {
	c *net.IPConn
}

// ListenESP opens a raw ESP socket inside the namespace. A valid local
// address binds it: packets sent get that source address, and only packets
// to it are received. The zero Addr leaves it unbound.
func (n *NS) ListenESP(local netip.Addr) (*ESPConn, error) {
	var laddr *net.IPAddr
	if local.IsValid() {
		if !local.Is4() {
			return nil, fmt.Errorf("lab: ESP socket address %s is not IPv4", local)
		}
		laddr = &net.IPAddr{IP: net.IP(local.AsSlice())}
	}
	var c *net.IPConn
	err := n.Do(func() (err error) {
		c, err = net.ListenIP("ip4:50", laddr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lab: raw ESP socket in %s: %w", n.Name, err)
	}
	return &ESPConn{c: c}, nil
}

// Send sends one ESP packet to dst.
func (e *ESPConn) Send(dst netip.Addr, spi, seq uint32, payload []byte) error {
	if !dst.Is4() {
		return fmt.Errorf("lab: ESP destination %s is not IPv4", dst)
	}
	if _, err := e.c.WriteToIP(MarshalESP(spi, seq, payload), &net.IPAddr{IP: net.IP(dst.AsSlice())}); err != nil {
		return fmt.Errorf("lab: send ESP to %s: %w", dst, err)
	}
	return nil
}

// Receive waits for the next ESP packet until deadline (zero: no deadline).
// A packet too short for an ESP header is returned as an error wrapping
// ErrESPTooShort, with the socket still usable; a closed socket returns
// net.ErrClosed.
func (e *ESPConn) Receive(deadline time.Time) (ESPPacket, error) {
	if err := e.c.SetReadDeadline(deadline); err != nil {
		return ESPPacket{}, err
	}
	buf := make([]byte, 65536)
	// For IPv4 raw sockets the kernel delivers the IP header, which
	// IPConn strips.
	n, from, err := e.c.ReadFromIP(buf)
	if err != nil {
		return ESPPacket{}, err
	}
	src, _ := netip.AddrFromSlice(from.IP)
	src = src.Unmap()
	spi, seq, payload, err := ParseESP(buf[:n])
	if err != nil {
		return ESPPacket{Peer: src}, fmt.Errorf("from %s: %w", src, err)
	}
	return ESPPacket{Peer: src, SPI: spi, Seq: seq, Payload: payload, At: time.Now()}, nil
}

// Close closes the socket; a Receive in progress returns net.ErrClosed.
func (e *ESPConn) Close() error { return e.c.Close() }

// ESPGateway plays the remote IPsec gateway of ESP flows: for every
// outbound SPI it sees (a LAN host's SA towards it) it allocates an inbound
// SPI (its own SA back) and answers each packet on that SPI, to the
// packet's source, with the payload ESPReplyPrefix + the request's
// payload. SPI 0 is never answered. It records every packet it receives.
type ESPGateway struct {
	conn *ESPConn
	done chan struct{}

	mu       sync.Mutex
	nextSPI  uint32
	inbound  map[uint32]uint32   // outbound SPI -> inbound SPI now used for it
	history  map[uint32][]uint32 // outbound SPI -> every inbound SPI used for it
	seq      map[uint32]uint32   // inbound SPI -> last sequence number sent
	received []ESPPacket
	errs     []error
}

// ESPReplyPrefix starts the payload of every ESPGateway answer.
const ESPReplyPrefix = "re:"

// ServeESPGateway starts an ESPGateway inside ns on an unbound raw ESP
// socket (it receives ESP to every address of ns). Its inbound SPIs are
// allocated from firstSPI on, in the order outbound SPIs are first seen.
func ServeESPGateway(ns *NS, firstSPI uint32) (*ESPGateway, error) {
	if firstSPI == 0 {
		return nil, errors.New("lab: ESP gateway SPIs must start above 0")
	}
	c, err := ns.ListenESP(netip.Addr{})
	if err != nil {
		return nil, err
	}
	g := &ESPGateway{
		conn:    c,
		done:    make(chan struct{}),
		nextSPI: firstSPI,
		inbound: map[uint32]uint32{},
		history: map[uint32][]uint32{},
		seq:     map[uint32]uint32{},
	}
	go g.serve()
	return g, nil
}

func (g *ESPGateway) serve() {
	defer close(g.done)
	for {
		p, err := g.conn.Receive(time.Time{})
		if errors.Is(err, net.ErrClosed) {
			return
		}
		g.mu.Lock()
		if err != nil {
			g.errs = append(g.errs, err)
			g.mu.Unlock()
			if errors.Is(err, ErrESPTooShort) {
				continue
			}
			return // the socket is broken; Errors tells why
		}
		g.received = append(g.received, p)
		if p.SPI == 0 {
			g.mu.Unlock()
			continue
		}
		in := g.inboundLocked(p.SPI)
		g.mu.Unlock()
		_ = g.send(p.Peer, in, append([]byte(ESPReplyPrefix), p.Payload...))
	}
}

// inboundLocked returns the inbound SPI answering out, allocating it on
// first sight.
func (g *ESPGateway) inboundLocked(out uint32) uint32 {
	in, ok := g.inbound[out]
	if !ok {
		in = g.allocLocked()
		g.inbound[out] = in
		g.history[out] = append(g.history[out], in)
	}
	return in
}

func (g *ESPGateway) allocLocked() uint32 {
	in := g.nextSPI
	g.nextSPI++
	if g.nextSPI == 0 {
		g.nextSPI = 1
	}
	return in
}

// send sends one packet on inbound SPI spi with the next sequence number.
func (g *ESPGateway) send(dst netip.Addr, spi uint32, payload []byte) error {
	g.mu.Lock()
	g.seq[spi]++
	seq := g.seq[spi]
	g.mu.Unlock()
	err := g.conn.Send(dst, spi, seq, payload)
	g.mu.Lock()
	if err != nil {
		g.errs = append(g.errs, err)
	}
	g.mu.Unlock()
	return err
}

// InboundSPI returns the inbound SPI the gateway now answers outbound SPI
// out with, if it has seen out.
func (g *ESPGateway) InboundSPI(out uint32) (uint32, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	in, ok := g.inbound[out]
	return in, ok
}

// InboundSPIs returns every inbound SPI the gateway has used for outbound
// SPI out, oldest first.
func (g *ESPGateway) InboundSPIs(out uint32) []uint32 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]uint32(nil), g.history[out]...)
}

// Rekey makes the gateway switch first, as a responder whose new SA is
// installed before the initiator's: it allocates a new inbound SPI, answers
// both oldOut and newOut on it from now on, and at once sends one packet on
// it to dst with payload notice (ESPReplyPrefix is not added). It returns
// the new inbound SPI. oldOut must have been seen.
func (g *ESPGateway) Rekey(oldOut, newOut uint32, dst netip.Addr, notice []byte) (uint32, error) {
	g.mu.Lock()
	if _, ok := g.inbound[oldOut]; !ok {
		g.mu.Unlock()
		return 0, fmt.Errorf("lab: ESP gateway rekey: outbound SPI %#08x never seen", oldOut)
	}
	if _, ok := g.inbound[newOut]; ok || newOut == 0 {
		g.mu.Unlock()
		return 0, fmt.Errorf("lab: ESP gateway rekey: new outbound SPI %#08x is 0 or already in use", newOut)
	}
	in := g.allocLocked()
	g.inbound[oldOut] = in
	g.history[oldOut] = append(g.history[oldOut], in)
	g.inbound[newOut] = in
	g.history[newOut] = append(g.history[newOut], in)
	g.mu.Unlock()
	return in, g.send(dst, in, notice)
}

// Received returns every packet received so far, in order.
func (g *ESPGateway) Received() []ESPPacket {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]ESPPacket(nil), g.received...)
}

// Errors returns the receive and send errors so far (e.g. truncated
// packets).
func (g *ESPGateway) Errors() []error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]error(nil), g.errs...)
}

// Close stops the gateway.
func (g *ESPGateway) Close() error {
	err := g.conn.Close()
	<-g.done
	return err
}

// AddLANHost adds a host namespace <Tag>-<role> to the lab's LAN: eth0 at
// addr/24, a veth whose router end rtr-<role> is a port of br-lan, default
// route via the router. Lab.Close does not know the host: remove it with
// RemoveHost (a lab's stale-namespace cleanup does catch it, since it
// carries the lab's tag).
func (l *Lab) AddLANHost(role string, addr netip.Addr) (*NS, error) {
	if role == "" || strings.ContainsAny(role, "/ \t\n") || len("rtr-"+role) > 15 {
		return nil, fmt.Errorf("lab: host role %q must be non-empty, without slash or space, and at most 11 characters", role)
	}
	if !LANPrefix.Contains(addr) || addr == RouterLANAddr {
		return nil, fmt.Errorf("lab: LAN host address %s is not a free address of %s", addr, LANPrefix)
	}
	host := &NS{Name: l.Tag + "-" + role}
	if err := createNamed(host.Name); err != nil {
		return nil, fmt.Errorf("lab: create namespace %s: %w", host.Name, err)
	}
	if err := l.plugLANHost(host, "rtr-"+role, addr); err != nil {
		// The router end of the veth goes with its peer's namespace.
		if derr := deleteNamed(host.Name); derr != nil {
			err = errors.Join(err, derr)
		}
		return nil, err
	}
	return host, nil
}

func (l *Lab) plugLANHost(host *NS, routerIf string, addr netip.Addr) error {
	if err := host.Do(disableIPv6); err != nil {
		return fmt.Errorf("lab: %s: %w", host.Name, err)
	}
	rtr, err := l.Router.Netlink()
	if err != nil {
		return err
	}
	defer rtr.Close()
	hh, err := host.Netlink()
	if err != nil {
		return err
	}
	defer hh.Close()
	if err := addVeth(rtr, routerIf, host, 0); err != nil {
		return fmt.Errorf("lab: %s: %w", l.Router.Name, err)
	}
	port, err := rtr.LinkByName(routerIf)
	if err != nil {
		return fmt.Errorf("lab: %s: %w", l.Router.Name, err)
	}
	bridge, err := rtr.LinkByName(RouterLANIf)
	if err != nil {
		return fmt.Errorf("lab: %s: %w", l.Router.Name, err)
	}
	if err := rtr.LinkSetMaster(port, bridge); err != nil {
		return fmt.Errorf("lab: %s: enslave %s to %s: %w", l.Router.Name, routerIf, RouterLANIf, err)
	}
	if err := setUp(rtr, routerIf); err != nil {
		return fmt.Errorf("lab: %s: %w", l.Router.Name, err)
	}
	for _, ifname := range []string{"lo", HostIf} {
		if err := setUp(hh, ifname); err != nil {
			return fmt.Errorf("lab: %s: %w", host.Name, err)
		}
	}
	if err := addAddr(hh, HostIf, netip.PrefixFrom(addr, LANPrefix.Bits())); err != nil {
		return fmt.Errorf("lab: %s: %w", host.Name, err)
	}
	if err := addRoute(hh, netip.Prefix{}, RouterLANAddr); err != nil {
		return fmt.Errorf("lab: %s: %w", host.Name, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	if err := waitCarrier(rtr, routerIf, deadline); err != nil {
		return fmt.Errorf("lab: %s: %w", l.Router.Name, err)
	}
	if err := waitCarrier(hh, HostIf, deadline); err != nil {
		return fmt.Errorf("lab: %s: %w", host.Name, err)
	}
	return nil
}

// RemoveHost kills the processes started in a host namespace made by
// AddLANHost and deletes it, which also removes its veth from the router.
// Removing it again does nothing.
func (l *Lab) RemoveHost(host *NS) error {
	if !strings.HasPrefix(host.Name, l.Tag+"-") {
		return fmt.Errorf("lab: %s is not a namespace of lab %s", host.Name, l.Tag)
	}
	for _, n := range l.Namespaces() {
		if n.Name == host.Name {
			return fmt.Errorf("lab: %s is one of the lab's own namespaces; Close removes it", host.Name)
		}
	}
	host.killStarted()
	return deleteNamed(host.Name)
}

// AddAddress adds an address to an interface inside the namespace.
func (n *NS) AddAddress(ifname string, p netip.Prefix) error {
	h, err := n.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	if err := addAddr(h, ifname, p); err != nil {
		return fmt.Errorf("lab: %s: %w", n.Name, err)
	}
	return nil
}

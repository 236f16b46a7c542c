package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Upstream sockets. The DNS forwarder reaches its upstreams through the
// host's own sockets, with local ports the kernel picks from its ephemeral
// ports. The router takes some ports of the WAN address for itself (its NAT
// range, IKE's, the forwards'): its guard drops WAN packets to them before
// the host's stack sees them, so a socket that got one would never see its
// answer. vpnmasq refuses a NAT range inside the ephemeral ports at start
// (config.CheckEphemeral), but a forward's port may lie among them, and the
// setting may change while vpnmasq runs. So every upstream socket is bound
// to a port the kernel picks (bind to port 0, before connect: the SYN or
// the query leaves only from the port checked) and, when Config.OwnedPort
// says the router owns it, closed and opened again.

// maxPortTries bounds the sockets opened for one upstream exchange. With
// the ephemeral ports apart from the NAT range only a forward's port can
// come up, at most a few times in a row; 16 tries fail only when most of
// the ephemeral ports are the router's.
const maxPortTries = 16

// errOwnedPort says that the kernel gave a socket a port the router owns.
var errOwnedPort = errors.New("local port owned by the router")

// dial opens a connected socket to up over network ("udp" or "tcp") whose
// local port the router does not own.
func (d *dnsServer) dial(ctx context.Context, network string, up netip.AddrPort) (net.Conn, error) {
	addr := netip.AddrPortFrom(up.Addr().Unmap(), up.Port())
	inet4 := addr.Addr().Is4()
	if inet4 {
		network += "4"
	} else {
		network += "6"
	}
	owned := d.s.cfg.OwnedPort
	var refused []uint16
	dialer := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var port uint16
		var err error
		if cerr := rc.Control(func(fd uintptr) { port, err = bindEphemeral(int(fd), inet4) }); cerr != nil {
			return cerr
		}
		if err != nil {
			return err
		}
		if owned != nil && owned(port) {
			refused = append(refused, port)
			return errOwnedPort
		}
		return nil
	}}
	for range maxPortTries {
		c, err := dialer.DialContext(ctx, network, addr.String())
		if !errors.Is(err, errOwnedPort) {
			return c, err
		}
		d.ownedPortRetries.Add(1)
	}
	err := fmt.Errorf("the kernel gave %d sockets in a row a local port the router owns (%v): "+
		"net.ipv4.ip_local_port_range must have been changed to overlap the router's ports since vpnmasq started", maxPortTries, refused)
	if !d.ownedPortWarned.Swap(true) {
		d.s.log.Warn().Err(err).Stringer("upstream", up).Msg("DNS upstream: no local port outside the router's (logged once)")
	}
	return nil, err
}

// bindEphemeral binds the socket fd to the wildcard address and port 0 (the
// kernel picks a port as it would at connect) and returns that port.
func bindEphemeral(fd int, inet4 bool) (uint16, error) {
	var sa unix.Sockaddr = &unix.SockaddrInet4{}
	if !inet4 {
		sa = &unix.SockaddrInet6{}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return 0, os.NewSyscallError("bind", err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		return 0, os.NewSyscallError("getsockname", err)
	}
	switch a := got.(type) {
	case *unix.SockaddrInet4:
		return uint16(a.Port), nil
	case *unix.SockaddrInet6:
		return uint16(a.Port), nil
	}
	return 0, fmt.Errorf("getsockname: unexpected address %T", got)
}

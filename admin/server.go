package admin

import (
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/net/netutil"
)

// ServerLimits bound what one client of an admin server can hold: how long
// it may take to send a request, how long the answer may take, how long an
// idle keep-alive connection stays, how big the headers may be, and how many
// connections are served at once (further ones wait in the listen backlog
// until one ends).
type ServerLimits struct {
	ReadHeaderTimeout time.Duration // request line and headers
	ReadTimeout       time.Duration // the whole request, body included
	WriteTimeout      time.Duration // from the end of the headers to the end of the answer
	IdleTimeout       time.Duration // between requests on a kept-alive connection
	MaxHeaderBytes    int
	MaxConns          int
}

// LANLimits are the admin server's on the service address. A status page
// or a Prometheus scrape takes milliseconds; a client that needs seconds
// for its headers is a slowloris.
var LANLimits = ServerLimits{
	ReadHeaderTimeout: 5 * time.Second,
	ReadTimeout:       10 * time.Second,
	WriteTimeout:      30 * time.Second,
	IdleTimeout:       60 * time.Second,
	MaxHeaderBytes:    8 << 10,
	MaxConns:          16,
}

// SocketLimits are the unix socket's. Its write timeout leaves room for a
// 60-second CPU profile (/debug/pprof/profile?seconds=60), which Go's
// profiler refuses when the server's WriteTimeout is shorter.
var SocketLimits = ServerLimits{
	ReadHeaderTimeout: 5 * time.Second,
	ReadTimeout:       10 * time.Second,
	WriteTimeout:      75 * time.Second,
	IdleTimeout:       60 * time.Second,
	MaxHeaderBytes:    8 << 10,
	MaxConns:          8,
}

// NewServer returns an http.Server for h with the timeouts and header limit
// of l; Serve it on a listener from Listener, which applies MaxConns.
func NewServer(h http.Handler, l ServerLimits) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		ReadTimeout:       l.ReadTimeout,
		WriteTimeout:      l.WriteTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    l.MaxHeaderBytes,
	}
}

// Listener lets at most maxConns accepted connections of ln be open at once
// (netutil.LimitListener); the next Accept waits until one is closed, so
// further clients wait in the listen backlog.
func Listener(ln net.Listener, maxConns int) net.Listener {
	return netutil.LimitListener(ln, maxConns)
}

// AllowListenerFunc closes a connection from an address outside allow() as
// soon as it is accepted, before a byte of HTTP is read, and goes on
// accepting; an empty list closes every connection. The list is asked for at
// each accept, so that a reloaded configuration applies to the next
// connection. The refusals are logged at debug: a scan must not flood the
// log.
func AllowListenerFunc(ln net.Listener, allow func() []netip.Prefix, log zerolog.Logger) net.Listener {
	return &allowListener{Listener: ln, allow: allow, log: log}
}

// allowListener closes connections from addresses outside allow at accept.
type allowListener struct {
	net.Listener
	allow func() []netip.Prefix
	log   zerolog.Logger
}

func (l *allowListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if a, ok := connAddr(c.RemoteAddr()); ok && allowed(l.allow(), a) {
			return c, nil
		}
		l.log.Debug().Stringer("client", c.RemoteAddr()).Msg("admin: connection from an address not allowed, closed")
		c.Close()
	}
}

// connAddr is the IP address of a connection's remote end, unmapped.
func connAddr(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), ok
	case nil:
		return netip.Addr{}, false
	}
	return clientAddr(a.String())
}

package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NS is one named network namespace of a lab.
type NS struct {
	Name string

	mu      sync.Mutex
	started []*exec.Cmd
}

// Path is the namespace's bind mount, usable with `ip netns exec Name` or
// setns(2).
func (n *NS) Path() string { return filepath.Join(netnsDir, n.Name) }

// handle opens the namespace; the caller closes it.
func (n *NS) handle() (netns.NsHandle, error) {
	h, err := netns.GetFromPath(n.Path())
	if err != nil {
		return netns.None(), fmt.Errorf("lab: open namespace %s: %w", n.Name, err)
	}
	return h, nil
}

// Netlink returns a netlink handle operating inside the namespace, for
// callers that need more than this package offers. Close it after use.
func (n *NS) Netlink() (*netlink.Handle, error) {
	h, err := n.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("lab: netlink in %s: %w", n.Name, err)
	}
	return nh, nil
}

// Do runs f on an OS thread switched into the namespace and waits for it.
// Sockets f creates belong to the namespace for their whole life and may be
// used from any goroutine afterwards; goroutines f starts do not run in the
// namespace.
func (n *NS) Do(f func() error) error {
	target, err := n.handle()
	if err != nil {
		return err
	}
	defer target.Close()
	return onLockedThread(func(netns.NsHandle) error {
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("lab: enter namespace %s: %w", n.Name, err)
		}
		return f()
	})
}

// Start starts cmd inside the namespace: the process is forked from a
// thread that has entered it and inherits that thread's namespace. The
// caller owns cmd (Wait, signals); Lab.Close kills it if still running.
func (n *NS) Start(cmd *exec.Cmd) error {
	err := n.Do(cmd.Start)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.started = append(n.started, cmd)
	n.mu.Unlock()
	return nil
}

func (n *NS) killStarted() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, cmd := range n.started {
		// Process.Kill on a process already waited for returns
		// os.ErrProcessDone and signals nothing, so this never hits a
		// recycled PID.
		_ = cmd.Process.Kill()
	}
	n.started = nil
}

// Listen is net.Listen with the socket created inside the namespace.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// ListenPacket is net.ListenPacket with the socket created inside the
// namespace.
func (n *NS) ListenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := n.Do(func() (err error) {
		c, err = net.ListenPacket(network, addr)
		return err
	})
	return c, err
}

// Dial is net.DialTimeout with the socket created inside the namespace.
func (n *NS) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return n.DialContext(ctx, network, addr)
}

// DialContext dials from inside the namespace with the given local address
// (nil: any).
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return n.DialFrom(ctx, nil, network, addr)
}

// DialFrom dials from inside the namespace, binding to local first (nil:
// kernel's choice), e.g. to fix a UDP source port.
func (n *NS) DialFrom(ctx context.Context, local net.Addr, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		d := net.Dialer{LocalAddr: local}
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// HTTPClient returns a client whose connections originate in the namespace.
// Keep-alives are off so every request is its own connection (and NAT
// mapping). Connecting gives up after 10 s; timeout (0: none) bounds the
// whole request.
func (n *NS) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				return n.DialContext(ctx, network, addr)
			},
			DisableKeepAlives: true,
			Proxy:             nil,
		},
	}
}

// SetMTU sets the MTU of an interface inside the namespace.
func (n *NS) SetMTU(ifname string, mtu int) error {
	h, err := n.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("lab: %s: link %s: %w", n.Name, ifname, err)
	}
	if err := h.LinkSetMTU(link, mtu); err != nil {
		return fmt.Errorf("lab: %s: set MTU of %s to %d: %w", n.Name, ifname, mtu, err)
	}
	return nil
}

// AddRoute adds a route to dst via gw in the namespace's main table.
func (n *NS) AddRoute(dst netip.Prefix, gw netip.Addr) error {
	h, err := n.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	if err := addRoute(h, dst, gw); err != nil {
		return fmt.Errorf("lab: %s: %w", n.Name, err)
	}
	return nil
}

// DelRoute removes the route to dst from the namespace's main table.
func (n *NS) DelRoute(dst netip.Prefix) error {
	h, err := n.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.RouteDel(&netlink.Route{Dst: prefixIPNet(dst)}); err != nil {
		return fmt.Errorf("lab: %s: delete route %s: %w", n.Name, dst, err)
	}
	return nil
}

// onLockedThread runs f on a fresh goroutine locked to its OS thread,
// passing the thread's original namespace, and switches the thread back
// afterwards. If switching back fails the thread stays locked, and the
// runtime discards it when the goroutine ends, so no other goroutine ever
// runs in a namespace it did not ask for.
func onLockedThread(f func(orig netns.NsHandle) error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			done <- fmt.Errorf("lab: current namespace: %w", err)
			return // thread stays locked and is discarded
		}
		defer orig.Close()
		ferr := f(orig)
		if err := netns.Set(orig); err != nil {
			done <- errors.Join(ferr, fmt.Errorf("lab: return to original namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}

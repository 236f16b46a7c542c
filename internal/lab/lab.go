// Package lab builds a throw-away network of Linux network namespaces in
// which vpnmasq can be run and exercised: two LAN hosts behind a router
// namespace, and one WAN host beyond it.
//
//	ns <tag>-lan1 : eth0 192.168.77.10/24, default via 192.168.77.1
//	ns <tag>-lan2 : eth0 192.168.77.11/24, default via 192.168.77.1
//	ns <tag>-rtr  : br-lan 192.168.77.1/24 (bridge over rtr-lan1, rtr-lan2)
//	                rtr-wan 198.18.0.1/24, default via 198.18.0.2,
//	                10.20.0.0/16 via 198.18.0.2
//	ns <tag>-wan  : eth0 198.18.0.2/24, no route back to 192.168.77.0/24,
//	                lo also holds 10.20.0.1/32 (the site reached without NAT)
//
// Everything is done through netlink from inside the namespaces; no tool is
// executed, because `vpnmasq demo` uses this package on hosts that may lack
// iproute2. The only changes to the calling host's own namespace are the
// named namespaces themselves (bind mounts under /var/run/netns): veth pairs
// are created inside the router namespace with their peer placed directly in
// the neighbour namespace, so no interface ever appears on the host.
package lab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NamePrefix starts the name of every namespace a lab creates; cleanup
// functions never touch a namespace whose name lacks it.
const NamePrefix = "vmq-"

// netnsDir is where named namespaces are bind-mounted (as by `ip netns add`).
const netnsDir = "/var/run/netns"

// Interface names, fixed inside their namespaces.
const (
	HostIf      = "eth0"    // the only interface of lan1, lan2 and wan
	RouterLANIf = "br-lan"  // the router's LAN bridge
	RouterWANIf = "rtr-wan" // the router's WAN interface
)

// Addresses of the standard topology.
var (
	LANPrefix     = netip.MustParsePrefix("192.168.77.0/24")
	RouterLANAddr = netip.MustParseAddr("192.168.77.1")
	LAN1Addr      = netip.MustParseAddr("192.168.77.10")
	LAN2Addr      = netip.MustParseAddr("192.168.77.11")

	WANPrefix     = netip.MustParsePrefix("198.18.0.0/24")
	RouterWANAddr = netip.MustParseAddr("198.18.0.1")
	WANAddr       = netip.MustParseAddr("198.18.0.2")

	NoNATPrefix = netip.MustParsePrefix("10.20.0.0/16")
	NoNATAddr   = netip.MustParseAddr("10.20.0.1")
)

// Options adjust the standard topology.
type Options struct {
	// Tag names the lab; its namespaces are <Tag>-lan1 and so on. It must
	// start with NamePrefix. Empty: NamePrefix + creator PID + random hex,
	// which lets CleanupStale recognise labs whose creator died.
	Tag string
	// WANMTU is the MTU of the router–WAN link (both ends). 0 keeps 1500.
	WANMTU int
}

// Lab is one instance of the standard topology.
type Lab struct {
	Tag    string
	LAN1   *NS // 192.168.77.10
	LAN2   *NS // 192.168.77.11
	Router *NS // 192.168.77.1 on br-lan, 198.18.0.1 on rtr-wan
	WAN    *NS // 198.18.0.2, 10.20.0.1

	mu     sync.Mutex
	closed bool
}

// Namespaces returns the lab's namespaces in creation order.
func (l *Lab) Namespaces() []*NS { return []*NS{l.LAN1, l.LAN2, l.Router, l.WAN} }

// NewTag returns a fresh tag: NamePrefix, this process's PID, random hex.
func NewTag() string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand does not fail on Linux; a fixed suffix still yields a
		// valid tag, and collisions surface as "file exists" from New.
		return fmt.Sprintf("%s%d-000000", NamePrefix, os.Getpid())
	}
	return fmt.Sprintf("%s%d-%s", NamePrefix, os.Getpid(), hex.EncodeToString(b[:]))
}

// New builds the standard topology. On error it removes whatever it built.
func New(opts Options) (*Lab, error) {
	tag := opts.Tag
	if tag == "" {
		tag = NewTag()
	}
	if !strings.HasPrefix(tag, NamePrefix) || strings.ContainsAny(tag, "/ \t\n") || len(tag) > 64 {
		return nil, fmt.Errorf("lab: tag %q must start with %q and contain no slash or space", tag, NamePrefix)
	}
	if opts.WANMTU != 0 && (opts.WANMTU < 576 || opts.WANMTU > 65535) {
		return nil, fmt.Errorf("lab: WAN MTU %d out of range 576-65535", opts.WANMTU)
	}
	l := &Lab{
		Tag:    tag,
		LAN1:   &NS{Name: tag + "-lan1"},
		LAN2:   &NS{Name: tag + "-lan2"},
		Router: &NS{Name: tag + "-rtr"},
		WAN:    &NS{Name: tag + "-wan"},
	}
	var created []string
	if err := l.build(opts, &created); err != nil {
		// Remove only what this call created: a name that already existed
		// belongs to someone else.
		for _, name := range created {
			if derr := deleteNamed(name); derr != nil {
				err = errors.Join(err, derr)
			}
		}
		return nil, err
	}
	return l, nil
}

func (l *Lab) build(opts Options, created *[]string) error {
	for _, n := range l.Namespaces() {
		if err := createNamed(n.Name); err != nil {
			return fmt.Errorf("lab: create namespace %s: %w", n.Name, err)
		}
		*created = append(*created, n.Name)
		// IPv6 is off so that captures in tests see only the IPv4 traffic
		// under test, not router solicitations and MLD reports.
		if err := n.Do(disableIPv6); err != nil {
			return fmt.Errorf("lab: %s: %w", n.Name, err)
		}
	}

	handles := map[*NS]*netlink.Handle{}
	defer func() {
		for _, h := range handles {
			h.Close()
		}
	}()
	for _, n := range l.Namespaces() {
		h, err := n.Netlink()
		if err != nil {
			return err
		}
		handles[n] = h
		if err := setUp(h, "lo"); err != nil {
			return fmt.Errorf("lab: %s: %w", n.Name, err)
		}
	}
	rtr := handles[l.Router]

	// Without multicast snooping the bridge sends no IGMP of its own, which
	// would otherwise show up in captures on the LAN hosts.
	snooping := false
	bridge := &netlink.Bridge{LinkAttrs: netlink.NewLinkAttrs(), MulticastSnooping: &snooping}
	bridge.Name = RouterLANIf
	if err := rtr.LinkAdd(bridge); err != nil {
		return fmt.Errorf("lab: %s: add bridge %s: %w", l.Router.Name, RouterLANIf, err)
	}

	type wire struct {
		routerIf string
		peer     *NS
		mtu      int
		bridged  bool
	}
	wires := []wire{
		{routerIf: "rtr-lan1", peer: l.LAN1, bridged: true},
		{routerIf: "rtr-lan2", peer: l.LAN2, bridged: true},
		{routerIf: RouterWANIf, peer: l.WAN, mtu: opts.WANMTU},
	}
	for _, w := range wires {
		if err := addVeth(rtr, w.routerIf, w.peer, w.mtu); err != nil {
			return fmt.Errorf("lab: %s: %w", l.Router.Name, err)
		}
		if w.bridged {
			port, err := rtr.LinkByName(w.routerIf)
			if err != nil {
				return fmt.Errorf("lab: %s: %w", l.Router.Name, err)
			}
			if err := rtr.LinkSetMaster(port, bridge); err != nil {
				return fmt.Errorf("lab: %s: enslave %s to %s: %w", l.Router.Name, w.routerIf, RouterLANIf, err)
			}
		}
	}

	// Links first, then addresses, then routes: a gateway route needs its
	// connected route, which needs an up interface with an address.
	up := []struct {
		ns     *NS
		ifname string
	}{
		{l.Router, RouterLANIf}, {l.Router, "rtr-lan1"}, {l.Router, "rtr-lan2"}, {l.Router, RouterWANIf},
		{l.LAN1, HostIf}, {l.LAN2, HostIf}, {l.WAN, HostIf},
	}
	for _, u := range up {
		if err := setUp(handles[u.ns], u.ifname); err != nil {
			return fmt.Errorf("lab: %s: %w", u.ns.Name, err)
		}
	}

	addrs := []struct {
		ns     *NS
		ifname string
		prefix netip.Prefix
	}{
		{l.Router, RouterLANIf, netip.PrefixFrom(RouterLANAddr, LANPrefix.Bits())},
		{l.Router, RouterWANIf, netip.PrefixFrom(RouterWANAddr, WANPrefix.Bits())},
		{l.LAN1, HostIf, netip.PrefixFrom(LAN1Addr, LANPrefix.Bits())},
		{l.LAN2, HostIf, netip.PrefixFrom(LAN2Addr, LANPrefix.Bits())},
		{l.WAN, HostIf, netip.PrefixFrom(WANAddr, WANPrefix.Bits())},
		{l.WAN, "lo", netip.PrefixFrom(NoNATAddr, 32)},
	}
	for _, a := range addrs {
		if err := addAddr(handles[a.ns], a.ifname, a.prefix); err != nil {
			return fmt.Errorf("lab: %s: %w", a.ns.Name, err)
		}
	}

	routes := []struct {
		ns  *NS
		dst netip.Prefix
		via netip.Addr
	}{
		{l.LAN1, netip.Prefix{}, RouterLANAddr},
		{l.LAN2, netip.Prefix{}, RouterLANAddr},
		{l.Router, netip.Prefix{}, WANAddr},
		{l.Router, NoNATPrefix, WANAddr},
	}
	for _, r := range routes {
		if err := addRoute(handles[r.ns], r.dst, r.via); err != nil {
			return fmt.Errorf("lab: %s: %w", r.ns.Name, err)
		}
	}

	// Return only once every veth has carrier, so the first packet a
	// caller sends is not lost to a link still coming up.
	deadline := time.Now().Add(5 * time.Second)
	for _, u := range up {
		if err := waitCarrier(handles[u.ns], u.ifname, deadline); err != nil {
			return fmt.Errorf("lab: %s: %w", u.ns.Name, err)
		}
	}
	return nil
}

// Close kills the processes started through the lab's namespaces that are
// still running, then deletes the namespaces by name, which also removes
// every interface inside them. Calling it again does nothing.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	for _, n := range l.Namespaces() {
		n.killStarted()
	}
	for _, n := range l.Namespaces() {
		if err := deleteNamed(n.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Exists reports whether the namespace's name is still mounted.
func (n *NS) Exists() bool {
	_, err := os.Stat(n.Path())
	return err == nil
}

// Cleanup deletes every namespace whose name is tag or starts with tag+"-".
// It refuses tags without NamePrefix. It returns the names it deleted.
func Cleanup(tag string) ([]string, error) {
	if !strings.HasPrefix(tag, NamePrefix) || len(tag) <= len(NamePrefix) {
		return nil, fmt.Errorf("lab: refusing to clean up %q: not a lab tag", tag)
	}
	return cleanupMatching(func(name string) bool {
		return name == tag || strings.HasPrefix(name, tag+"-")
	})
}

// CleanupStale deletes namespaces left by labs whose creating process no
// longer exists (names NamePrefix<pid>-..., see NewTag). Labs of running
// processes are left alone, so it is safe while other labs are in use.
func CleanupStale() ([]string, error) {
	return cleanupMatching(func(name string) bool {
		pid, ok := creatorPID(name)
		if !ok {
			return false
		}
		_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
		return errors.Is(err, os.ErrNotExist)
	})
}

// creatorPID extracts the PID from a namespace name made from NewTag.
func creatorPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, NamePrefix)
	if !ok {
		return 0, false
	}
	pidText, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidText)
	if err != nil || pid <= 0 || strconv.Itoa(pid) != pidText {
		return 0, false
	}
	return pid, true
}

func cleanupMatching(match func(string) bool) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	var deleted []string
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, NamePrefix) || !match(name) {
			continue
		}
		if err := deleteNamed(name); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, name)
	}
	return deleted, errors.Join(errs...)
}

// createNamed creates a named namespace on a throw-away thread, so the
// calling goroutine's thread never changes namespace.
func createNamed(name string) error {
	if err := shareNetnsDir(); err != nil {
		return err
	}
	return onLockedThread(func(orig netns.NsHandle) error {
		h, err := netns.NewNamed(name)
		if err != nil {
			return err
		}
		return h.Close()
	})
}

// shareNetnsDir makes netnsDir a shared mount point of its own before the
// first namespace is mounted in it, as `ip netns add` does. Without it, the
// first `ip netns add` on the machine (from a test tool or a peer) bind-mounts
// the directory over itself after the lab's namespaces were mounted there,
// hiding them: they can then be neither reached by name nor deleted (EBUSY).
func shareNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err = unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err == nil {
			err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		}
	}
	if err != nil {
		return fmt.Errorf("lab: make %s a shared mount point: %w", netnsDir, err)
	}
	return nil
}

// deleteNamed unmounts and removes a named namespace; a name that does not
// exist is not an error.
func deleteNamed(name string) error {
	path := filepath.Join(netnsDir, name)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("lab: delete namespace %s: %w", name, err)
	}
	return nil
}

func disableIPv6() error {
	for _, f := range []string{"all", "default", "lo"} {
		path := "/proc/sys/net/ipv6/conf/" + f + "/disable_ipv6"
		err := os.WriteFile(path, []byte("1\n"), 0o644)
		if errors.Is(err, os.ErrNotExist) {
			return nil // kernel without IPv6: nothing to silence
		}
		if err != nil {
			return fmt.Errorf("disable IPv6: %w", err)
		}
	}
	return nil
}

func addVeth(h *netlink.Handle, name string, peer *NS, mtu int) error {
	peerNS, err := peer.handle()
	if err != nil {
		return err
	}
	defer peerNS.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.NewLinkAttrs(), PeerName: HostIf, PeerNamespace: netlink.NsFd(int(peerNS))}
	veth.Name = name
	if mtu != 0 {
		veth.MTU = mtu
		veth.PeerMTU = uint32(mtu)
	}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s (peer %s in %s): %w", name, HostIf, peer.Name, err)
	}
	return nil
}

func setUp(h *netlink.Handle, ifname string) error {
	link, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("link %s: %w", ifname, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", ifname, err)
	}
	return nil
}

func addAddr(h *netlink.Handle, ifname string, p netip.Prefix) error {
	link, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("link %s: %w", ifname, err)
	}
	addr := &netlink.Addr{IPNet: prefixIPNet(p)}
	if err := h.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add %s to %s: %w", p, ifname, err)
	}
	return nil
}

// addRoute adds dst via gw in the main table; a zero dst is the default route.
func addRoute(h *netlink.Handle, dst netip.Prefix, gw netip.Addr) error {
	if !dst.IsValid() {
		dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	r := &netlink.Route{Dst: prefixIPNet(dst), Gw: net.IP(gw.AsSlice())}
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("add route %s via %s: %w", dst, gw, err)
	}
	return nil
}

func waitCarrier(h *netlink.Handle, ifname string, deadline time.Time) error {
	for {
		link, err := h.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("link %s: %w", ifname, err)
		}
		state := link.Attrs().OperState
		if state == netlink.OperUp || state == netlink.OperUnknown {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("link %s still %s", ifname, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

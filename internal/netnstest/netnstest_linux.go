// Package netnstest gives tests network namespaces of their own, veth pairs
// between them and sockets inside them, so that nothing a test does touches
// the host's namespace. It is for tests only and needs root: without it
// every helper fails the test (t.Fatal) with the reason; it never skips, so
// a run without the privileges cannot pass by testing nothing.
//
// Every namespace is named after the caller's prefix, a tag chosen at random
// once per process and a counter, so that names are unique within a test
// binary and do not collide with another binary's running at the same time.
// Each is deleted when the test that made it ends.
//
// The packet path's pure packages (datapath, offload) must not import it:
// they are tested unprivileged and built for other systems.
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// RequireRoot fails the test, never skips it, unless it runs as root with
// each of tools (besides ip, which every namespace needs) on the PATH.
func RequireRoot(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("%s needs root (network namespaces, nftables, raw and packet sockets, TUN devices): run it as root, e.g. sudo go test -run '%s'", t.Name(), t.Name())
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s needs the %q tool: %v", t.Name(), tool, err)
		}
	}
}

// Run executes a command and fails the test when it fails; it returns the
// command's combined output.
func Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

var (
	processTag = func() string {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			panic(err) // crypto/rand does not fail on Linux
		}
		return hex.EncodeToString(b[:])
	}()
	made atomic.Uint32 // namespaces made by this process, for unique names
)

// NewBare creates a namespace as the kernel makes it (loopback down, IPv6
// on) and deletes it when the test ends; it returns the namespace's name,
// prefix-<tag>-<n>. A test of what the host reads about its interfaces
// wants the namespace untouched, and a test that only needs a namespace to
// itself need not change it.
func NewBare(t testing.TB, prefix string) string {
	t.Helper()
	RequireRoot(t)
	name := fmt.Sprintf("%s-%s-%d", prefix, processTag, made.Add(1))
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("deleting namespace %s: %v\n%s", name, err, out)
		}
	})
	return name
}

// New creates a namespace with loopback up and IPv6 off, so that the only
// packets on its links are the test's own, and deletes it when the test
// ends; it returns the namespace's name.
func New(t testing.TB, prefix string) string {
	t.Helper()
	name := NewBare(t, prefix)
	Run(t, "ip", "-n", name, "link", "set", "lo", "up")
	Run(t, "ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	return name
}

// Veth links two namespaces with a veth pair and addresses and brings up
// both ends.
func Veth(t testing.TB, nsA, ifA, addrA, nsB, ifB, addrB string) {
	t.Helper()
	Run(t, "ip", "link", "add", ifA, "netns", nsA, "type", "veth", "peer", "name", ifB, "netns", nsB)
	Run(t, "ip", "-n", nsA, "addr", "add", addrA, "dev", ifA)
	Run(t, "ip", "-n", nsB, "addr", "add", addrB, "dev", ifB)
	Run(t, "ip", "-n", nsA, "link", "set", ifA, "up")
	Run(t, "ip", "-n", nsB, "link", "set", ifB, "up")
}

// Do runs fn on an OS thread moved into the named namespace and returns
// its error. The thread stays locked and dies with its goroutine, so no
// other goroutine ever runs in the namespace by accident. Sockets and files
// fn opens stay in that namespace wherever they are used later. A panic in
// fn is returned as an error, so that the test's cleanup still deletes the
// namespace.
func Do(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer func() {
			if p := recover(); p != nil {
				errc <- fmt.Errorf("panic in namespace %s: %v", ns, p)
			}
		}()
		h, err := netns.GetFromName(ns)
		if err != nil {
			errc <- fmt.Errorf("opening namespace %s: %w", ns, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("entering namespace %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// MustDo is Do that fails the test on error.
func MustDo(t testing.TB, ns string, fn func() error) {
	t.Helper()
	if err := Do(ns, fn); err != nil {
		t.Fatal(err)
	}
}

// ListenUDP opens a UDP socket on addr inside a namespace, closed when the
// test ends.
func ListenUDP(t testing.TB, ns, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	MustDo(t, ns, func() error {
		a, err := net.ResolveUDPAddr("udp4", addr)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP("udp4", a)
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// DialUDP opens a UDP socket connected to to inside a namespace, closed
// when the test ends; a connected socket reports ICMP port unreachable as
// ECONNREFUSED on the next read.
func DialUDP(t testing.TB, ns, to string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	MustDo(t, ns, func() error {
		a, err := net.ResolveUDPAddr("udp4", to)
		if err != nil {
			return err
		}
		c, err = net.DialUDP("udp4", nil, a)
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// ReadUDP waits up to d for one datagram.
func ReadUDP(c *net.UDPConn, d time.Duration) ([]byte, *net.UDPAddr, error) {
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(d))
	n, from, err := c.ReadFromUDP(buf)
	if err != nil {
		return nil, nil, err
	}
	return buf[:n], from, nil
}

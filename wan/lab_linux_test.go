package wan

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// Test labs: every test that touches the network builds its own network
// namespaces (named vmq-rt-<random>), veth pairs between them and deletes
// them by name in t.Cleanup. Nothing runs in the host's namespace.

// requireRoot fails the test (never skips it) when it cannot run.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("%s needs root (network namespaces, nftables, raw and packet sockets): run it as root, e.g. sudo go test ./wan/ -run '%s'", t.Name(), t.Name())
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s needs the %q tool to inspect the lab: %v", t.Name(), tool, err)
		}
	}
}

// run executes a command and fails the test when it fails.
func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newLabNetns creates a namespace with loopback up and IPv6 off (so the
// only packets on its links are the test's own) and deletes it at cleanup.
func newLabNetns(t testing.TB, role string) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := "vmq-rt-" + role + "-" + hex.EncodeToString(b[:])
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("deleting namespace %s: %v\n%s", name, err, out)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	run(t, "ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	return name
}

// vethBetween links two namespaces with a veth pair and addresses both ends.
func vethBetween(t testing.TB, nsA, ifA, addrA, nsB, ifB, addrB string) {
	t.Helper()
	run(t, "ip", "link", "add", ifA, "netns", nsA, "type", "veth", "peer", "name", ifB, "netns", nsB)
	run(t, "ip", "-n", nsA, "addr", "add", addrA, "dev", ifA)
	run(t, "ip", "-n", nsB, "addr", "add", addrB, "dev", ifB)
	run(t, "ip", "-n", nsA, "link", "set", ifA, "up")
	run(t, "ip", "-n", nsB, "link", "set", ifB, "up")
}

// inNetns runs fn on an OS thread moved into the named namespace. The
// thread stays locked and dies with its goroutine, so no other goroutine
// ever runs in the lab namespace by accident. Sockets and files fn opens
// stay in that namespace wherever they are used later.
func inNetns(t testing.TB, ns string, fn func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
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

// mustInNetns is inNetns that fails the test on error.
func mustInNetns(t testing.TB, ns string, fn func() error) {
	t.Helper()
	if err := inNetns(t, ns, fn); err != nil {
		t.Fatal(err)
	}
}

// listenUDPIn opens a UDP socket inside a namespace.
func listenUDPIn(t *testing.T, ns, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	mustInNetns(t, ns, func() error {
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

// readUDP waits up to d for one datagram.
func readUDP(c *net.UDPConn, d time.Duration) ([]byte, *net.UDPAddr, error) {
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(d))
	n, from, err := c.ReadFromUDP(buf)
	if err != nil {
		return nil, nil, err
	}
	return buf[:n], from, nil
}

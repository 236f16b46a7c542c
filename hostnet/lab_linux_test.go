package hostnet

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vpnmasq/vpnmasq/internal/netnstest"
)

// Test labs: every test that touches the network builds its own network
// namespaces (netnstest, named vmq-hn-<role>-...), veth pairs between them
// and deletes them in t.Cleanup. Nothing runs in the host's namespace.

// openTestTUN creates a TUN device (IFF_TUN, no packet info) the way the
// product's TUN does, non-blocking so reads honour deadlines. It must be
// called inside the target namespace.
func openTestTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// readTUN waits up to d for one packet from a TUN device.
func readTUN(f *os.File, d time.Duration) ([]byte, error) {
	buf := make([]byte, 65536)
	f.SetReadDeadline(time.Now().Add(d))
	n, err := f.Read(buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// readSysctlIn reads a sysctl of a lab namespace.
func readSysctlIn(t testing.TB, ns, key string) string {
	t.Helper()
	return strings.TrimSpace(netnstest.Run(t, "ip", "netns", "exec", ns, "cat", "/proc/sys/"+key))
}

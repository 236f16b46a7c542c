package hostnet

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vpnmasq/vpnmasq/internal/netnstest"
)

func TestSysctlEnsureAndUndo(t *testing.T) {
	netnstest.RequireRoot(t, "nft")
	tests := []struct {
		name        string
		start       string // ip_forward before
		wantRestore string // what ensureSysctl remembers
		wantAfter   string // ip_forward after undo
	}{
		{"a value that is already right is left alone and not restored", "1", "", "1"},
		{"a changed value is written back by undo", "0", "0", "0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := netnstest.New(t, "vmq-hn-sys")
			netnstest.Run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward="+tt.start)
			var change *sysctlChange
			netnstest.MustDo(t, ns, func() error {
				var err error
				change, err = ensureSysctl(sysctlIPForward, "1")
				return err
			})
			if got := readSysctlIn(t, ns, "net/ipv4/ip_forward"); got != "1" {
				t.Fatalf("ip_forward=%s after ensureSysctl, want 1", got)
			}
			if change.restore != tt.wantRestore {
				t.Fatalf("remembered %q to restore, want %q", change.restore, tt.wantRestore)
			}
			// undo from this goroutine, outside the namespace: the open
			// file still addresses the lab's sysctl.
			if err := change.undo(); err != nil {
				t.Fatalf("undo: %v", err)
			}
			if got := readSysctlIn(t, ns, "net/ipv4/ip_forward"); got != tt.wantAfter {
				t.Fatalf("ip_forward=%s after undo, want %s", got, tt.wantAfter)
			}
		})
	}

	rpTests := []struct {
		name      string
		all, dev  string
		wantDev   string
		wantAfter string
	}{
		{"a device without filtering is left alone", "0", "0", "0", "0"},
		{"a loose device is left alone", "0", "2", "2", "2"},
		{"a strict device becomes loose and is restored", "0", "1", "2", "1"},
		{"strict everywhere makes the device loose", "1", "0", "2", "0"},
		{"a loose device wins over strict everywhere and is left alone", "1", "2", "2", "2"},
	}
	for _, tt := range rpTests {
		t.Run("rp_filter all="+tt.all+" dev="+tt.dev+": "+tt.name, func(t *testing.T) {
			ns := netnstest.New(t, "vmq-hn-sys")
			netnstest.Run(t, "ip", "-n", ns, "link", "add", "rp0", "type", "veth", "peer", "name", "rp1")
			netnstest.Run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter="+tt.all, "net.ipv4.conf.rp0.rp_filter="+tt.dev)
			var change *sysctlChange
			netnstest.MustDo(t, ns, func() error {
				var err error
				change, err = ensureLooseRPFilter("rp0")
				return err
			})
			if got := readSysctlIn(t, ns, "net/ipv4/conf/rp0/rp_filter"); got != tt.wantDev {
				t.Fatalf("rp0 rp_filter=%s, want %s", got, tt.wantDev)
			}
			if err := change.undo(); err != nil {
				t.Fatal(err)
			}
			if got := readSysctlIn(t, ns, "net/ipv4/conf/rp0/rp_filter"); got != tt.wantAfter {
				t.Fatalf("rp0 rp_filter=%s after undo, want %s", got, tt.wantAfter)
			}
		})
	}

	t.Run("undo of a device sysctl whose device is gone succeeds", func(t *testing.T) {
		ns := netnstest.New(t, "vmq-hn-sys")
		netnstest.Run(t, "ip", "-n", ns, "link", "add", "gone0", "type", "veth", "peer", "name", "gone1")
		var change *sysctlChange
		netnstest.MustDo(t, ns, func() error {
			var err error
			change, err = ensureSysctl(sysctlRPFilterKey("gone0"), "2")
			return err
		})
		netnstest.Run(t, "ip", "-n", ns, "link", "del", "gone0")
		if err := change.undo(); err != nil {
			t.Fatalf("undo after the device went away: %v", err)
		}
	})
	t.Run("a missing sysctl is an error naming it", func(t *testing.T) {
		ns := netnstest.New(t, "vmq-hn-sys")
		err := netnstest.Do(ns, func() error {
			_, err := ensureSysctl(sysctlRPFilterKey("nosuch0"), "2")
			return err
		})
		if err == nil || !strings.Contains(err.Error(), "net.ipv4.conf.nosuch0.rp_filter") {
			t.Fatalf("got %v, want an error naming net.ipv4.conf.nosuch0.rp_filter", err)
		}
	})
}

// inNetnsWithReadOnlySys runs fn in the namespace on a thread that also has
// its own mount namespace with /proc/sys read-only, as in a container
// started without --sysctl. The thread dies with its goroutine.
func inNetnsWithReadOnlySys(t *testing.T, ns string, fn func() error) error {
	t.Helper()
	return netnstest.Do(ns, func() error {
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return err
		}
		// Private first, so the read-only remount stays on this thread.
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return err
		}
		if err := unix.Mount("/proc/sys", "/proc/sys", "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return err
		}
		if err := unix.Mount("", "/proc/sys", "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return err
		}
		return fn()
	})
}

func TestSysctlReadOnlyProcSysExplainsTheFix(t *testing.T) {
	lab := newHostLab(t)
	lab.openTUN(t)
	err := inNetnsWithReadOnlySys(t, lab.router, func() error {
		h, err := Setup(lab.spec())
		if err == nil {
			h.Close()
		}
		return err
	})
	if err == nil {
		t.Fatal("Setup succeeded with /proc/sys read-only and forwarding off")
	}
	if !strings.Contains(err.Error(), "--sysctl net.ipv4.ip_forward=1") {
		t.Fatalf("error %q does not tell how to fix it", err)
	}
	if left := lab.state(t).leftovers(); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}

	t.Run("with forwarding on but accept_local unset a read-only /proc/sys it fails and says how to fix it", func(t *testing.T) {
		netnstest.Run(t, "ip", "netns", "exec", lab.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		err := inNetnsWithReadOnlySys(t, lab.router, func() error {
			h, err := Setup(lab.spec())
			if err == nil {
				h.Close()
			}
			return err
		})
		if err == nil || !strings.Contains(err.Error(), "--sysctl net.ipv4.conf.all.accept_local=1") {
			t.Fatalf("got %v, want an error pointing at net.ipv4.conf.all.accept_local", err)
		}
	})
	t.Run("with forwarding on, accept_local on for all and reverse path filtering not strict a read-only /proc/sys is fine", func(t *testing.T) {
		netnstest.Run(t, "ip", "netns", "exec", lab.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		netnstest.Run(t, "ip", "netns", "exec", lab.router, "sysctl", "-qw", "net.ipv4.conf.all.accept_local=1")
		err := inNetnsWithReadOnlySys(t, lab.router, func() error {
			h, err := Setup(lab.spec())
			if err != nil {
				return err
			}
			return h.Close()
		})
		if err != nil {
			t.Fatalf("Setup with nothing to change: %v", err)
		}
	})
	t.Run("with strict reverse path filtering a read-only /proc/sys fails and says how to fix it", func(t *testing.T) {
		netnstest.Run(t, "ip", "netns", "exec", lab.router, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
		err := inNetnsWithReadOnlySys(t, lab.router, func() error {
			h, err := Setup(lab.spec())
			if err == nil {
				h.Close()
			}
			return err
		})
		if err == nil || !strings.Contains(err.Error(), "--sysctl net.ipv4.conf.default.rp_filter=2") {
			t.Fatalf("got %v, want an error pointing at net.ipv4.conf.default.rp_filter", err)
		}
	})
}

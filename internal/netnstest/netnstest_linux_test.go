package netnstest

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// exists reports whether the named namespace is listed by ip netns.
func exists(t *testing.T, name string) bool {
	t.Helper()
	for _, line := range strings.Split(Run(t, "ip", "netns", "list"), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return true
		}
	}
	return false
}

func TestNamespaces(t *testing.T) {
	RequireRoot(t)
	var made []string
	t.Run("each name is new, starts with the prefix and is deleted with its test", func(t *testing.T) {
		made = append(made, NewBare(t, "vmq-nst"), New(t, "vmq-nst"))
		if made[0] == made[1] || !strings.HasPrefix(made[0], "vmq-nst-") || !strings.HasPrefix(made[1], "vmq-nst-") {
			t.Errorf("names %q", made)
		}
		for _, name := range made {
			if !exists(t, name) {
				t.Errorf("%s not created", name)
			}
		}
	})
	for _, name := range made {
		if exists(t, name) {
			t.Errorf("%s left behind after its test", name)
		}
	}
	t.Run("New brings loopback up and turns IPv6 off, NewBare leaves both", func(t *testing.T) {
		bare, set := NewBare(t, "vmq-nst"), New(t, "vmq-nst")
		if out := Run(t, "ip", "-n", bare, "link", "show", "lo"); strings.Contains(out, ",UP") {
			t.Errorf("bare loopback is up: %s", out)
		}
		if out := Run(t, "ip", "-n", set, "link", "show", "lo"); !strings.Contains(out, ",UP") {
			t.Errorf("loopback is down: %s", out)
		}
		out, err := exec.Command("ip", "netns", "exec", set, "cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "1" {
			t.Errorf("disable_ipv6 %q, %v", out, err)
		}
	})
	t.Run("Do runs in the namespace and returns fn's error or panic", func(t *testing.T) {
		a, b := New(t, "vmq-nst"), New(t, "vmq-nst")
		Veth(t, a, "nst0", "198.18.9.1/24", b, "nst1", "198.18.9.2/24")
		if err := Do(a, func() error {
			out, err := exec.Command("ip", "-o", "addr", "show", "dev", "nst0").CombinedOutput()
			if err != nil || !strings.Contains(string(out), "198.18.9.1/24") {
				return errors.New("nst0 not seen from inside: " + string(out))
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		want := errors.New("from fn")
		if err := Do(a, func() error { return want }); err != want {
			t.Errorf("got %v, want fn's error", err)
		}
		if err := Do(a, func() error { panic("boom") }); err == nil || !strings.Contains(err.Error(), "boom") {
			t.Errorf("got %v, want the panic as an error", err)
		}
		if err := Do("vmq-nst-no-such", func() error { return nil }); err == nil {
			t.Error("entering a missing namespace succeeded")
		}
	})
	t.Run("UDP sockets opened inside talk across the veth", func(t *testing.T) {
		a, b := New(t, "vmq-nst"), New(t, "vmq-nst")
		Veth(t, a, "nst0", "198.18.9.1/24", b, "nst1", "198.18.9.2/24")
		l := ListenUDP(t, b, "198.18.9.2:9999")
		c := DialUDP(t, a, "198.18.9.2:9999")
		if _, err := c.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		got, from, err := ReadUDP(l, 3*time.Second)
		if err != nil || string(got) != "hi" || from.IP.String() != "198.18.9.1" {
			t.Errorf("read %q from %v: %v", got, from, err)
		}
	})
}

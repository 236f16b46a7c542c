package lab

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "FAIL: the lab tests create network namespaces and must run as root (e.g. sudo go test ./internal/lab/)")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func newLab(t *testing.T, opts Options) *Lab {
	t.Helper()
	l, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

func TestStandardTopologyReachability(t *testing.T) {
	l := newLab(t, Options{})
	tests := []struct {
		name      string
		from      *NS
		to        netip.Addr
		reachable bool
	}{
		{"lan1 reaches the router's LAN address", l.LAN1, RouterLANAddr, true},
		{"lan2 reaches the router's LAN address", l.LAN2, RouterLANAddr, true},
		{"lan1 reaches lan2 across the bridge", l.LAN1, LAN2Addr, true},
		{"router reaches the WAN host", l.Router, WANAddr, true},
		{"router reaches the no-NAT site via the WAN host", l.Router, NoNATAddr, true},
		{"WAN host has no route to the LAN", l.WAN, LAN1Addr, false},
		{"lan1 gets no answer from the WAN host without a router", l.LAN1, WANAddr, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Ping(tc.from, tc.to, 2, 500*time.Millisecond)
			got := err == nil && res.Received > 0
			if got != tc.reachable {
				t.Errorf("ping %s from %s: reachable=%v (result %+v, err %v), want %v", tc.to, tc.from.Name, got, res, err, tc.reachable)
			}
		})
	}
}

func TestInterfacesHaveTheirFixedNamesAndAddresses(t *testing.T) {
	l := newLab(t, Options{})
	tests := []struct {
		name   string
		ns     *NS
		ifname string
		addr   netip.Prefix
		master string
	}{
		{"lan1 eth0 has 192.168.77.10/24", l.LAN1, HostIf, netip.MustParsePrefix("192.168.77.10/24"), ""},
		{"lan2 eth0 has 192.168.77.11/24", l.LAN2, HostIf, netip.MustParsePrefix("192.168.77.11/24"), ""},
		{"router br-lan has 192.168.77.1/24", l.Router, RouterLANIf, netip.MustParsePrefix("192.168.77.1/24"), ""},
		{"router rtr-wan has 198.18.0.1/24", l.Router, RouterWANIf, netip.MustParsePrefix("198.18.0.1/24"), ""},
		{"router rtr-lan1 is a port of br-lan", l.Router, "rtr-lan1", netip.Prefix{}, RouterLANIf},
		{"router rtr-lan2 is a port of br-lan", l.Router, "rtr-lan2", netip.Prefix{}, RouterLANIf},
		{"wan eth0 has 198.18.0.2/24", l.WAN, HostIf, netip.MustParsePrefix("198.18.0.2/24"), ""},
		{"wan lo has the no-NAT site 10.20.0.1/32", l.WAN, "lo", netip.MustParsePrefix("10.20.0.1/32"), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := tc.ns.Netlink()
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			link, err := h.LinkByName(tc.ifname)
			if err != nil {
				t.Fatalf("link %s: %v", tc.ifname, err)
			}
			if tc.master != "" {
				master, err := h.LinkByName(tc.master)
				if err != nil {
					t.Fatal(err)
				}
				if link.Attrs().MasterIndex != master.Attrs().Index {
					t.Errorf("%s master index %d, want %s (%d)", tc.ifname, link.Attrs().MasterIndex, tc.master, master.Attrs().Index)
				}
			}
			if !tc.addr.IsValid() {
				return
			}
			addrs, err := h.AddrList(link, syscall.AF_INET)
			if err != nil {
				t.Fatal(err)
			}
			var found []string
			for _, a := range addrs {
				found = append(found, a.IPNet.String())
				if a.IPNet.String() == tc.addr.String() {
					return
				}
			}
			t.Errorf("%s addresses %v, want %s among them", tc.ifname, found, tc.addr)
		})
	}
}

func TestWANMTUOptionSetsBothEndsOfTheWANLink(t *testing.T) {
	l := newLab(t, Options{WANMTU: 1280})
	for _, side := range []struct {
		name   string
		ns     *NS
		ifname string
	}{{"router rtr-wan has MTU 1280", l.Router, RouterWANIf}, {"wan eth0 has MTU 1280", l.WAN, HostIf}} {
		t.Run(side.name, func(t *testing.T) {
			h, err := side.ns.Netlink()
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			link, err := h.LinkByName(side.ifname)
			if err != nil {
				t.Fatal(err)
			}
			if got := link.Attrs().MTU; got != 1280 {
				t.Errorf("MTU %d, want 1280", got)
			}
		})
	}
	t.Run("SetMTU changes an interface later", func(t *testing.T) {
		if err := l.LAN1.SetMTU(HostIf, 1400); err != nil {
			t.Fatal(err)
		}
		h, err := l.LAN1.Netlink()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		link, err := h.LinkByName(HostIf)
		if err != nil {
			t.Fatal(err)
		}
		if got := link.Attrs().MTU; got != 1400 {
			t.Errorf("MTU %d, want 1400", got)
		}
	})
}

func TestCloseRemovesAllNamespacesAndIsIdempotent(t *testing.T) {
	l, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range l.Namespaces() {
		if !n.Exists() {
			t.Errorf("%s missing after New", n.Name)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatalf("first Close: %v", err)
	}
	for _, n := range l.Namespaces() {
		if n.Exists() {
			t.Errorf("%s still exists after Close", n.Name)
		}
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// On a freshly booted machine the namespace directory is no mount point;
// the first `ip netns add` (run by a peer's tooling) bind-mounts it over
// itself, which used to hide the namespaces a lab had already mounted there,
// so that Close failed with EBUSY and left them behind.
func TestNamespacesSurviveALaterIPNetnsAdd(t *testing.T) {
	l, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	shared := false
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) > 6 && (f[4] == "/run/netns" || f[4] == netnsDir) && strings.Contains(line, " shared:") {
			shared = true
		}
	}
	if !shared {
		t.Errorf("%s is not a shared mount point after New", netnsDir)
	}
	scratch := l.Tag + "-scratch"
	if out, err := exec.Command("ip", "netns", "add", scratch).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	if out, err := exec.Command("ip", "netns", "del", scratch).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del: %v: %s", err, out)
	}
	for _, n := range l.Namespaces() {
		if !n.Exists() {
			t.Errorf("%s hidden after ip netns add", n.Name)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, n := range l.Namespaces() {
		if n.Exists() {
			t.Errorf("%s still exists after Close", n.Name)
		}
	}
}

func TestNewRejectsBadOptionsAndLeavesNothingBehind(t *testing.T) {
	taken := NewTag()
	if err := createNamed(taken + "-wan"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteNamed(taken + "-wan") })

	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"tag without the lab prefix", Options{Tag: "prod-1"}, "must start with"},
		{"tag with a slash", Options{Tag: NamePrefix + "a/b"}, "no slash"},
		{"WAN MTU below 576", Options{WANMTU: 100}, "out of range"},
		{"a namespace name already in use", Options{Tag: taken}, "file exists"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, err := New(tc.opts)
			if err == nil {
				l.Close()
				t.Fatalf("New(%+v) succeeded, want error containing %q", tc.opts, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to contain %q", err, tc.want)
			}
			if tc.opts.Tag == "" {
				return
			}
			for _, role := range []string{"lan1", "lan2", "rtr"} {
				if (&NS{Name: tc.opts.Tag + "-" + role}).Exists() {
					t.Errorf("namespace %s-%s left behind", tc.opts.Tag, role)
				}
			}
		})
	}
	if !(&NS{Name: taken + "-wan"}).Exists() {
		t.Error("a failed New deleted a namespace it had not created")
	}
}

func TestStartRunsTheProcessInsideTheNamespace(t *testing.T) {
	l := newLab(t, Options{})
	var want syscall.Stat_t
	if err := syscall.Stat(l.Router.Path(), &want); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("readlink", "/proc/self/ns/net")
	out := &strings.Builder{}
	cmd.Stdout = out
	if err := l.Router.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got, wantText := strings.TrimSpace(out.String()), fmt.Sprintf("net:[%d]", want.Ino); got != wantText {
		t.Errorf("child's namespace %s, want %s (%s)", got, wantText, l.Router.Name)
	}
}

func TestCloseKillsProcessesStillRunning(t *testing.T) {
	l, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cmd := exec.Command("sleep", "60")
	if err := l.WAN.Start(cmd); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("sleep still running 5s after Close")
	}
}

func TestSocketsCreatedInNamespacesTalkAcrossTheLab(t *testing.T) {
	l := newLab(t, Options{})
	t.Run("TCP from router to a listener in the WAN namespace", func(t *testing.T) {
		ln, err := l.WAN.Listen("tcp4", "198.18.0.2:9000")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s", c.RemoteAddr())
			c.Close()
		}()
		c, err := l.Router.Dial("tcp4", "198.18.0.2:9000", 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(b), "198.18.0.1:") {
			t.Errorf("server saw %q, want 198.18.0.1:*", b)
		}
	})
	t.Run("HTTP blob from lan1 to a server on the router matches BlobSHA256", func(t *testing.T) {
		srv, err := ServeHTTP(l.Router, "192.168.77.1:8000", "router")
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		const size = 3<<20 + 7
		resp, err := l.LAN1.HTTPClient(10 * time.Second).Get(fmt.Sprintf("http://192.168.77.1:8000/blob?bytes=%d", size))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := newHash()
		n, err := io.Copy(h, resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if n != size || h.sum() != BlobSHA256(size) {
			t.Errorf("got %d bytes, sha256 match %v; want %d bytes matching", n, h.sum() == BlobSHA256(size), size)
		}
		if peers := srv.Peers(); len(peers) != 1 || peers[0].Addr() != LAN1Addr {
			t.Errorf("server peers %v, want one from %s", peers, LAN1Addr)
		}
	})
	t.Run("UDP echo answers from a fixed source port", func(t *testing.T) {
		echo, err := ServeUDPEcho(l.Router, "192.168.77.1:7")
		if err != nil {
			t.Fatal(err)
		}
		defer echo.Close()
		if _, err := UDPRoundTrip(l.LAN2, "0.0.0.0:40000", "192.168.77.1:7", []byte("hi"), 3, time.Second); err != nil {
			t.Fatal(err)
		}
		want := netip.MustParseAddrPort("192.168.77.11:40000")
		if peers := echo.Peers(); len(peers) != 1 || peers[0] != want {
			t.Errorf("echo peers %v, want [%s]", peers, want)
		}
	})
	t.Run("route added with AddRoute lets the WAN host reach the LAN until DelRoute", func(t *testing.T) {
		if err := l.WAN.AddRoute(LANPrefix, RouterWANAddr); err != nil {
			t.Fatal(err)
		}
		if res, err := Ping(l.WAN, RouterLANAddr, 2, 500*time.Millisecond); err != nil || res.Received == 0 {
			t.Errorf("WAN -> router LAN address with route: %+v %v", res, err)
		}
		if err := l.WAN.DelRoute(LANPrefix); err != nil {
			t.Fatal(err)
		}
		if res, err := Ping(l.WAN, RouterLANAddr, 1, 300*time.Millisecond); err == nil && res.Received > 0 {
			t.Errorf("WAN -> router LAN address answered after DelRoute")
		}
	})
}

func TestCleanupStaleRemovesOnlyLabsOfDeadProcesses(t *testing.T) {
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadTag := fmt.Sprintf("%s%d-dead", NamePrefix, dead.Process.Pid)
	orphan := newLab(t, Options{Tag: deadTag})
	alive := newLab(t, Options{})

	deleted, err := CleanupStale()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range orphan.Namespaces() {
		if n.Exists() {
			t.Errorf("%s of a dead process survived CleanupStale (deleted %v)", n.Name, deleted)
		}
	}
	for _, n := range alive.Namespaces() {
		if !n.Exists() {
			t.Errorf("%s of this live process was deleted by CleanupStale", n.Name)
		}
	}

	t.Run("Cleanup by tag removes one lab", func(t *testing.T) {
		deleted, err := Cleanup(alive.Tag)
		if err != nil {
			t.Fatal(err)
		}
		if len(deleted) != 4 {
			t.Errorf("Cleanup(%s) deleted %v, want 4 namespaces", alive.Tag, deleted)
		}
	})
	t.Run("Cleanup refuses a tag without the lab prefix", func(t *testing.T) {
		if _, err := Cleanup("x"); err == nil {
			t.Error("Cleanup(\"x\") succeeded")
		}
	})
}

func TestDialTimesOutInsteadOfHanging(t *testing.T) {
	l := newLab(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	// 198.18.0.3 does not exist: ARP goes unanswered.
	_, err := l.Router.DialContext(ctx, "tcp4", "198.18.0.3:80")
	if err == nil {
		t.Fatal("dial to a missing host succeeded")
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("dial took %v", el)
	}
}

type sha256Writer struct{ h hash.Hash }

func newHash() *sha256Writer                        { return &sha256Writer{sha256.New()} }
func (w *sha256Writer) Write(p []byte) (int, error) { return w.h.Write(p) }
func (w *sha256Writer) sum() (s [32]byte)           { w.h.Sum(s[:0]); return s }

func TestOnlyLabNamesCountAsLabsForCleanup(t *testing.T) {
	tests := []struct {
		name    string
		wantPID int
		wantLab bool
	}{
		{"vmq-1234-abcdef-lan1", 1234, true},
		{"vmq-1234-dead", 1234, true},
		{"vmq-rt-peer-7c1ac40d", 0, false},
		{"vmqs-lan1", 0, false},
		{"vmq-0-abc", 0, false},
		{"vmq-0012-abc", 0, false},
		{"vmq-1234", 0, false},
		{"other-1234-abc", 0, false},
	}
	for _, tc := range tests {
		what := tc.name + " is not a lab's namespace"
		if tc.wantLab {
			what = fmt.Sprintf("%s is a namespace of a lab made by PID %d", tc.name, tc.wantPID)
		}
		t.Run(what, func(t *testing.T) {
			pid, ok := creatorPID(tc.name)
			if ok != tc.wantLab || pid != tc.wantPID {
				t.Errorf("creatorPID(%q) = %d, %v; want %d, %v", tc.name, pid, ok, tc.wantPID, tc.wantLab)
			}
		})
	}
}

func TestKernelMasqueradeMasqueradesTheLANOutOfTheWAN(t *testing.T) {
	l := newLab(t, Options{})
	if err := l.KernelMasquerade(); err != nil {
		t.Fatal(err)
	}
	pc, err := l.WAN.ListenPacket("udp4", "198.18.0.2:9001")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := l.LAN1.Dial("udp4", "198.18.0.2:9001", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("through the kernel")); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 64)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("nothing arrived through the kernel's masquerade: %v", err)
	}
	if got := from.(*net.UDPAddr).IP.String(); got != RouterWANAddr.String() || string(buf[:n]) != "through the kernel" {
		t.Fatalf("%q from %v, want it from %v", buf[:n], from, RouterWANAddr)
	}
}

package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// reloadBlob is the running transfer's size; at reloadRate it takes about
// ten seconds, long enough to span the reloads.
const (
	reloadBlob = 12 << 20
	reloadRate = "1200k"
)

// configPath is the file the router was started with (--config).
func (r *router) configPath() string {
	i := slices.Index(r.cmd.Args, "--config")
	if i < 0 || i+1 >= len(r.cmd.Args) {
		r.t.Fatal("the router was started without --config")
	}
	return r.cmd.Args[i+1]
}

// adminSocket is the admin socket withAdminSocket put in the router's file.
func (r *router) adminSocket() string {
	b, err := os.ReadFile(r.configPath())
	if err != nil {
		r.t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^admin_socket = "(.*)"$`).FindSubmatch(b)
	if m == nil {
		r.t.Fatalf("no admin_socket in %s", r.configPath())
	}
	return string(m[1])
}

// rewriteConfig replaces the router's file with text, keeping its admin
// socket.
func (r *router) rewriteConfig(t *testing.T, text string) {
	t.Helper()
	text = withAdminSocket(text, r.adminSocket())
	// The [state] that launchRouter gave the router stays: it is only read
	// at start, and a reload would report any change of it.
	if old, err := os.ReadFile(r.configPath()); err == nil && !strings.Contains(text, "[state]") {
		if i := strings.Index(string(old), "\n[state]\n"); i >= 0 {
			text += string(old[i:])
		}
	}
	if err := os.WriteFile(r.configPath(), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// sighup sends SIGHUP and waits for the router's verdict on the file:
// "configuration reloaded" or "reload refused; ...". It returns the
// log lines from the signal on.
func (r *router) sighup(t *testing.T, want string) []logLine {
	t.Helper()
	from := r.log.len()
	if err := r.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("SIGHUP: %v", err)
	}
	if _, ok := r.log.waitFor(want, from, 10*time.Second, r.exited); !ok {
		state := "running"
		if r.hasExited() {
			state = "exited: " + r.cmd.ProcessState.String()
		}
		t.Fatalf("no %q logged within 10 s of SIGHUP (vpnmasq %s)", want, state)
	}
	lines, _, _ := r.log.since(from)
	return lines
}

// slowTransfer downloads reloadBlob bytes from the WAN host's server to
// lan1 at reloadRate in the background; wait returns its error.
type slowTransfer struct {
	done chan error
	msg  string
	end  time.Time
}

func startSlowTransfer(l *lab.Lab) *slowTransfer {
	s := &slowTransfer{done: make(chan error, 1)}
	go func() {
		want := lab.BlobSHA256(reloadBlob)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		got := newSHA256Counter()
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.LAN1.Name,
			"curl", "--silent", "--show-error", "--fail", "--connect-timeout", "5", "--limit-rate", reloadRate,
			"--output", "-", fmt.Sprintf("http://%s/blob?bytes=%d", lab.WANAddr, reloadBlob))
		cmd.Stdout, cmd.Stderr = got, &stderr
		start := time.Now()
		if err := cmd.Run(); err != nil {
			s.done <- fmt.Errorf("transfer: curl: %v after %v, %d bytes: %s", err, time.Since(start).Round(time.Millisecond), got.n, stderr.String())
			return
		}
		if got.n != reloadBlob || got.Sum() != want {
			s.done <- fmt.Errorf("transfer: %d bytes, SHA-256 match %v", got.n, got.Sum() == want)
			return
		}
		s.end = time.Now()
		s.msg = fmt.Sprintf("the running transfer completed: %d bytes in %v, SHA-256 matches", got.n, time.Since(start).Round(time.Millisecond))
		s.done <- nil
	}()
	return s
}

// wait waits for the transfer and checks that it was still under way at
// the time given (the reload's).
func (s *slowTransfer) wait(t *testing.T, spans time.Time) {
	t.Helper()
	if err := <-s.done; err != nil {
		t.Fatal(err)
	}
	if !s.end.After(spans) {
		t.Fatalf("the transfer ended before the reload; nothing was tested (%s)", s.msg)
	}
	t.Log(s.msg)
}

// getPeer fetches /peer through a forward from the WAN host.
func getPeer(t *testing.T, l *lab.Lab, port int) (string, int) {
	t.Helper()
	return runIn(t, l.WAN, 15*time.Second, "curl", "--silent", "--show-error", "--fail",
		"--connect-timeout", "3", "--max-time", "5", fmt.Sprintf("http://%s:%d/peer", lab.RouterWANAddr, port))
}

// guardHolds reports whether the router's nftables guard and hairpin sets
// hold port.
func guardHolds(t *testing.T, l *lab.Lab, port int) (guard, hairpin bool) {
	t.Helper()
	has := func(family, set string) bool {
		out, code := runIn(t, l.Router, 10*time.Second, "nft", "list", "set", family, "vpnmasq_vpnmasq0", set)
		if code != 0 {
			t.Fatalf("nft list set %s %s: exit %d: %s", family, set, code, out)
		}
		return regexp.MustCompile(fmt.Sprintf(`\b%d\b`, port)).MatchString(out)
	}
	return has("ip", "nat_ports"), has("netdev", "hairpin_ports")
}

// labConfigPlus8081 is labConfig with a second forward, WAN 8081 to lan2:81.
var labConfigPlus8081 = labConfig + `
[[forward]]
proto = "tcp"
port = 8081
to = "192.168.77.11:81"
`

func TestReloadOnSIGHUP(t *testing.T) {
	l := newLab(t, lab.Options{})
	before := snapshotRouter(t, l.Router)
	wanWeb, err := lab.ServeHTTP(l.WAN, "0.0.0.0:80", "wan")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wanWeb.Close() })
	for _, srv := range []struct {
		ns   *lab.NS
		addr string
	}{{l.LAN1, "0.0.0.0:80"}, {l.LAN2, "0.0.0.0:81"}} {
		web, err := lab.ServeHTTP(srv.ns, srv.addr, srv.ns.Name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { web.Close() })
	}
	r := startRouter(t, l, labConfig)

	t.Run("SIGHUP adding a forward: the forward works and a running transfer goes on", func(t *testing.T) {
		if out, code := getPeer(t, l, 8081); code == 0 {
			t.Fatalf("WAN 8081 answered before its forward exists: %s", out)
		}
		transfer := startSlowTransfer(l)
		time.Sleep(2 * time.Second) // well under way
		r.rewriteConfig(t, labConfigPlus8081)
		reloaded := time.Now()
		lines := r.sighup(t, "configuration reloaded")
		if !slices.ContainsFunc(lines, func(l logLine) bool {
			return strings.Contains(l.Raw, "forward added: tcp 8081 → 192.168.77.11:81")
		}) {
			t.Errorf("the reload's log does not name the new forward:\n%s", r.log)
		}
		out, code := getPeer(t, l, 8081)
		if code != 0 || !strings.HasPrefix(strings.TrimSpace(out), lab.WANAddr.String()+":") {
			t.Errorf("GET 198.18.0.1:8081 from the WAN after the reload: exit %d: %s", code, out)
		}
		if out, code := getPeer(t, l, 8080); code != 0 {
			t.Errorf("the old forward 8080 stopped working: exit %d: %s", code, out)
		}
		if guard, hairpin := guardHolds(t, l, 8081); !guard || !hairpin {
			t.Errorf("port 8081 in the guard set: %v, in the hairpin set: %v; want both", guard, hairpin)
		}
		transfer.wait(t, reloaded)
	})

	t.Run("SIGHUP with a broken file: the error is logged, the old configuration stays, the transfer goes on", func(t *testing.T) {
		transfer := startSlowTransfer(l)
		time.Sleep(2 * time.Second)
		broken := labConfigPlus8081 + "\n[limits]\nmax_flows = \"many\"\n"
		r.rewriteConfig(t, broken)
		reloaded := time.Now()
		lines := r.sighup(t, "reload refused; the running configuration stays")
		// file:line: key: message, the line being max_flows's.
		text, _ := os.ReadFile(r.configPath())
		line := slices.Index(strings.Split(string(text), "\n"), `max_flows = "many"`) + 1
		want := fmt.Sprintf("%s:%d: limits.max_flows: ", r.configPath(), line)
		if !slices.ContainsFunc(lines, func(l logLine) bool { return l.Level() == "error" && strings.HasPrefix(l.Message(), want) }) {
			t.Errorf("no error line starting %q in the log:\n%s", want, r.log)
		}
		for _, port := range []int{8080, 8081} {
			if out, code := getPeer(t, l, port); code != 0 {
				t.Errorf("forward %d stopped working after a refused reload: exit %d: %s", port, code, out)
			}
		}
		transfer.wait(t, reloaded)
		if r.hasExited() {
			t.Fatalf("vpnmasq exited after SIGHUP: %s", r.cmd.ProcessState)
		}
	})

	t.Run("vpnmasq reload reports a removed forward; it stops working, other mappings stay", func(t *testing.T) {
		transfer := startSlowTransfer(l)
		time.Sleep(2 * time.Second)
		r.rewriteConfig(t, labConfig) // without 8081
		reloaded := time.Now()
		code, out := runVpnmasq(t, l.Router, 20*time.Second, "reload", "--socket", r.adminSocket())
		if code != 0 || !strings.Contains(out, "applied: forward removed: tcp 8081 → 192.168.77.11:81") {
			t.Fatalf("vpnmasq reload: exit %d:\n%s", code, out)
		}
		t.Logf("vpnmasq reload:\n%s", out)
		if out, code := getPeer(t, l, 8081); code == 0 {
			t.Errorf("the removed forward 8081 still answers: %s", out)
		}
		if guard, hairpin := guardHolds(t, l, 8081); guard || hairpin {
			t.Errorf("port 8081 still in the guard set (%v) or the hairpin set (%v)", guard, hairpin)
		}
		if out, code := getPeer(t, l, 8080); code != 0 {
			t.Errorf("forward 8080 stopped working: exit %d: %s", code, out)
		}
		transfer.wait(t, reloaded)

		// A broken file: exit 1 and the problem on stderr.
		r.rewriteConfig(t, labConfig+"\n[ipsec]\nesp_timeout = \"soon\"\n")
		code, out = runVpnmasq(t, l.Router, 20*time.Second, "reload", "--socket", r.adminSocket())
		if code != 1 || !strings.Contains(out, r.configPath()+":") || !strings.Contains(out, "ipsec.esp_timeout") {
			t.Errorf("vpnmasq reload of a broken file: exit %d:\n%s", code, out)
		}
		r.rewriteConfig(t, labConfig)
	})

	t.Run("after SIGHUPs and SIGTERM nothing of vpnmasq is left on the host", func(t *testing.T) {
		if !r.hasExited() {
			from := r.log.len()
			_ = r.cmd.Process.Signal(syscall.SIGHUP)
			r.log.waitFor("configuration reloaded", from, 10*time.Second, r.exited)
		}
		if r.hasExited() {
			// Without a handler, Go ends the process at once (129).
			t.Errorf("vpnmasq exited on SIGHUP (%s), without its teardown", r.cmd.ProcessState)
		} else {
			r.stop()
		}
		if left := vpnmasqLeftovers(t, l.Router); len(left) > 0 {
			t.Errorf("left on the host:\n%s", strings.Join(left, "\n"))
		}
		assertSameState(t, before, snapshotRouter(t, l.Router))
	})
}

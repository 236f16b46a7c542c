package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

func TestRouterRemovesEverythingItAdded(t *testing.T) {
	l := newLab(t, lab.Options{})
	before := snapshotRouter(t, l.Router)

	t.Run("while running, its TUN link, rule, route and nftables tables are present", func(t *testing.T) {
		r := startRouter(t, l, labConfig)
		left := vpnmasqLeftovers(t, l.Router)
		for _, want := range []string{"link:", "rule:", "route:", "nft:"} {
			if !hasPrefixed(left, want) {
				t.Errorf("no %s of vpnmasq's found while it runs; found %v", strings.TrimSuffix(want, ":"), left)
			}
		}
		r.stop()
	})

	t.Run("after SIGTERM nothing of vpnmasq is left in the router namespace", func(t *testing.T) {
		if left := vpnmasqLeftovers(t, l.Router); len(left) > 0 {
			t.Errorf("left after SIGTERM:\n%s", strings.Join(left, "\n"))
		}
		assertSameState(t, before, snapshotRouter(t, l.Router))
	})

	t.Run("after kill -9 a new start succeeds and its SIGTERM removes the leftovers", func(t *testing.T) {
		r := startRouter(t, l, labConfig)
		r.kill()
		t.Logf("left by kill -9: %v", vpnmasqLeftovers(t, l.Router))
		r2 := startRouter(t, l, labConfig)
		r2.stop()
		if left := vpnmasqLeftovers(t, l.Router); len(left) > 0 {
			t.Errorf("left after restart and SIGTERM:\n%s", strings.Join(left, "\n"))
		}
		// A router killed outright cannot restore sysctls, and its
		// successor cannot know what they were before; those are only
		// reported.
		after := snapshotRouter(t, l.Router)
		if after.Sysctls != before.Sysctls {
			t.Logf("sysctls after kill -9 and restart:\n%s\nbefore:\n%s", after.Sysctls, before.Sysctls)
		}
		expected := before
		expected.Sysctls, after.Sysctls = "", ""
		assertSameState(t, expected, after)
	})
}

func hasPrefixed(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

func assertSameState(t *testing.T, before, after routerState) {
	t.Helper()
	if reflect.DeepEqual(before, after) {
		return
	}
	b, a := reflect.ValueOf(before), reflect.ValueOf(after)
	for i := range b.NumField() {
		if b.Field(i).String() != a.Field(i).String() {
			t.Errorf("router namespace %s changed:\nbefore:\n%s\nafter:\n%s", b.Type().Field(i).Name, b.Field(i), a.Field(i))
		}
	}
}

// runVpnmasq runs the binary inside ns to completion (bounded) and returns
// its exit status and stderr.
func runVpnmasq(t *testing.T, ns *lab.NS, timeout time.Duration, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(vpnmasqBin, args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := ns.Start(cmd); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("vpnmasq %s still running after %v; killed. Output:\n%s", strings.Join(args, " "), timeout, stderr.String())
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// badConfigs are configurations with one mistake each, and the line and
// key the error message must name.
var badConfigs = []struct {
	name string
	text string
	line int
	key  string
}{
	{
		name: "an unknown key",
		text: "[lan]\ninterfaces = [\"br-lan\"]\n\n[nat]\nport_rnage = \"20000-30000\"\n",
		line: 5, key: "port_rnage",
	},
	{
		name: "a port range written backwards",
		text: "[wan]\ninterface = \"rtr-wan\"\n[nat]\nport_range = \"30000-20000\"\n",
		line: 4, key: "nat.port_range",
	},
	{
		name: "a duration that is not a duration",
		text: "[nat]\nudp_timeout = \"five minutes\"\n",
		line: 2, key: "nat.udp_timeout",
	},
	{
		name: "a forward to a host outside the LAN prefixes",
		text: "[lan]\ninterfaces = [\"br-lan\"]\nprefixes = [\"192.168.77.0/24\"]\n[wan]\ninterface = \"rtr-wan\"\n[[forward]]\nproto = \"tcp\"\nport = 8080\nto = \"10.9.9.9:80\"\n",
		line: 9, key: "forward",
	},
}

func TestCheckReportsBadConfigByFileLineAndKey(t *testing.T) {
	l := newLab(t, lab.Options{})
	dir := t.TempDir()

	t.Run("the lab configuration passes with exit status 0", func(t *testing.T) {
		path := filepath.Join(dir, "good.toml")
		if err := os.WriteFile(path, []byte(labConfig), 0o644); err != nil {
			t.Fatal(err)
		}
		if code, out := runVpnmasq(t, l.Router, 10*time.Second, "check", "--config", path); code != 0 {
			t.Errorf("exit %d, want 0; output:\n%s", code, out)
		}
	})
	for i, bc := range badConfigs {
		t.Run(bc.name+" fails with exit status 2 naming file, line and key", func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("bad%d.toml", i))
			if err := os.WriteFile(path, []byte(bc.text), 0o644); err != nil {
				t.Fatal(err)
			}
			code, out := runVpnmasq(t, l.Router, 10*time.Second, "check", "--config", path)
			if code != 2 {
				t.Errorf("exit %d, want 2; output:\n%s", code, out)
			}
			prefix := fmt.Sprintf("%s:%d: ", path, bc.line)
			found := false
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(line, prefix) && strings.Contains(line, bc.key) {
					found = true
				}
			}
			if !found {
				t.Errorf("no line starting %q and naming %q in:\n%s", prefix, bc.key, out)
			}
		})
	}
}

func TestRunWithInvalidConfigFailsAndChangesNothing(t *testing.T) {
	l := newLab(t, lab.Options{})
	dir := t.TempDir()
	cases := []struct{ name, text string }{
		{"an unknown key", badConfigs[0].text},
		{"a backwards port range", badConfigs[1].text},
		{"a WAN interface that does not exist", strings.Replace(labConfig, `interface = "rtr-wan"`, `interface = "nope0"`, 1)},
		{"a LAN interface that does not exist", strings.Replace(labConfig, `interfaces = ["br-lan"]`, `interfaces = ["br-nope"]`, 1)},
	}
	for i, tc := range cases {
		t.Run(tc.name+" makes run exit non-zero without touching the router namespace", func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("invalid%d.toml", i))
			if err := os.WriteFile(path, []byte(tc.text), 0o644); err != nil {
				t.Fatal(err)
			}
			before := snapshotRouter(t, l.Router)
			code, out := runVpnmasq(t, l.Router, 15*time.Second, "run", "--config", path)
			if code == 0 {
				t.Errorf("run exited 0 with an invalid configuration; output:\n%s", out)
			}
			assertSameState(t, before, snapshotRouter(t, l.Router))
			if t.Failed() {
				t.Logf("vpnmasq output:\n%s", out)
			}
		})
	}
}

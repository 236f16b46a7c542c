package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/vpnmasq/vpnmasq/admin"
)

// reloadingRouter is a fake router whose reload answers res.
type reloadingRouter struct {
	fakeRouter
	res admin.ReloadResult
}

func (r reloadingRouter) ReloadConfig() admin.ReloadResult { return r.res }

func serveReloading(t *testing.T, res admin.ReloadResult) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "admin.sock")
	closer, err := admin.ServeUnix(path, admin.NewHandler(reloadingRouter{res: res}, admin.Options{Trusted: true, Log: zerolog.Nop()}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closer() })
	return path
}

func TestReloadCommand(t *testing.T) {
	t.Run("prints what was applied and what needs a restart, exit 0", func(t *testing.T) {
		sock := serveReloading(t, admin.ReloadResult{Source: "/etc/vpnmasq/vpnmasq.toml",
			Applied:      []string{"forward removed: tcp 8081 → 192.168.77.11:81"},
			NeedsRestart: []string{"tun.name (vpnmasq0 → vpnmasq9)"}})
		var out, errw bytes.Buffer
		if code := runReload([]string{"--socket", sock}, &out, &errw); code != 0 {
			t.Fatalf("exit %d: %s", code, errw.String())
		}
		for _, want := range []string{"reloaded /etc/vpnmasq/vpnmasq.toml", "applied: forward removed: tcp 8081", "needs a restart: tun.name"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, out.String())
			}
		}
	})
	t.Run("a refused file prints every problem, exit 1", func(t *testing.T) {
		sock := serveReloading(t, admin.ReloadResult{Source: "/etc/v.toml",
			Errors: []string{"/etc/v.toml:3: nat.udp_timeout: bad", "/etc/v.toml:9: forward[0].to: missing"}})
		var out, errw bytes.Buffer
		if code := runReload([]string{"--socket", sock}, &out, &errw); code != 1 {
			t.Fatalf("exit %d, want 1", code)
		}
		if !strings.Contains(errw.String(), "/etc/v.toml:3: nat.udp_timeout: bad\n/etc/v.toml:9: forward[0].to: missing\n") {
			t.Errorf("stderr:\n%s", errw.String())
		}
	})
	t.Run("no router at the socket, exit 1", func(t *testing.T) {
		var out, errw bytes.Buffer
		if code := runReload([]string{"--socket", filepath.Join(t.TempDir(), "none.sock")}, &out, &errw); code != 1 ||
			!strings.Contains(errw.String(), "is it running?") {
			t.Errorf("exit %d: %s", code, errw.String())
		}
	})
	t.Run("an argument is a usage error, exit 2", func(t *testing.T) {
		var out, errw bytes.Buffer
		if code := runReload([]string{"now"}, &out, &errw); code != 2 {
			t.Errorf("exit %d, want 2", code)
		}
	})
}

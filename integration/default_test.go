package integration

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// The README's promise: `vpnmasq run` with no file works out of the box,
// taking the WAN from the default route and masquerading every other
// addressed interface's subnet.
func TestEmbeddedDefaultRoutesTheLabWithoutAConfigFile(t *testing.T) {
	if _, err := os.Stat("/etc/vpnmasq/vpnmasq.toml"); err == nil {
		t.Fatal("/etc/vpnmasq/vpnmasq.toml exists on this machine: `vpnmasq run` would read it instead of the embedded default")
	}
	l := newLab(t, lab.Options{})
	r := startRouter(t, l, "")

	t.Run("the WAN is the default route's interface and the LAN is br-lan with its subnet", func(t *testing.T) {
		raw := r.ready.Raw
		for _, want := range []string{`"wan":"rtr-wan"`, `"wan_addr":"198.18.0.1"`, `"lan":["br-lan"]`, `"prefixes":"192.168.77.0/24"`} {
			if !strings.Contains(raw, want) {
				t.Errorf("router ready line lacks %s:\n%s", want, raw)
			}
		}
	})
	t.Run("lan1 reaches the WAN host, masqueraded", func(t *testing.T) {
		echo, err := lab.ServeUDPEcho(l.WAN, "198.18.0.2:7")
		if err != nil {
			t.Fatal(err)
		}
		defer echo.Close()
		if _, err := lab.UDPRoundTrip(l.LAN1, "", "198.18.0.2:7", []byte("default config"), 3, 2*time.Second); err != nil {
			t.Fatal(err)
		}
		for _, p := range echo.Peers() {
			if p.Addr() != lab.RouterWANAddr {
				t.Errorf("echo server saw %s, want the masquerade address %s", p, lab.RouterWANAddr)
			}
		}
		out, code := runIn(t, l.LAN1, 10*time.Second, "ping", "-n", "-c", "2", "-W", "2", "198.18.0.2")
		if code != 0 {
			t.Errorf("ping exit %d:\n%s", code, out)
		}
	})
}

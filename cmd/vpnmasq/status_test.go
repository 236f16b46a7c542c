package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vpnmasq/vpnmasq/admin"
)

// fakeRouter is a Source with a little of everything.
type fakeRouter struct{}

func (fakeRouter) Snapshot() admin.Snapshot {
	return admin.Snapshot{
		Time:        time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC),
		Uptime:      90,
		Version:     "9.9.9",
		WANAddr:     netip.MustParseAddr("198.18.0.2"),
		WANIf:       "wan0",
		LANPrefixes: []netip.Prefix{netip.MustParsePrefix("192.168.77.0/24")},
		ServiceAddr: netip.MustParseAddr("192.0.2.53"),
		Traffic:     []admin.Traffic{{Direction: admin.LANToWAN, Proto: "udp", Packets: 4, Bytes: 400}},
		Drops:       map[string]uint64{"martian": 5},
		Mappings: []admin.Mapping{{Proto: "udp", LAN: netip.MustParseAddrPort("192.168.77.10:5000"),
			WAN: netip.MustParseAddrPort("198.18.0.2:20000"), Remote: netip.MustParseAddrPort("198.18.1.1:53"),
			Flows: 1, Age: 3, Idle: 1}},
		Ports: []admin.PortUse{{Proto: "udp", InUse: 1, Size: 100}},
		VPN: admin.VPN{
			ESP: []admin.ESPPair{{LANHost: netip.MustParseAddr("192.168.77.20"), Remote: netip.MustParseAddr("198.18.2.1"),
				OutSPI: "c0ffee01", InSPI: "beef0002", State: admin.ESPEstablished, Age: 8, Idle: 1}},
			PPTP: []admin.PPTPConn{{Client: netip.MustParseAddrPort("192.168.77.30:50000"),
				Server: netip.MustParseAddrPort("198.18.3.1:1723"), State: "open",
				Calls: []admin.PPTPCall{{CallID: 7, MasqCallID: 40007, PeerCallID: 99, State: "established", GREOut: 3, GREIn: 4, Age: 6}}}},
		},
		DNS: admin.DNSStats{UDPQueries: 21, TCPQueries: 1, CacheHits: 9, Answered: 22},
	}
}

// serveFake serves the fake router on a unix socket, as `vpnmasq run` does.
func serveFake(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "admin.sock")
	closer, err := admin.ServeUnix(path, admin.NewHandler(fakeRouter{}, admin.Options{Trusted: true, Log: zerolog.Nop()}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closer() })
	return path
}

func TestStatusCommand(t *testing.T) {
	sock := serveFake(t)
	missing := filepath.Join(t.TempDir(), "absent.sock")
	cases := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout []string // regular expressions, each must match
		wantStderr []string
	}{
		{"text output has every section and the values", []string{"--socket", sock}, 0,
			[]string{`(?m)^vpnmasq 9\.9\.9, up 1m30s, at 2026-03-04 05:06:07 UTC$`,
				`(?m)^  WAN +198\.18\.0\.2 on wan0$`,
				`(?m)^  LAN prefixes +192\.168\.77\.0/24$`,
				`(?m)^  Service address +192\.0\.2\.53$`,
				`(?m)^IPsec IKE sessions\n.*\n  none$`,
				`(?m)^IPsec ESP\n.*\n  192\.168\.77\.20 +198\.18\.2\.1 +c0ffee01 +beef0002 +established +8s +1s +- +-$`,
				`(?m)^PPTP calls\n.*\n  192\.168\.77\.30:50000 +198\.18\.3\.1:1723 +open +7 +40007 +99 +established +3 +4 +6s +- +-$`,
				`(?m)^IPsec AH refused.*\n.*\n  none$`,
				`(?m)^NAT mappings \(1\)\n.*\n  udp +192\.168\.77\.10:5000 +198\.18\.0\.2:20000 +198\.18\.1\.1:53 +1 +3s +1s$`,
				`(?m)^WAN ports\n.*\n  udp +1 +100 +1\.0%$`,
				`(?m)^Traffic\n.*\n  udp +4 +400 B +0 +0 B$`,
				`(?m)^Drops\n.*\n  martian +5$`,
				`(?m)^DNS forwarder\n.*\n  21 +1 +9 +0 +22$`},
			nil},
		{"--json prints the router's JSON", []string{"--json", "--socket", sock}, 0,
			[]string{`^\{\n  "time": "2026-03-04T05:06:07Z",`, `"masq_call_id": 40007`}, nil},
		{"a missing socket is exit 1 with a clear message", []string{"--socket", missing}, 1, nil,
			[]string{`^vpnmasq status: cannot reach the router at ` + regexp.QuoteMeta(missing) +
				`: connect: no such file or directory; is it running\?\n$`}},
		{"the default socket is /run/vpnmasq/admin.sock", []string{"-h"}, 0, nil,
			[]string{`usage: vpnmasq status \[--json \| --health \| --watch \[--interval DURATION\]\] \[--socket PATH\]`, `\(default "/run/vpnmasq/admin\.sock"\)`}},
		{"--watch with --health is refused", []string{"--watch", "--health", "--socket", sock}, 2, nil,
			[]string{`^status: --watch redraws the tables; it does not combine with --health\nusage: vpnmasq status `}},
		{"--watch with --json is refused", []string{"--watch", "--json", "--socket", sock}, 2, nil,
			[]string{`^status: --watch redraws the tables; it does not combine with --json\nusage: vpnmasq status `}},
		{"--interval below 100ms is refused", []string{"--watch", "--interval", "99ms", "--socket", sock}, 2, nil,
			[]string{`^status: --interval 99ms is too short: it must be at least 100ms\nusage: vpnmasq status `}},
		{"--interval that is not a duration is refused", []string{"--watch", "--interval", "soon", "--socket", sock}, 2, nil,
			[]string{`^invalid value "soon" for flag -interval: parse error\nusage: vpnmasq status `}},
		{"--interval without --watch is refused", []string{"--interval", "1s", "--socket", sock}, 2, nil,
			[]string{`^status: --interval is the time between the refreshes of --watch; add --watch\n`}},
		{"--watch with a missing socket is exit 1 with the message of plain status", []string{"--watch", "--socket", missing}, 1, nil,
			[]string{`^vpnmasq status: cannot reach the router at ` + regexp.QuoteMeta(missing) +
				`: connect: no such file or directory; is it running\?\n$`}},
		{"--watch and --interval are in the usage", []string{"-h"}, 0, nil,
			[]string{`(?m)^  -interval DURATION\n.*\(at least 100ms\) \(default 2s\)$`, `(?m)^  -watch\n.*like top$`}},
		{"extra arguments are refused", []string{"--socket", sock, "more"}, 2, nil, []string{`unexpected argument "more"`}},
		{"an unknown flag is refused", []string{"--sock", sock}, 2, nil, []string{`flag provided but not defined`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A --watch that wrongly keeps going ends here, and fails on its exit code.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var stdout, stderr bytes.Buffer
			code := runStatus(ctx, tc.args, &stdout, &stderr)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.wantCode, &stdout, &stderr)
			}
			for _, p := range tc.wantStdout {
				if !regexp.MustCompile(p).MatchString(stdout.String()) {
					t.Errorf("stdout does not match %q:\n%s", p, &stdout)
				}
			}
			for _, p := range tc.wantStderr {
				if !regexp.MustCompile(p).MatchString(stderr.String()) {
					t.Errorf("stderr does not match %q:\n%s", p, &stderr)
				}
			}
			if tc.wantCode != 0 && stdout.Len() > 0 {
				t.Errorf("a failure wrote to stdout: %s", &stdout)
			}
		})
	}

	t.Run("--json output parses into a Snapshot equal to the router's", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		if code := runStatus(context.Background(), []string{"--json", "--socket", sock}, &stdout, &stderr); code != 0 {
			t.Fatalf("exit %d: %s", code, &stderr)
		}
		var got admin.Snapshot
		if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
			t.Fatal(err)
		}
		want := fakeRouter{}.Snapshot()
		if got.Version != want.Version || got.WANAddr != want.WANAddr || len(got.Mappings) != 1 ||
			got.Mappings[0] != want.Mappings[0] || got.VPN.PPTP[0].Calls[0] != want.VPN.PPTP[0].Calls[0] ||
			got.DNS != want.DNS || got.Drops["martian"] != 5 {
			t.Errorf("got %+v\nwant %+v", got, want)
		}
	})
	t.Run("--health prints ok and exits 0 while the router answers", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		if code := runStatus(context.Background(), []string{"--health", "--socket", sock}, &stdout, &stderr); code != 0 || stdout.String() != "ok\n" {
			t.Errorf("exit %d, stdout %q, stderr %q", code, &stdout, &stderr)
		}
	})
	t.Run("--health exits 1 when no router answers", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		if code := runStatus(context.Background(), []string{"--health", "--socket", filepath.Join(t.TempDir(), "none.sock")}, &stdout, &stderr); code != 1 {
			t.Errorf("exit %d, stderr %q", code, &stderr)
		}
	})
	t.Run("a socket nobody listens on is exit 1 with a clear message", func(t *testing.T) {
		stale := filepath.Join(t.TempDir(), "stale.sock")
		l, err := net.Listen("unix", stale)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		var stdout, stderr bytes.Buffer
		if code := runStatus(context.Background(), []string{"--socket", stale}, &stdout, &stderr); code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		want := "vpnmasq status: cannot reach the router at " + stale + ": connect: connection refused; is it running?\n"
		if stderr.String() != want {
			t.Errorf("stderr %q, want %q", &stderr, want)
		}
	})
	t.Run("a router that does not answer is a bounded wait and exit 1", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "mute.sock")
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close() // never accepts: the kernel completes the connection, nobody answers
		start := time.Now()
		_, err = fetch(context.Background(), path, "/api/v1/status", 200*time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), "did not answer within 200ms") {
			t.Errorf("error %v, want a timeout", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took %v", d)
		}
	})
	t.Run("an error from the router is shown", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "err.sock")
		closer, err := admin.ServeUnix(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "something broke", http.StatusInternalServerError)
		}))
		if err != nil {
			t.Fatal(err)
		}
		defer closer()
		var stdout, stderr bytes.Buffer
		if code := runStatus(context.Background(), []string{"--socket", path}, &stdout, &stderr); code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		if !strings.Contains(stderr.String(), "answered 500 Internal Server Error: something broke") {
			t.Errorf("stderr %q", &stderr)
		}
	})
}

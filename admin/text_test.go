package admin

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

func TestWriteText(t *testing.T) {
	var b strings.Builder
	if err := WriteText(&b, fakeSnapshot()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	cases := []struct {
		name string
		want string // regular expression
	}{
		{"the header names the version, uptime and time", `(?m)^vpnmasq 1\.2\.3, up 1h2m3s, at 2026-01-02 03:04:05 UTC$`},
		{"the WAN address and interface", `(?m)^  WAN +198\.18\.0\.2 on wan0$`},
		{"the LAN prefixes", `(?m)^  LAN prefixes +192\.168\.77\.0/24, 10\.1\.0\.0/16$`},
		{"the service address", `(?m)^  Service address +192\.0\.2\.53$`},
		{"an IKE section with the SPIs", `(?m)^IPsec IKE sessions\n  LAN host +Remote .*\n  192\.168\.77\.20:500 +198\.18\.2\.1:500 +500 +0123456789abcdef +fedcba9876543210 +10s +2s$`},
		{"an ESP section, unknown SPIs as -", `(?m)^  192\.168\.77\.21 +198\.18\.2\.2 +12345678 +- +waiting +1s +0s +- +-$`},
		{"an ESP pair's health each way", `(?m)^  192\.168\.77\.20 +198\.18\.2\.1 +c0ffee01 +beef0002 +established +9s +0s +1000, 0 lost \(0\.0 %\), 2 late +990, 10 lost \(1\.0 %\), 0 late$`},
		{"a PPTP section with a row per call", `(?m)^  192\.168\.77\.30:50000 +198\.18\.3\.1:1723 +open +2 +40002 +778 +setup +0 +0 +1s +- +-$`},
		{"a PPTP connection without calls", `(?m)^  192\.168\.77\.31:50001 +198\.18\.3\.2:1723 +closed +- +- +- +no calls`},
		{"an AH section", `(?m)^IPsec AH refused.*\n.*\n  192\.168\.77\.40 +198\.18\.4\.1 +12 +7s$`},
		{"a mapping section counting the mappings", `(?m)^NAT mappings \(3\)$`},
		{"a static forward", `(?m)^  tcp +192\.168\.77\.10:80 +198\.18\.0\.2:8080 +198\.18\.9\.9:33000 +1 +forward +2m0s +3s$`},
		{"a ports section", `(?m)^  tcp +2 +12768 +0\.0%$`},
		{"a traffic section", `(?m)^  tcp +100 +146\.5 KiB +90 +878\.9 KiB$`},
		{"drops, the most frequent first", `(?m)^Drops\n  Reason +Packets\n  malformed +3\n  esp_squelched +2\n\n`},
		{"a DNS section", `(?m)^DNS forwarder\n.*\n  10 +2 +4 +1 +11$`},
		{"a hosts section, the busiest host first", `(?m)^LAN hosts \(most state first\)\n  Host +Flows +Mappings +ESP +IKE +PPTP calls +Fragments\n  192\.168\.77\.10 +3 +2 +0 +0 +0 +0\n  192\.168\.77\.20 +1 +1 +1 +1 +0 +0\n`},
		{"flows by protocol and state", `(?m)^NAT flows\n.*\n  tcp +established +2\n  tcp +syn_sent +1\n  udp +replied +1\n\n`},
		{"the limits that refused or evicted, the busiest first", `(?m)^Limits reached\n.*\n  max_flows_per_host +7 +0\n  max_flows +0 +3\n\n`},
		{"ICMP errors sent and suppressed", `(?m)^ICMP errors sent by the router\n.*\n  12 +34$`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !regexp.MustCompile(tc.want).MatchString(out) {
				t.Errorf("no match for %q in:\n%s", tc.want, out)
			}
		})
	}

	t.Run("sections of an idle router say none", func(t *testing.T) {
		var b strings.Builder
		if err := WriteText(&b, Snapshot{}); err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(b.String(), "\n  none\n"); n != 11 {
			t.Errorf("%d sections say none, want 11:\n%s", n, &b)
		}
	})
	t.Run("every mapping the status holds is listed, with how many more the router has", func(t *testing.T) {
		s := Snapshot{Mappings: make([]Mapping, maxPageMappings+1), MappingsTotal: 5000}
		var b strings.Builder
		if err := WriteText(&b, s); err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(b.String(), "\n  -  "); n != maxPageMappings+1 {
			t.Errorf("%d mapping rows, want %d", n, maxPageMappings+1)
		}
		if want := fmt.Sprintf("… and %d more; the full list is at /api/v1/mappings?offset=%d", 5000-maxPageMappings-1, maxPageMappings+1); !strings.Contains(b.String(), want) {
			t.Errorf("no %q in:\n%s", want, &b)
		}
	})
	t.Run("control characters cannot reach the terminal", func(t *testing.T) {
		s := fakeSnapshot()
		s.Version = "1\x1b[2J"
		s.VPN.ESP[0].State = "est\tab\nlished"
		var b strings.Builder
		if err := WriteText(&b, s); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(b.String(), "\x1b") || strings.Contains(b.String(), "est\t") {
			t.Errorf("control characters in the output:\n%q", b.String())
		}
	})
}

package config

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func ranges(list ...string) []PortRange {
	var out []PortRange
	for _, s := range list {
		r, err := ParsePortRange(s)
		if err != nil {
			panic(err)
		}
		out = append(out, r)
	}
	return out
}

func TestEphemeralGiven(t *testing.T) {
	linux := Ephemeral{Range: PortRange{32768, 60999}}
	cases := []struct {
		name string
		e    Ephemeral
		r    string
		want []PortRange
	}{
		{"a range below the ephemeral ports is never given to the host's sockets", linux, "20000-32767", nil},
		{"a range above them neither", linux, "61000-65535", nil},
		{"the part of a range inside them is given", linux, "20000-60999", ranges("32768-60999")},
		{"one port inside them is given", linux, "51820", ranges("51820")},
		{"a range inside them is given whole", linux, "40000-40100", ranges("40000-40100")},
		{"reserved ports are never given",
			Ephemeral{Range: PortRange{1024, 65535}, Reserved: ranges("20000-32767")}, "20000-32767", nil},
		{"only the unreserved part of a range is given",
			Ephemeral{Range: PortRange{1024, 65535}, Reserved: ranges("20000-20099", "20200-20299", "40000")}, "20000-20499",
			ranges("20100-20199", "20300-20499")},
		{"a reservation up to 65535 leaves nothing after it",
			Ephemeral{Range: PortRange{1024, 65535}, Reserved: ranges("60000-65535")}, "59000-65535", ranges("59000-59999")},
		{"unknown ephemeral ports give nothing", Ephemeral{}, "20000-60999", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.e.Given(ranges(tc.r)[0]); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("%v.Given(%s) = %v, want %v", tc.e, tc.r, got, tc.want)
			}
		})
	}
	t.Run("the reserved ports inside the range are named", func(t *testing.T) {
		e := Ephemeral{Range: PortRange{32768, 60999}, Reserved: ranges("8080", "40000-40010")}
		if got, want := e.String(), "32768-60999 less the reserved 40000-40010"; got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	})
}

func TestCheckEphemeralKeepsTheNATsPortsApartFromTheHosts(t *testing.T) {
	linux := Ephemeral{Range: PortRange{32768, 60999}}
	wide := Ephemeral{Range: PortRange{1024, 65535}}
	file := func(text string) *Config {
		t.Helper()
		c, err := parse("vpnmasq.toml", text)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	natRange := func(r string) *Config { return file("[nat]\nport_range = \"" + r + "\"\n") }
	forward := func(proto, port string) *Config {
		text := "[lan]\nprefixes = [\"192.168.77.0/24\"]\n\n[[forward]]\nproto = \"" + proto + "\"\n"
		if port != "" {
			text += "port = \"" + port + "\"\n"
		}
		return file(text + "to = \"192.168.77.10\"\n")
	}
	cases := []struct {
		name     string
		config   *Config
		host     Ephemeral
		problems []string // each a whole "file:line: key: message", or its beginning followed by "…"
		warnings []string
	}{
		{"the default range below Linux's ephemeral ports is accepted", Default(), linux, nil, nil},
		{"a range just below the ephemeral ports is accepted", natRange("20000-32767"), linux, nil, nil},
		{"a range above the ephemeral ports is accepted", natRange("61000-65535"), linux, nil, nil},
		{"a range reaching into the ephemeral ports is refused, naming both ranges and the sysctl", natRange("20000-60999"), linux,
			[]string{"vpnmasq.toml:2: nat.port_range: 20000-60999 overlaps the host's ephemeral ports 32768-60999 (net.ipv4.ip_local_port_range) in 32768-60999: " +
				"vpnmasq's guard drops WAN packets to NAT ports before the host's stack sees them, so the host's own connections from those ports, " +
				"vpnmasq's DNS forwarder's included, would get no answers; set nat.port_range outside 32768-60999, " +
				"or change net.ipv4.ip_local_port_range to leave 20000-60999 free, or list 32768-60999 in net.ipv4.ip_local_reserved_ports"},
			nil},
		{"one port of overlap is refused", natRange("20000-32768"), linux,
			[]string{"vpnmasq.toml:2: nat.port_range: 20000-32768 overlaps the host's ephemeral ports 32768-60999 (net.ipv4.ip_local_port_range) in 32768: …"}, nil},
		{"the embedded default on a host that gives out 1024-65535 is refused without an impossible hint", Default(), wide,
			[]string{"<embedded default>: nat.port_range: the default 20000-32767 overlaps the host's ephemeral ports 1024-65535 (net.ipv4.ip_local_port_range) in 20000-32767: " +
				"vpnmasq's guard drops WAN packets to NAT ports before the host's stack sees them, so the host's own connections from those ports, " +
				"vpnmasq's DNS forwarder's included, would get no answers; change net.ipv4.ip_local_port_range to leave 20000-32767 free, " +
				"or list 20000-32767 in net.ipv4.ip_local_reserved_ports"},
			[]string{"<embedded default>: warning: port 4500 (IPsec NAT-T, which vpnmasq always takes for IPsec passthrough) lies in the host's ephemeral ports 1024-65535 …"}},
		{"the default range a file leaves unset is called the default, with the line of its table",
			file("[nat]\nudp_timeout = \"5m\"\n"), Ephemeral{Range: PortRange{10000, 65000}},
			[]string{"vpnmasq.toml:1: nat.port_range: the default 20000-32767 overlaps the host's ephemeral ports 10000-65000 (net.ipv4.ip_local_port_range) in 20000-32767: …"}, nil},
		{"an overlap the host reserved is accepted",
			natRange("20000-32767"), Ephemeral{Range: PortRange{1024, 65535}, Reserved: ranges("500", "4500", "20000-32767")}, nil, nil},
		{"of a partly reserved overlap only the ports the kernel gives out are named",
			natRange("20000-32767"), Ephemeral{Range: PortRange{1024, 65535}, Reserved: ranges("500", "4500", "20000-29999")},
			[]string{"vpnmasq.toml:2: nat.port_range: 20000-32767 overlaps the host's ephemeral ports 1024-65535 (net.ipv4.ip_local_port_range, less 4500, 20000-29999 in net.ipv4.ip_local_reserved_ports) in 30000-32767: …"}, nil},
		{"a forward inside the ephemeral ports is a warning, not a refusal", forward("udp", "51820"), linux, nil,
			[]string{"vpnmasq.toml:6: forward[0].port: warning: udp 51820 lies in the host's ephemeral ports 32768-60999 (net.ipv4.ip_local_port_range): " +
				"a connection of the host's own that the kernel gives 51820 gets no answers, since vpnmasq takes the WAN packets to it " +
				"(vpnmasq's own sockets avoid it); list 51820 in net.ipv4.ip_local_reserved_ports to keep the kernel off it"}},
		{"a forwarded range names only its ports inside the ephemeral ones", forward("tcp", "60000-61500"), linux, nil,
			[]string{"vpnmasq.toml:6: forward[0].port: warning: tcp 60000-61500 lies in the host's ephemeral ports 32768-60999 (net.ipv4.ip_local_port_range): " +
				"a connection of the host's own that the kernel gives 60000-60999 gets no answers, …"}},
		{"a forward the host reserved draws no warning", forward("udp", "51820"), Ephemeral{Range: PortRange{32768, 60999}, Reserved: ranges("51820")}, nil, nil},
		{"a forward outside the ephemeral ports draws no warning", forward("tcp", "8080"), linux, nil, nil},
		{"a GRE forward has no port to warn about", forward("gre", ""), wide,
			[]string{"vpnmasq.toml: nat.port_range: the default 20000-32767 overlaps …"},
			[]string{"vpnmasq.toml: warning: port 4500 (IPsec NAT-T, …"}},
		{"IKE's port 500 inside the ephemeral ports is a warning too", natRange("20000-32767"), Ephemeral{Range: PortRange{100, 10000}}, nil,
			[]string{"vpnmasq.toml: warning: port 500 (IKE, which vpnmasq always takes for IPsec passthrough) lies in the host's ephemeral ports 100-10000 (net.ipv4.ip_local_port_range): " +
				"a connection of the host's own that the kernel gives 500 gets no answers, since vpnmasq takes the WAN packets to it " +
				"(vpnmasq's own sockets avoid it); list 500 in net.ipv4.ip_local_reserved_ports to keep the kernel off it",
				"vpnmasq.toml: warning: port 4500 (IPsec NAT-T, …"}},
		{"unknown ephemeral ports check nothing", natRange("20000-60999"), Ephemeral{}, nil, nil},
	}
	match := func(t *testing.T, what string, got Errors, want []string) {
		t.Helper()
		if len(got) != len(want) {
			t.Errorf("%d %s, want %d:\n%v", len(got), what, len(want), &got)
			return
		}
		for i, w := range want {
			g := got[i].Error()
			if prefix, cut := strings.CutSuffix(w, "…"); cut && strings.HasPrefix(g, prefix) || g == w {
				continue
			}
			t.Errorf("%s %d:\n got %s\nwant %s", what, i, g, w)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			warnings, err := tc.config.CheckEphemeral(tc.host)
			var problems Errors
			if err != nil {
				problems = *err.(*Errors)
			}
			match(t, "problems", problems, tc.problems)
			match(t, "warnings", warnings, tc.warnings)
			for _, w := range warnings {
				if !w.Warning {
					t.Errorf("warning not marked as one: %v", w)
				}
			}
		})
	}
}

func TestResolveChecksTheHostsEphemeralPorts(t *testing.T) {
	host := func(e Ephemeral) *Host { h := routerHost(); h.Ephemeral = e; return h }
	t.Run("an overlapping range is refused and the configuration left unchanged", func(t *testing.T) {
		c := Default()
		c.Source = "vpnmasq.toml"
		c.NAT.PortRange = PortRange{20000, 60999}
		before := c.clone()
		err := c.Resolve(host(Ephemeral{Range: PortRange{32768, 60999}}))
		if err == nil || !strings.Contains(err.Error(), "nat.port_range: 20000-60999 overlaps the host's ephemeral ports 32768-60999 (net.ipv4.ip_local_port_range)") {
			t.Fatalf("got %v", err)
		}
		if !reflect.DeepEqual(c, before) {
			t.Error("a refused Resolve changed the configuration")
		}
	})
	t.Run("a range that is wrong in itself gets one message, not a second about the host", func(t *testing.T) {
		c := Default()
		c.NAT.PortRange = PortRange{100, 60999}
		err := c.Resolve(host(Ephemeral{Range: PortRange{32768, 60999}}))
		var es *Errors
		if !errors.As(err, &es) || len(*es) != 1 || !strings.Contains((*es)[0].Msg, "starts below 1024") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("warnings are kept for the caller to log and do not stop Resolve", func(t *testing.T) {
		c := Default()
		c.Forwards = []Forward{{Proto: "udp", Port: PortRange{51820, 51820}, To: netip.MustParseAddr("192.168.77.10"), Line: 9}}
		if err := c.Resolve(host(Ephemeral{Range: PortRange{32768, 60999}})); err != nil {
			t.Fatal(err)
		}
		if len(c.Warnings) != 1 || !strings.HasPrefix(c.Warnings[0].Error(), "<embedded default>:9: forward[0].port: warning: udp 51820 lies in") {
			t.Errorf("warnings %v", &c.Warnings)
		}
	})
	t.Run("the Linux default ephemeral range lets the default configuration through without warnings", func(t *testing.T) {
		c := Default()
		if err := c.Resolve(host(Ephemeral{Range: PortRange{32768, 60999}})); err != nil || len(c.Warnings) != 0 {
			t.Errorf("got %v, warnings %v", err, &c.Warnings)
		}
	})
}

package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// loadText writes text to a file and loads it, the way an operator would.
func loadText(t *testing.T, text string) (*Config, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vpnmasq.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return Load(path)
}

func TestLoadAppliesDefaults(t *testing.T) {
	cases := []struct {
		name string
		text string
	}{
		{"an empty file is the default configuration", ""},
		{"a file with only comments and empty tables is the default configuration", "# nothing\n[lan]\n[wan]\n[nat]\n[log]\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := loadText(t, tc.text)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := Default()
			want.Source, want.pos = got.Source, got.pos // where keys are written is not a setting
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestDefaultHasTheDocumentedValues(t *testing.T) {
	d := Default()
	checks := []struct {
		name      string
		got, want any
	}{
		{"source names the embedded default", d.Source, "<embedded default>"},
		{"port range is 20000-32767", d.NAT.PortRange, PortRange{20000, 32767}},
		{"udp timeout is 5m", d.NAT.UDPTimeout, 5 * time.Minute},
		{"tcp established timeout is 2h4m", d.NAT.TCPEstablishedTimeout, 2*time.Hour + 4*time.Minute},
		{"tcp transitory timeout is 4m", d.NAT.TCPTransitoryTimeout, 4 * time.Minute},
		{"icmp timeout is 60s", d.NAT.ICMPTimeout, 60 * time.Second},
		{"udp filtering is address-dependent", d.NAT.UDPFiltering, "address-dependent"},
		{"max mappings is 65536", d.NAT.MaxMappings, 65536},
		{"services address is 192.0.2.53", d.Services.Address, netip.MustParseAddr("192.0.2.53")},
		{"tun name is vpnmasq0", d.TUN.Name, "vpnmasq0"},
		{"table is 5353", d.TUN.Table, 5353},
		{"rule priority is 5353", d.TUN.RulePriority, 5353},
		{"log level is info", d.Log.Level, "info"},
		{"log format is auto", d.Log.Format, "auto"},
		{"interfaces are left to the host", len(d.LAN.Interfaces) + len(d.LAN.Prefixes) + len(d.WAN.Interface), 0},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if !reflect.DeepEqual(c.got, c.want) {
				t.Errorf("got %v, want %v", c.got, c.want)
			}
		})
	}
	t.Run("the default configuration validates", func(t *testing.T) {
		if err := d.Validate(); err != nil {
			t.Error(err)
		}
	})
	t.Run("each call returns a fresh copy", func(t *testing.T) {
		Default().TUN.Name = "changed"
		if Default().TUN.Name != "vpnmasq0" {
			t.Error("Default shares state between calls")
		}
	})
}

func TestLoadDecodesValues(t *testing.T) {
	cases := []struct {
		name  string
		text  string
		check func(*Config) any // returns the decoded value
		want  any
	}{
		{"port_range is read from a range string", `nat.port_range = "20000-60999"`,
			func(c *Config) any { return c.NAT.PortRange }, PortRange{20000, 60999}},
		{"a forward port is read from an integer", "[[forward]]\nproto = \"tcp\"\nport = 8080\nto = \"192.168.77.10\"",
			func(c *Config) any { return c.Forwards[0].Port }, PortRange{8080, 8080}},
		{"a forward port is read from a string", "[[forward]]\nproto = \"tcp\"\nport = \"8080\"\nto = \"192.168.77.10\"",
			func(c *Config) any { return c.Forwards[0].Port }, PortRange{8080, 8080}},
		{"a forward port range is read from a string", "[[forward]]\nproto = \"udp\"\nport = \"1000-1010\"\nto = \"192.168.77.10\"",
			func(c *Config) any { return c.Forwards[0].Port }, PortRange{1000, 1010}},
		{"a forward target with a port sets To and ToPort", "[[forward]]\nproto = \"tcp\"\nport = 8080\nto = \"192.168.77.10:80\"",
			func(c *Config) any { return []any{c.Forwards[0].To, c.Forwards[0].ToPort} },
			[]any{netip.MustParseAddr("192.168.77.10"), uint16(80)}},
		{"a forward target without a port keeps the external port", "[[forward]]\nproto = \"tcp\"\nport = 8080\nto = \"192.168.77.10\"",
			func(c *Config) any { return c.Forwards[0].ToPort }, uint16(0)},
		{"a forward remembers the line of its table", "\n\n[[forward]]\nproto = \"gre\"\nto = \"192.168.77.10\"",
			func(c *Config) any { return c.Forwards[0].Line }, 3},
		{"forwards may be written as an inline array of tables",
			"forward = [\n  {proto = \"tcp\", port = 80, to = \"192.168.77.10\"},\n  {proto = \"esp\", to = \"192.168.77.11\"},\n]",
			func(c *Config) any { return []any{len(c.Forwards), c.Forwards[1].Proto, c.Forwards[1].Line} }, []any{2, "esp", 3}},
		{"durations are read from strings", "[nat]\nudp_timeout = \"90s\"\ntcp_established_timeout = \"3h\"\ntcp_transitory_timeout = \"1m30s\"\nicmp_timeout = \"10s\"",
			func(c *Config) any {
				return []time.Duration{c.NAT.UDPTimeout, c.NAT.TCPEstablishedTimeout, c.NAT.TCPTransitoryTimeout, c.NAT.ICMPTimeout}
			},
			[]time.Duration{90 * time.Second, 3 * time.Hour, 90 * time.Second, 10 * time.Second}},
		{"addresses and prefixes are read from strings",
			"[lan]\nprefixes = [\"192.168.77.0/24\", \"192.168.78.0/24\"]\n[wan]\naddress = \"198.18.0.1\"\n[routing]\nno_nat = [\"10.20.0.0/16\"]\n[services]\naddress = \"192.0.2.1\"",
			func(c *Config) any {
				return []any{c.LAN.Prefixes, c.WAN.Address, c.Routing.NoNAT, c.Services.Address}
			},
			[]any{
				[]netip.Prefix{netip.MustParsePrefix("192.168.77.0/24"), netip.MustParsePrefix("192.168.78.0/24")},
				netip.MustParseAddr("198.18.0.1"),
				[]netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")},
				netip.MustParseAddr("192.0.2.1"),
			}},
		{"a quoted key is the same key", "[nat]\n\"max_mappings\" = 10",
			func(c *Config) any { return c.NAT.MaxMappings }, 10},
		{"a value given in the file replaces the default", "[tun]\nname = \"vmq1\"\ntable = 100\nrule_priority = 100\nudp_gro = false\n[log]\nlevel = \"debug\"\nformat = \"json\"",
			func(c *Config) any { return []any{c.TUN, c.Log} },
			[]any{TUN{Name: "vmq1", Table: 100, RulePriority: 100}, Log{Level: "debug", Format: "json"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := loadText(t, tc.text)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := tc.check(c); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// wantError is one expected problem: its line, key and part of its message.
type wantError struct {
	line int
	key  string
	msg  string
}

func TestLoadReportsProblemsAtTheirLines(t *testing.T) {
	cases := []struct {
		name string
		text string
		want []wantError
	}{
		// Syntax and structure.
		{"a syntax error is reported at its line",
			"[nat]\nmax_mappings = 10\nudp_timeout = \n",
			[]wantError{{3, "nat.udp_timeout", "expected value"}}},
		{"an unknown table is an error",
			"[lan]\n\n[nta]\nudp_timeout = \"5m\"\n",
			[]wantError{{3, "nta", "unknown key"}}},
		{"an unknown key in a table is an error",
			"[nat]\nudp_timeout = \"5m\"\nudp_timout = \"5m\"\n",
			[]wantError{{3, "nat.udp_timout", "unknown key"}}},
		{"keys are case-sensitive and the right spelling is suggested",
			"[wan]\nInterface = \"eth0\"\n",
			[]wantError{{2, "wan.Interface", `did you mean "interface"`}}},
		{"an unknown key in the second forward points at that forward",
			"[[forward]]\nproto = \"esp\"\nto = \"192.168.77.10\"\n[[forward]]\nproto = \"gre\"\nto = \"192.168.77.11\"\ncomment = \"x\"\n",
			[]wantError{{7, "forward[1].comment", "unknown key"}}},
		{"forward written as a single table is an error",
			"[forward]\nproto = \"tcp\"\n",
			[]wantError{{1, "forward", "[[forward]]"}}},
		{"a section that is not a table is an error",
			"lan = 5\n",
			[]wantError{{1, "lan", "must be a table"}}},
		{"forward as an array of numbers is an error",
			"forward = [1, 2]\n",
			[]wantError{{1, "forward", "[[forward]]"}}},
		{"a table defined twice is a syntax error",
			"[nat]\n[lan]\n[nat]\n",
			[]wantError{{3, "", "already been defined"}}},
		{"a dotted key outside its table is found",
			"# comment\nnat.port_range = \"100-200\"\n",
			[]wantError{{2, "nat.port_range", "below 1024"}}},

		// Types.
		{"a string where an integer belongs is an error",
			"[wan]\nmtu = \"1500\"\n",
			[]wantError{{2, "wan.mtu", "must be an integer"}}},
		{"an integer where a string belongs is an error",
			"[tun]\nname = 5\n",
			[]wantError{{2, "tun.name", "must be a string"}}},
		{"a duration without a unit is an error",
			"[nat]\nudp_timeout = 300\n",
			[]wantError{{2, "nat.udp_timeout", "has no unit"}}},
		{"a malformed duration is an error",
			"[nat]\nicmp_timeout = \"1 minute\"\n",
			[]wantError{{2, "nat.icmp_timeout", "not a duration"}}},
		{"a zero or negative duration is an error",
			"[nat]\ntcp_established_timeout = \"0s\"\ntcp_transitory_timeout = \"-1m\"\n",
			[]wantError{{2, "nat.tcp_established_timeout", "positive"}, {3, "nat.tcp_transitory_timeout", "positive"}}},

		// Prefixes and addresses.
		{"a prefix with host bits set suggests the masked prefix",
			"[lan]\nprefixes = [\"192.168.77.5/24\"]\n",
			[]wantError{{2, "lan.prefixes[0]", `did you mean "192.168.77.0/24"`}}},
		{"an element of a multi-line array is reported at its own line",
			"[routing]\nno_nat = [\n  \"10.20.0.0/16\", # office\n  \"fd00::/8\",\n]\n",
			[]wantError{{4, "routing.no_nat[1]", "not an IPv4 prefix"}}},
		{"an IPv6 address is an error",
			"[wan]\naddress = \"2001:db8::1\"\n",
			[]wantError{{2, "wan.address", "not an IPv4 address"}}},
		{"the WAN address inside a LAN prefix is an error",
			"[lan]\nprefixes = [\"192.168.77.0/24\"]\n[wan]\naddress = \"192.168.77.1\"\n",
			[]wantError{{4, "wan.address", "inside lan.prefixes[0]"}}},
		{"overlapping LAN prefixes are an error",
			"[lan]\nprefixes = [\"192.168.0.0/16\", \"192.168.77.0/24\"]\n",
			[]wantError{{2, "lan.prefixes[1]", "overlaps lan.prefixes[0]"}}},
		{"a no_nat prefix overlapping the LAN is an error",
			"[lan]\nprefixes = [\"10.0.0.0/8\"]\n[routing]\nno_nat = [\"10.20.0.0/16\"]\n",
			[]wantError{{4, "routing.no_nat[0]", "overlaps lan.prefixes[0]"}}},
		{"the services address inside a LAN prefix is an error",
			"[lan]\nprefixes = [\"192.0.2.0/24\"]\n",
			[]wantError{{0, "services.address", "inside lan.prefixes[0]"}}},
		{"the services address inside a no_nat prefix is an error",
			"[routing]\nno_nat = [\"192.0.2.0/24\"]\n[services]\naddress = \"192.0.2.53\"\n",
			[]wantError{{4, "services.address", "inside routing.no_nat[0]"}}},
		{"a multicast services address is an error",
			"[services]\naddress = \"224.0.0.1\"\n",
			[]wantError{{2, "services.address", "not a unicast address"}}},
		{"a DNS upstream that is not an IPv4 address is an error",
			"[services]\ndns_upstream = [\"198.18.0.53\", \"dns.example\"]\n",
			[]wantError{{2, "services.dns_upstream[1]", "want an IPv4 address"}}},
		{"a DNS upstream with port 0 is an error",
			"[services]\ndns_upstream = [\"198.18.0.53:0\"]\n",
			[]wantError{{2, "services.dns_upstream[0]", "non-zero port"}}},
		{"the service address as its own DNS upstream is an error",
			"[services]\ndns_upstream = [\"192.0.2.53\"]\n",
			[]wantError{{2, "services.dns_upstream[0]", "the service address itself"}}},
		{"admin port 0 is an error",
			"[services]\nadmin_port = 0\n",
			[]wantError{{2, "services.admin_port", "from 1 to 65535"}}},
		{"an admin port above 65535 is an error",
			"[services]\nadmin_port = 70000\n",
			[]wantError{{2, "services.admin_port", "not 70000"}}},
		{"a relative state file is an error",
			"[state]\nfile = \"state.bin\"\n",
			[]wantError{{2, "state.file", "absolute file path"}}},
		{"a state interval below 100ms is an error",
			"[state]\ninterval = \"10ms\"\n",
			[]wantError{{2, "state.interval", "below 100ms"}}},
		{"a state max_age of zero is an error",
			"[state]\nmax_age = \"0s\"\n",
			[]wantError{{2, "state.max_age", "positive"}}},
		{"an empty key is unknown, not a field without a tag",
			"\"\" = 1\n",
			[]wantError{{0, "", "unknown key"}}}, // a top-level empty key has no path to place it by
		{"an empty key inside a table is unknown too",
			"[nat]\n\"\" = 1\n",
			[]wantError{{2, "nat.", "unknown key"}}},
		{"a state hold longer than max_age is an error",
			"[state]\nmax_age = \"1m\"\nhold = \"2m\"\n",
			[]wantError{{3, "state.hold", "outside 0s-1m0s"}}},
		{"a negative state hold is an error",
			"[state]\nhold = \"-1s\"\n",
			[]wantError{{2, "state.hold", "outside"}}},
		{"a relative admin socket path is an error",
			"[services]\nadmin_socket = \"admin.sock\"\n",
			[]wantError{{2, "services.admin_socket", "absolute path"}}},
		{"an admin token with white space is an error",
			"[services]\nadmin_token = \"a b\"\n",
			[]wantError{{2, "services.admin_token", "white space"}}},

		// NAT.
		{"a port range starting below 1024 is an error",
			"[nat]\nport_range = \"1000-2000\"\n",
			[]wantError{{2, "nat.port_range", "below 1024"}}},
		{"a port range whose first port is above its last is an error",
			"[nat]\nport_range = \"30000-20000\"\n",
			[]wantError{{2, "nat.port_range", "above last port"}}},
		{"port 0 is an error",
			"[nat]\nport_range = \"0-100\"\n",
			[]wantError{{2, "nat.port_range", "port 0"}}},
		{"a port above 65535 is an error",
			"[nat]\nport_range = \"20000-70000\"\n",
			[]wantError{{2, "nat.port_range", "above 65535"}}},
		{"an unknown udp filtering is an error",
			"[nat]\nudp_filtering = \"full-cone\"\n",
			[]wantError{{2, "nat.udp_filtering", "not \"address-dependent\" or \"endpoint-independent\""}}},
		{"zero max mappings is an error",
			"[nat]\nmax_mappings = 0\n",
			[]wantError{{2, "nat.max_mappings", "at least 1"}}},

		// Forwards.
		{"a forward port inside the NAT range is an error",
			"[[forward]]\nproto = \"tcp\"\nport = 25000\nto = \"192.168.77.10\"\n",
			[]wantError{{3, "forward[0].port", "overlaps nat.port_range"}}},
		{"a tcp forward without a port is an error",
			"[[forward]]\nproto = \"tcp\"\nto = \"192.168.77.10\"\n",
			[]wantError{{1, "forward[0].port", "missing"}}},
		{"a gre forward with a port is an error",
			"[[forward]]\nproto = \"gre\"\nport = 47\nto = \"192.168.77.10\"\n",
			[]wantError{{3, "forward[0].port", "gre has no ports"}}},
		{"an esp forward with a target port is an error",
			"[[forward]]\nproto = \"esp\"\nto = \"192.168.77.10:500\"\n",
			[]wantError{{3, "forward[0].to", "esp has no ports"}}},
		{"an unknown protocol is an error",
			"[[forward]]\nproto = \"sctp\"\nport = 80\nto = \"192.168.77.10\"\n",
			[]wantError{{2, "forward[0].proto", "not one of tcp, udp, gre, esp"}}},
		{"a forward without a target is an error",
			"[[forward]]\nproto = \"udp\"\nport = 53\n",
			[]wantError{{1, "forward[0].to", "missing"}}},
		{"a malformed target is an error",
			"[[forward]]\nproto = \"udp\"\nport = 53\nto = \"host.lan:53\"\n",
			[]wantError{{4, "forward[0].to", "not an IPv4 address"}}},
		{"a target outside the LAN prefixes is an error",
			"[lan]\nprefixes = [\"192.168.77.0/24\"]\n[[forward]]\nproto = \"tcp\"\nport = 80\nto = \"192.168.78.10\"\n",
			[]wantError{{6, "forward[0].to", "not inside lan.prefixes"}}},
		{"a target port range running past 65535 is an error",
			"[[forward]]\nproto = \"tcp\"\nport = \"1000-1010\"\nto = \"192.168.77.10:65530\"\n",
			[]wantError{{4, "forward[0].to", "past 65535"}}},
		{"overlapping forwards of one protocol are an error",
			"[[forward]]\nproto = \"tcp\"\nport = \"1000-1010\"\nto = \"192.168.77.10\"\n\n[[forward]]\nproto = \"tcp\"\nport = 1005\nto = \"192.168.77.11\"\n",
			[]wantError{{8, "forward[1].port", "overlaps forward[0], line 1"}}},
		{"a second gre forward is an error",
			"[[forward]]\nproto = \"gre\"\nto = \"192.168.77.10\"\n[[forward]]\nproto = \"gre\"\nto = \"192.168.77.11\"\n",
			[]wantError{{5, "forward[1].proto", "second gre forward"}}},

		// TUN and log.
		{"a TUN name longer than 15 bytes is an error",
			"[tun]\nname = \"vpnmasq-much-too-long\"\n",
			[]wantError{{2, "tun.name", "longer than 15"}}},
		{"a TUN name with a slash is an error",
			"[tun]\nname = \"vpn/0\"\n",
			[]wantError{{2, "tun.name", "contains '/'"}}},
		{"the main routing table is an error",
			"[tun]\ntable = 254\n",
			[]wantError{{2, "tun.table", "\"main\" table"}}},
		{"table 0 is an error",
			"[tun]\ntable = 0\n",
			[]wantError{{2, "tun.table", "outside"}}},
		{"a rule priority at or after main's is an error",
			"[tun]\nrule_priority = 32766\n",
			[]wantError{{2, "tun.rule_priority", "outside 1-32765"}}},
		{"an unknown log level is an error",
			"[log]\nlevel = \"verbose\"\n",
			[]wantError{{2, "log.level", "not one of"}}},
		{"an unknown log format is an error",
			"[log]\nformat = \"xml\"\n",
			[]wantError{{2, "log.format", "not one of"}}},
		{"a LAN interface that is also the WAN is an error",
			"[lan]\ninterfaces = [\"eth0\"]\n[wan]\ninterface = \"eth0\"\n",
			[]wantError{{2, "lan.interfaces[0]", "also wan.interface"}}},

		// All at once.
		{"every problem of a file is reported at once",
			"[nat]\nport_range = \"100-200\"\nudp_timeout = 5\n[tun]\ntable = 255\n[[forward]]\nproto = \"tcp\"\nto = \"192.168.77.10\"\nx = 1\n",
			[]wantError{
				{2, "nat.port_range", "below 1024"},
				{3, "nat.udp_timeout", "no unit"},
				{5, "tun.table", "local"},
				{6, "forward[0].port", "missing"},
				{9, "forward[0].x", "unknown key"},
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := loadText(t, tc.text)
			if err == nil {
				t.Fatalf("Load accepted the file: %+v", c)
			}
			if c != nil {
				t.Errorf("Load returned a configuration along with errors")
			}
			var es *Errors
			if !errors.As(err, &es) {
				t.Fatalf("error is %T, want *Errors: %v", err, err)
			}
			for _, w := range tc.want {
				if !hasError(*es, w) {
					t.Errorf("missing %d: %s: ...%s...", w.line, w.key, w.msg)
				}
			}
			if len(*es) != len(tc.want) {
				t.Errorf("got %d problems, want %d:\n%v", len(*es), len(tc.want), err)
			}
			for _, e := range *es {
				if !strings.HasSuffix(e.File, "vpnmasq.toml") {
					t.Errorf("problem names file %q, want the loaded file", e.File)
				}
			}
		})
	}
}

func hasError(es Errors, w wantError) bool {
	for _, e := range es {
		if e.Line == w.line && e.Key == w.key && strings.Contains(e.Msg, w.msg) {
			return true
		}
	}
	return false
}

func TestLoadOfAMissingFileNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "absent.toml")
	_, err := Load(path)
	var es *Errors
	if !errors.As(err, &es) || len(*es) != 1 {
		t.Fatalf("got %v, want one problem", err)
	}
	if got := err.Error(); !strings.HasPrefix(got, path+": ") || !strings.Contains(got, "no such file") {
		t.Errorf("got %q", got)
	}
}

func TestErrorsPrintFileLineKeyMessage(t *testing.T) {
	cases := []struct {
		name string
		err  *Error
		want string
	}{
		{"all parts", &Error{File: "a.toml", Line: 3, Key: "nat.port_range", Msg: "bad"}, "a.toml:3: nat.port_range: bad"},
		{"without a line", &Error{File: "a.toml", Key: "wan.interface", Msg: "bad"}, "a.toml: wan.interface: bad"},
		{"without a key", &Error{File: "a.toml", Line: 2, Msg: "bad"}, "a.toml:2: bad"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.err.Error(); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	t.Run("a list prints one problem per line, in file order", func(t *testing.T) {
		es := Errors{{File: "a", Line: 9, Msg: "late"}, {File: "a", Msg: "lineless"}, {File: "a", Line: 1, Msg: "early"}}
		err := es.orNil()
		if got, want := err.Error(), "a:1: early\na:9: late\na: lineless"; got != want {
			t.Errorf("got %q, want %q", got, want)
		}
		var one *Error
		if !errors.As(err, &one) {
			t.Error("errors.As does not reach the single problems")
		}
	})
	t.Run("no problems is a nil error", func(t *testing.T) {
		if err := (Errors{}).orNil(); err != nil {
			t.Errorf("got %v", err)
		}
	})
}

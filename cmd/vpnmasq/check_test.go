package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vpnmasq/vpnmasq/config"
)

// linuxEphemeral is a host with Linux's default ephemeral ports.
func linuxEphemeral() (config.Ephemeral, error) {
	return config.Ephemeral{Range: config.PortRange{First: 32768, Last: 60999}}, nil
}

func TestCheckCommand(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := write("good.toml", "[lan]\nprefixes = [\"192.168.77.0/24\"]\n\n[[forward]]\nproto = \"tcp\"\nport = \"1000-1010\"\nto = \"192.168.77.10:2000\"\n")
	bad := write("bad.toml", "[nat]\nport_range = \"100-200\"\n[tun]\ntable = 254\nbogus = 1\n")
	example := filepath.Join("..", "..", "config", "example.toml")

	cases := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout []string // regular expressions, each must match
		wantStderr []string
	}{
		{"a valid file prints OK and a summary", []string{"--config", good}, 0,
			[]string{`(?m)^` + regexp.QuoteMeta(good) + `: OK$`,
				`lan\.prefixes +192\.168\.77\.0/24`,
				`wan\.interface +\(from the host at start\)`,
				`nat\.port_range +20000-32767 \(12768 ports\)`,
				`host ephemeral ports +32768-60999 \(net\.ipv4\.ip_local_port_range of this namespace\): apart from nat\.port_range`,
				`nat timeouts +udp 5m, tcp established 2h4m, tcp transitory 4m, icmp 1m`,
				`ipsec +ike 35m, esp 35m, esp wait 2m x5, squelch 30s, max 4096`,
				`forward\[0\] +tcp 1000-1010 -> 192\.168\.77\.10:2000-2010 \(line 4\)`,
				`tun +vpnmasq0, table 5353, rule priority 5353`},
			nil},
		{"the example configuration checks OK", []string{"-config", example}, 0,
			[]string{`: OK\n`, `forward\[0\] +tcp 8080 -> 192\.168\.77\.10:80`, `routing\.no_nat +10\.20\.0\.0/16`}, nil},
		{"every problem is printed as file:line: key: msg", []string{"--config", bad}, 2, nil,
			[]string{`(?m)^` + regexp.QuoteMeta(bad) + `:2: nat\.port_range: 100-200 starts below 1024`,
				`(?m)^` + regexp.QuoteMeta(bad) + `:4: tun\.table: 254 is the kernel's "main" table`,
				`(?m)^` + regexp.QuoteMeta(bad) + `:5: tun\.bogus: unknown key`}},
		{"a missing file is an error", []string{"--config", filepath.Join(dir, "absent.toml")}, 2, nil,
			[]string{`absent\.toml: cannot read: no such file`}},
		{"--config is required", nil, 2, nil, []string{`--config FILE is required`, `usage: vpnmasq check`}},
		{"extra arguments are refused", []string{"--config", good, "more"}, 2, nil, []string{`unexpected argument "more"`}},
		{"an unknown flag is refused", []string{"--konfig", good}, 2, nil, []string{`flag provided but not defined`}},
		{"help is not an error", []string{"-h"}, 0, nil, []string{`usage: vpnmasq check --config FILE`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := runCheck(tc.args, &stdout, &stderr, linuxEphemeral)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.wantCode, &stdout, &stderr)
			}
			match := func(stream string, text string, patterns []string) {
				for _, p := range patterns {
					if !regexp.MustCompile(p).MatchString(text) {
						t.Errorf("%s does not match %q:\n%s", stream, p, text)
					}
				}
			}
			match("stdout", stdout.String(), tc.wantStdout)
			match("stderr", stderr.String(), tc.wantStderr)
			if tc.wantCode == 2 && stdout.Len() > 0 {
				t.Errorf("a failed check wrote to stdout: %s", &stdout)
			}
		})
	}
	t.Run("problems are the only lines on stderr", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		runCheck([]string{"--config", bad}, &stdout, &stderr, linuxEphemeral)
		if lines := strings.Split(strings.TrimSpace(stderr.String()), "\n"); len(lines) != 3 {
			t.Errorf("got %d lines, want 3:\n%s", len(lines), &stderr)
		}
	})
}

func TestCheckComparesThePortsWithTheHostsEphemeralPorts(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	overlap := write("overlap.toml", "[lan]\nprefixes = [\"192.168.77.0/24\"]\n\n[nat]\nport_range = \"20000-60999\"\n")
	forward := write("forward.toml", "[lan]\nprefixes = [\"192.168.77.0/24\"]\n\n[[forward]]\nproto = \"udp\"\nport = 51820\nto = \"192.168.77.10\"\n")
	plain := write("plain.toml", "[lan]\nprefixes = [\"192.168.77.0/24\"]\n")
	wide := func() (config.Ephemeral, error) {
		return config.Ephemeral{Range: config.PortRange{First: 1024, Last: 65535},
			Reserved: []config.PortRange{{First: 500, Last: 500}, {First: 4500, Last: 4500}, {First: 20000, Last: 32767}}}, nil
	}
	unreadable := func() (config.Ephemeral, error) {
		return config.Ephemeral{}, errors.New("reading net.ipv4.ip_local_port_range: permission denied")
	}

	cases := []struct {
		name       string
		path       string
		host       func() (config.Ephemeral, error)
		wantCode   int
		wantStdout []string
		wantStderr []string
	}{
		{"a port range overlapping the ephemeral ports fails with both ranges, the line and the sysctl", overlap, linuxEphemeral, 2, nil,
			[]string{`(?m)^` + regexp.QuoteMeta(overlap+`:5: nat.port_range: 20000-60999 overlaps the host's ephemeral ports 32768-60999 (net.ipv4.ip_local_port_range) in 32768-60999: `) +
				`.*; set nat\.port_range outside 32768-60999, or change net\.ipv4\.ip_local_port_range to leave 20000-60999 free, or list 32768-60999 in net\.ipv4\.ip_local_reserved_ports$`}},
		{"a forward inside the ephemeral ports passes with a warning on stderr", forward, linuxEphemeral, 0,
			[]string{`(?m)^` + regexp.QuoteMeta(forward) + `: OK$`},
			[]string{`(?m)^` + regexp.QuoteMeta(forward+`:6: forward[0].port: warning: udp 51820 lies in the host's ephemeral ports 32768-60999 (net.ipv4.ip_local_port_range): `)}},
		{"ports the host reserved pass, and the summary names the reservation", plain, wide, 0,
			[]string{`host ephemeral ports +1024-65535 less the reserved 4500, 20000-32767 \(`}, nil},
		{"unreadable ephemeral ports are a warning, and the summary says they were not compared", plain, unreadable, 0,
			[]string{`host ephemeral ports +unknown: not compared`},
			[]string{`(?m)^` + regexp.QuoteMeta(plain) + `: warning: the ports were not compared with the host's ephemeral ports: reading net\.ipv4\.ip_local_port_range: permission denied$`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := runCheck([]string{"--config", tc.path}, &stdout, &stderr, tc.host)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.wantCode, &stdout, &stderr)
			}
			for _, m := range []struct {
				stream   string
				text     string
				patterns []string
			}{{"stdout", stdout.String(), tc.wantStdout}, {"stderr", stderr.String(), tc.wantStderr}} {
				for _, p := range m.patterns {
					if !regexp.MustCompile(p).MatchString(m.text) {
						t.Errorf("%s does not match %q:\n%s", m.stream, p, m.text)
					}
				}
			}
			if tc.wantCode == 0 && tc.wantStderr == nil && stderr.Len() > 0 {
				t.Errorf("unexpected stderr:\n%s", &stderr)
			}
			if tc.wantCode == 2 && stdout.Len() > 0 {
				t.Errorf("a failed check wrote to stdout: %s", &stdout)
			}
		})
	}
}

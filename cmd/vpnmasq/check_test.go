package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

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
			code := runCheck(tc.args, &stdout, &stderr)
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
		runCheck([]string{"--config", bad}, &stdout, &stderr)
		if lines := strings.Split(strings.TrimSpace(stderr.String()), "\n"); len(lines) != 3 {
			t.Errorf("got %d lines, want 3:\n%s", len(lines), &stderr)
		}
	})
}

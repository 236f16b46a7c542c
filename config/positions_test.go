package config

import (
	"testing"

	"github.com/BurntSushi/toml"
)

func TestScanPositionsFindsTheLineOfEveryKey(t *testing.T) {
	text := `# header comment
title = "x" # trailing comment

[lan]
interfaces = ["a",
  # a comment inside an array
  "b"]
"quoted key" = 1
'literal key' = 2

[nat . "timers"]
udp = "5m"

[wan]
note = """
[fake]
fake = 1
"""
mtu = 1500
lit = '''
[[forward]]
'''
when = 1979-05-27 07:32:00Z
inline = { a = 1, b = { c = [1,
  2] } }

[[forward]]
proto = "tcp"
[forward.extra]
deep = true

[[forward]]
proto = "udp"
nested.dotted.key = "v"

[[forward]]
[[forward.hops]]
n = 1
[[forward.hops]]
n = 2
`
	cases := []struct {
		name string
		path string
		want int
	}{
		{"a top-level key", "title", 2},
		{"a table header", "lan", 4},
		{"a key in a table", "lan.interfaces", 5},
		{"the first element of a multi-line array", "lan.interfaces[0]", 5},
		{"a later element of a multi-line array after a comment", "lan.interfaces[1]", 7},
		{"a quoted key", "lan.quoted key", 8},
		{"a literal key", "lan.literal key", 9},
		{"a dotted header with spaces and quotes", "nat.timers.udp", 12},
		{"a key after a multi-line string that looks like TOML", "wan.mtu", 19},
		{"a key after a multi-line literal string", "wan.when", 23},
		{"a key inside a nested inline table", "wan.inline.b.c[1]", 25},
		{"the first array-of-tables element", "forward[0]", 27},
		{"a key of the first element", "forward[0].proto", 28},
		{"a sub-table of the first element", "forward[0].extra.deep", 30},
		{"a key of the second element", "forward[1].proto", 33},
		{"a dotted key inside an element", "forward[1].nested.dotted.key", 34},
		{"a nested array of tables counts per parent", "forward[2].hops[1].n", 40},
		{"an unknown path falls back to its nearest ancestor", "forward[1].port", 32},
		{"an unknown index falls back to the array", "lan.interfaces[5]", 5},
		{"a path with no ancestor in the file has no line", "tun.name", 0},
	}
	if _, err := toml.Decode(text, new(map[string]any)); err != nil {
		t.Fatalf("the test text must be valid TOML, as the scanner only sees such text: %v", err)
	}
	pos := scanPositions(text)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := pos.line(tc.path); got != tc.want {
				t.Errorf("line(%q) = %d, want %d", tc.path, got, tc.want)
			}
		})
	}
}

func TestScanPositionsStopsSafelyOnBrokenText(t *testing.T) {
	broken := []string{
		"[unterminated",
		"key = \"unterminated",
		"key = [1, 2",
		"key = { a = 1",
		"= 1",
		"a.b. = 1",
		"k = '''never closed",
		"[[x]",
		"\"q\\",
	}
	for _, text := range broken {
		t.Run(text, func(t *testing.T) {
			scanPositions(text).line("key") // must return, not panic or hang
		})
	}
}

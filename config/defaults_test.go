package config

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// exampleDefault is one "Default: value" of example.toml's comments, with
// the key it documents.
type exampleDefault struct {
	section, key, value string
	line                int
}

// exampleDefaults reads the defaults example.toml's comments name: "Default:
// X." before one key, or "Defaults: X, Y." before as many keys in a row.
// Defaults written in words ("the interface of the IPv4 default route")
// are left out: only TOML values are returned.
func exampleDefaults(text string) []exampleDefault {
	defaultComment := regexp.MustCompile(`Defaults?: (.+?)\.?\s*$`)
	keyLine := regexp.MustCompile(`^(?:# )?([a-z_]+) *=`)
	literal := regexp.MustCompile(`^("[^"]*"|[0-9]+|true|false)(?: \(.*\))?$`)
	var out []exampleDefault
	var section string
	var pending []string
	for i, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, "["):
			section, pending = strings.Trim(line, "[]"), nil
		case keyLine.MatchString(line) && len(pending) > 0:
			key := keyLine.FindStringSubmatch(line)[1]
			if m := literal.FindStringSubmatch(pending[0]); m != nil {
				out = append(out, exampleDefault{section, key, m[1], i + 1})
			}
			pending = pending[1:]
		case strings.HasPrefix(line, "#"):
			if m := defaultComment.FindStringSubmatch(line); m != nil {
				pending = strings.Split(m[1], ", ")
			}
		}
	}
	return out
}

func TestExampleCommentsNameTheDefaults(t *testing.T) {
	text, err := os.ReadFile("example.toml")
	if err != nil {
		t.Fatal(err)
	}
	defaults := exampleDefaults(string(text))
	d := reflect.ValueOf(Default()).Elem()
	seen := map[string]bool{}
	for _, ed := range defaults {
		name := ed.section + "." + ed.key
		seen[name] = true
		t.Run("example.toml's default of "+name+" is the code's", func(t *testing.T) {
			// The comment's value, loaded as the configuration would be,
			// must be what Default holds (which nat's defaults feed).
			path := filepath.Join(t.TempDir(), "one.toml")
			if err := os.WriteFile(path, []byte("["+ed.section+"]\n"+ed.key+" = "+ed.value+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Load(path)
			if err != nil {
				t.Fatalf("example.toml:%d: default %s: %v", ed.line, ed.value, err)
			}
			sf, _ := fieldByTag(reflect.TypeFor[Config](), ed.section)
			kf, ok := fieldByTag(sf.Type, ed.key)
			if !ok {
				t.Fatalf("example.toml:%d: no key %s", ed.line, name)
			}
			got := reflect.ValueOf(c).Elem().FieldByIndex(sf.Index).FieldByIndex(kf.Index).Interface()
			want := d.FieldByIndex(sf.Index).FieldByIndex(kf.Index).Interface()
			if !reflect.DeepEqual(got, want) {
				t.Errorf("example.toml:%d says the default of %s is %s (%v); Default has %v", ed.line, name, ed.value, got, want)
			}
		})
	}
	// The sections whose defaults are nat's must name every one.
	for _, section := range []string{"nat", "limits", "ipsec", "pptp", "tun", "state", "log"} {
		sf, _ := fieldByTag(reflect.TypeFor[Config](), section)
		for _, key := range tomlKeys(sf.Type) {
			if !seen[section+"."+key] {
				t.Errorf("example.toml names no default value for %s.%s", section, key)
			}
		}
	}
}

func TestExampleDefaultsReadsTheComments(t *testing.T) {
	text := "[a]\n# Default: 5.\nx = 1\n# Defaults: 4, \"30s\".\ny = 2\n# z = 3\n# Default: the host's.\nw = 1\n# Default: \"\" (none).\nv = \"x\"\n[b]\nu = 1\n"
	got := exampleDefaults(text)
	want := []exampleDefault{{"a", "x", "5", 3}, {"a", "y", "4", 5}, {"a", "z", `"30s"`, 6}, {"a", "v", `""`, 10}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

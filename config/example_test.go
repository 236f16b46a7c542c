package config

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

func TestExampleConfiguration(t *testing.T) {
	fileText, err := os.ReadFile("example.toml")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("the embedded example is example.toml", func(t *testing.T) {
		if !bytes.Equal(ExampleTOML, fileText) {
			t.Error("ExampleTOML differs from example.toml")
		}
	})

	t.Run("the example validates", func(t *testing.T) {
		if _, err := Load("example.toml"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the example holds the README's values", func(t *testing.T) {
		c, err := Load("example.toml")
		if err != nil {
			t.Fatal(err)
		}
		got := []any{c.LAN.Interfaces, c.LAN.Prefixes, c.WAN.Interface, c.Routing.NoNAT, c.Forwards[0].Port, c.Forwards[0].To, c.Forwards[0].ToPort}
		want := []any{[]string{"br-lan"}, prefixes("192.168.77.0/24"), "rtr-wan", prefixes("10.20.0.0/16"),
			PortRange{8080, 8080}, netip.MustParseAddr("192.168.77.10"), uint16(80)}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
	})

	t.Run("the example sets every default explicitly", func(t *testing.T) {
		c, err := Load("example.toml")
		if err != nil {
			t.Fatal(err)
		}
		d := Default()
		got := []any{c.NAT, c.Services, c.TUN, c.State, c.Log}
		want := []any{d.NAT, d.Services, d.TUN, d.State, d.Log}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
	})

	t.Run("the commented-out alternatives validate too", func(t *testing.T) {
		uncomment := regexp.MustCompile(`(?m)^# (\[\[forward\]\]|[a-z_]+ *= .*)$`)
		text := uncomment.ReplaceAllString(string(fileText), "$1")
		if text == string(fileText) {
			t.Fatal("found no commented-out keys")
		}
		path := filepath.Join(t.TempDir(), "uncommented.toml")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Forwards) != 3 || !c.WAN.Address.IsValid() || c.WAN.MTU == 0 {
			t.Errorf("uncommenting did not reach every alternative: %+v", c)
		}
	})

	// Every key of Config must be shown (set or commented out) in its
	// section, so the example stays a complete reference.
	for _, section := range tomlKeys(reflect.TypeFor[Config]()) {
		field, _ := fieldByTag(reflect.TypeFor[Config](), section)
		typ := field.Type
		header := "[" + section + "]"
		if typ.Kind() == reflect.Slice {
			typ, header = typ.Elem(), "[["+section+"]]"
		}
		body, found := sectionText(string(fileText), header)
		t.Run("the example has the section "+header, func(t *testing.T) {
			if !found {
				t.Errorf("no %s header", header)
			}
		})
		for _, key := range tomlKeys(typ) {
			t.Run("the example shows "+section+"."+key, func(t *testing.T) {
				if !regexp.MustCompile(`(?m)^(# )?` + regexp.QuoteMeta(key) + ` *=`).MatchString(body) {
					t.Errorf("%s.%s is missing from example.toml", section, key)
				}
			})
		}
	}
}

// sectionText returns the lines after the first header line equal to header,
// up to the next header.
func sectionText(text, header string) (string, bool) {
	lines := strings.Split(text, "\n")
	for i, line := range lines {
		if strings.TrimSpace(line) != header {
			continue
		}
		end := i + 1
		for end < len(lines) && !strings.HasPrefix(lines[end], "[") {
			end++
		}
		return strings.Join(lines[i+1:end], "\n"), true
	}
	return "", false
}

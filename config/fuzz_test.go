package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary files to Load: it must never panic, and its two
// outcomes must be consistent.
func FuzzLoad(f *testing.F) {
	f.Add(ExampleTOML)
	f.Add([]byte(""))
	f.Add([]byte("[nat]\nport_range = \"1000-900\"\nudp_timeout = 300\n"))
	f.Add([]byte("[[forward]]\nproto = \"tcp\"\nport = 8080\nto = \"192.168.77.10:80\"\n[[forward]]\nproto = \"gre\"\nto = \"x\"\n"))
	f.Add([]byte("forward = [{proto = \"udp\", port = \"1-2\", to = \"10.0.0.1\"}, 5]\nlan = 3\n"))
	f.Add([]byte("[lan]\nprefixes = [\"192.168.77.5/24\", \n # c\n \"::1/128\"]\n\"quoted.key\" = '''\n[x]'''\n"))
	f.Add([]byte("[wan\naddress = "))
	path := filepath.Join(f.TempDir(), "fuzz.toml")
	f.Fuzz(func(t *testing.T, text []byte) {
		if err := os.WriteFile(path, text, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(path)
		if err != nil {
			var es *Errors
			if !errors.As(err, &es) || len(*es) == 0 || c != nil {
				t.Fatalf("failure is not a non-empty *Errors without a config: %T %v", err, err)
			}
			return
		}
		if verr := c.Validate(); verr != nil {
			t.Fatalf("Load accepted a configuration that does not validate: %v", verr)
		}
	})
}

package hostnet

import (
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/vpnmasq/vpnmasq/config"
)

// ranges parses port ranges written as in the configuration.
func ranges(list ...string) []config.PortRange {
	var out []config.PortRange
	for _, s := range list {
		r, err := config.ParsePortRange(s)
		if err != nil {
			panic(err)
		}
		out = append(out, r)
	}
	return out
}

func TestParseLocalPortRange(t *testing.T) {
	cases := []struct {
		name, text string
		want       config.PortRange
		wantErr    string
	}{
		{"the kernel's format, a tab between the ports, is read", "32768\t60999\n", config.PortRange{First: 32768, Last: 60999}, ""},
		{"any white space separates the ports", " 1024   65535 ", config.PortRange{First: 1024, Last: 65535}, ""},
		{"one port alone is an error", "32768\n", config.PortRange{}, "not two ports"},
		{"three numbers are an error", "1 2 3", config.PortRange{}, "not two ports"},
		{"a port above 65535 is an error", "32768 70000", config.PortRange{}, "not two ports"},
		{"port 0 is an error", "0 60999", config.PortRange{}, "not two ports"},
		{"a range written backwards is an error", "60999 32768", config.PortRange{}, "above last port"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseLocalPortRange(tc.text)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestParseReservedPorts(t *testing.T) {
	cases := []struct {
		name, text string
		want       []config.PortRange
		wantErr    bool
	}{
		{"an empty setting reserves nothing", "\n", nil, false},
		{"ports and ranges are read in order", "8080,20000-20010\n", ranges("8080", "20000-20010"), false},
		{"ranges are sorted and merged when they touch or overlap", "50000-50010,40000,40001-40005,50005-50020", ranges("40000-40005", "50000-50020"), false},
		{"something that is not a port is an error", "8080,http", nil, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseReservedPorts(tc.text)
			if (err != nil) != tc.wantErr || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, %v; want %v (error %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestReadHostReadsTheNamespacesEphemeralPorts(t *testing.T) {
	name, _ := testNamespace(t)
	sysctl := func(setting string) {
		t.Helper()
		if out, err := exec.Command("ip", "netns", "exec", name, "sysctl", "-q", "-w", setting).CombinedOutput(); err != nil {
			t.Fatalf("sysctl -w %s in %s: %v\n%s", setting, name, err, out)
		}
	}
	t.Run("a new namespace has Linux's default range and nothing reserved", func(t *testing.T) {
		if got, want := readHostIn(t, name).Ephemeral, (config.Ephemeral{Range: config.PortRange{First: 32768, Last: 60999}}); !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
	})
	t.Run("the namespace's own settings are read, not the caller's", func(t *testing.T) {
		sysctl("net.ipv4.ip_local_port_range=1024 65535")
		sysctl("net.ipv4.ip_local_reserved_ports=20000-32767,51820")
		want := config.Ephemeral{Range: config.PortRange{First: 1024, Last: 65535}, Reserved: ranges("20000-32767", "51820")}
		if got := readHostIn(t, name).Ephemeral; !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
	})
}

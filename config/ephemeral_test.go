package config

import (
	"os/exec"
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

func TestParseLocalPortRange(t *testing.T) {
	cases := []struct {
		name, text string
		want       PortRange
		wantErr    string
	}{
		{"the kernel's format, a tab between the ports, is read", "32768\t60999\n", PortRange{32768, 60999}, ""},
		{"any white space separates the ports", " 1024   65535 ", PortRange{1024, 65535}, ""},
		{"one port alone is an error", "32768\n", PortRange{}, "not two ports"},
		{"three numbers are an error", "1 2 3", PortRange{}, "not two ports"},
		{"a port above 65535 is an error", "32768 70000", PortRange{}, "not two ports"},
		{"port 0 is an error", "0 60999", PortRange{}, "not two ports"},
		{"a range written backwards is an error", "60999 32768", PortRange{}, "above last port"},
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
		want       []PortRange
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

func TestReadHostReadsTheNamespacesEphemeralPorts(t *testing.T) {
	name, _ := testNamespace(t)
	sysctl := func(setting string) {
		t.Helper()
		if out, err := exec.Command("ip", "netns", "exec", name, "sysctl", "-q", "-w", setting).CombinedOutput(); err != nil {
			t.Fatalf("sysctl -w %s in %s: %v\n%s", setting, name, err, out)
		}
	}
	t.Run("a new namespace has Linux's default range and nothing reserved", func(t *testing.T) {
		if got, want := readHostIn(t, name).Ephemeral, (Ephemeral{Range: PortRange{32768, 60999}}); !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
	})
	t.Run("the namespace's own settings are read, not the caller's", func(t *testing.T) {
		sysctl("net.ipv4.ip_local_port_range=1024 65535")
		sysctl("net.ipv4.ip_local_reserved_ports=20000-32767,51820")
		want := Ephemeral{Range: PortRange{1024, 65535}, Reserved: ranges("20000-32767", "51820")}
		if got := readHostIn(t, name).Ephemeral; !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
	})
}

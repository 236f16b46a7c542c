package interval

import (
	"net/netip"
	"testing"

	"github.com/vpnmasq/vpnmasq/config"
)

func TestMerging(t *testing.T) {
	tests := []struct {
		name string
		in   []config.PortRange
		want []config.PortRange
	}{
		{"overlapping ranges merge", []config.PortRange{{First: 10, Last: 20}, {First: 15, Last: 30}}, []config.PortRange{{First: 10, Last: 30}}},
		{"adjacent ranges merge", []config.PortRange{{First: 21, Last: 30}, {First: 10, Last: 20}}, []config.PortRange{{First: 10, Last: 30}}},
		{"separate ranges stay apart and sorted", []config.PortRange{{First: 50, Last: 60}, {First: 10, Last: 20}}, []config.PortRange{{First: 10, Last: 20}, {First: 50, Last: 60}}},
		{"a contained range disappears", []config.PortRange{{First: 10, Last: 100}, {First: 20, Last: 30}}, []config.PortRange{{First: 10, Last: 100}}},
		{"the top port does not overflow", []config.PortRange{{First: 65535, Last: 65535}, {First: 60000, Last: 65534}}, []config.PortRange{{First: 60000, Last: 65535}}},
		{"reversed ranges are dropped", []config.PortRange{{First: 9, Last: 1}}, []config.PortRange{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := MergePorts(tt.in)
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
			}
		})
	}

	prefixTests := []struct {
		name string
		in   []string
		want []Range
	}{
		{"a prefix inside another merges", []string{"10.0.0.0/8", "10.1.0.0/16"}, []Range{{0x0a000000, 0x0affffff}}},
		{"neighbouring prefixes merge", []string{"192.168.0.0/24", "192.168.1.0/24"}, []Range{{0xc0a80000, 0xc0a801ff}}},
		{"the default prefix covers everything", []string{"0.0.0.0/0"}, []Range{{0, 0xffffffff}}},
		{"host bits are ignored", []string{"192.168.5.77/24"}, []Range{{0xc0a80500, 0xc0a805ff}}},
		{"the last address does not overflow", []string{"255.255.255.255/32", "255.255.255.0/24"}, []Range{{0xffffff00, 0xffffffff}}},
	}
	for _, tt := range prefixTests {
		t.Run(tt.name, func(t *testing.T) {
			var ps []netip.Prefix
			for _, s := range tt.in {
				ps = append(ps, netip.MustParsePrefix(s))
			}
			got := Prefixes(ps)
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("got %x, want %x", got, tt.want)
				}
			}
		})
	}
}

func TestUniqueProtocolsKeepsTheFirstOfEach(t *testing.T) {
	got := UniqueProtocols([]uint8{50, 47, 50, 51, 47})
	want := []uint8{50, 47, 51}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

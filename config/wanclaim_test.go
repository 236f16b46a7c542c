package config

import (
	"net/netip"
	"strings"
	"testing"
)

func TestCheckWANClaimRefusesWhatNoFilterCanExpress(t *testing.T) {
	addr := netip.MustParseAddr("198.18.0.1")
	lan := []netip.Prefix{netip.MustParsePrefix("192.168.77.0/24")}
	tests := []struct {
		name      string
		addr      netip.Addr
		ports     []PortRange
		protocols []uint8
		prefixes  []netip.Prefix
		want      string // "" for accepted
	}{
		{"the ports, GRE, ESP and AH on an IPv4 address with a LAN prefix are accepted", addr, []PortRange{{First: 20000, Last: 32767}, {First: 500, Last: 500}}, []uint8{47, 50, 51}, lan, ""},
		{"no WAN address is refused", netip.Addr{}, nil, nil, nil, "not an IPv4 address"},
		{"an IPv6 WAN address is refused", netip.MustParseAddr("2001:db8::1"), nil, nil, nil, "not an IPv4 address"},
		{"a reversed port range is refused", addr, []PortRange{{First: 9, Last: 1}}, nil, nil, "reversed"},
		{"TCP as a whole protocol is refused", addr, nil, []uint8{6}, nil, "by port"},
		{"UDP as a whole protocol is refused", addr, nil, []uint8{17}, nil, "by port"},
		{"ICMP as a whole protocol is refused", addr, nil, []uint8{1}, nil, "ICMP"},
		{"an IPv6 prefix is refused", addr, nil, nil, []netip.Prefix{netip.MustParsePrefix("2001:db8::/64")}, "not an IPv4 prefix"},
		{"an invalid prefix is refused", addr, nil, nil, []netip.Prefix{{}}, "not an IPv4 prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckWANClaim(tt.addr, tt.ports, tt.protocols, tt.prefixes)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error with %q", err, tt.want)
			}
		})
	}
}

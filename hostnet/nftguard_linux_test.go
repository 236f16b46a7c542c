package hostnet

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/google/nftables"

	"github.com/vpnmasq/vpnmasq/internal/interval"
)

func TestNftIntervalElementsEncodeLikeNft(t *testing.T) {
	type elem struct {
		key string // hex
		end bool
	}
	tests := []struct {
		name   string
		ranges []interval.Range
		width  int
		want   []elem
	}{
		{"no ranges give no elements", nil, 2, nil},
		{"a range not starting at zero opens with an interval end at zero", []interval.Range{{First: 20000, Last: 32767}}, 2,
			[]elem{{"0000", true}, {"4e20", false}, {"8000", true}}},
		{"a single port is a range of one", []interval.Range{{First: 500, Last: 500}}, 2,
			[]elem{{"0000", true}, {"01f4", false}, {"01f5", true}}},
		{"a range starting at zero has no leading end", []interval.Range{{First: 0, Last: 9}}, 2,
			[]elem{{"0000", false}, {"000a", true}}},
		{"a range reaching the last port has no closing end", []interval.Range{{First: 65000, Last: 65535}}, 2,
			[]elem{{"0000", true}, {"fde8", false}}},
		{"addresses use four bytes", []interval.Range{{First: 0x0a4d0000, Last: 0x0a4d00ff}}, 4,
			[]elem{{"00000000", true}, {"0a4d0000", false}, {"0a4d0100", true}}},
		{"the whole address space is one open element", []interval.Range{{First: 0, Last: 0xffffffff}}, 4,
			[]elem{{"00000000", false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := intervalElements(tt.ranges, tt.width)
			if len(got) != len(tt.want) {
				t.Fatalf("got %s, want %v", describeElems(got), tt.want)
			}
			for i, w := range tt.want {
				if fmt.Sprintf("%x", got[i].Key) != w.key || got[i].IntervalEnd != w.end {
					t.Fatalf("element %d: got %s, want %v", i, describeElems(got), tt.want)
				}
			}
		})
	}
}

func describeElems(es []nftables.SetElement) string {
	var b bytes.Buffer
	for _, e := range es {
		fmt.Fprintf(&b, "{%x end=%v} ", e.Key, e.IntervalEnd)
	}
	return b.String()
}

func TestNftTableNameFollowsTheTUN(t *testing.T) {
	for _, tc := range []struct{ tun, want string }{
		{"vpnmasq0", "vpnmasq_vpnmasq0"},
		{"tun7", "vpnmasq_tun7"},
	} {
		t.Run(tc.tun+" gives "+tc.want, func(t *testing.T) {
			if got := nftTableName(tc.tun); got != tc.want {
				t.Fatalf("nftTableName(%q) = %q, want %q", tc.tun, got, tc.want)
			}
		})
	}
}

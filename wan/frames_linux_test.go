package wan

import (
	"testing"

	"github.com/vishvananda/netlink"
)

func TestNeighbourUse(t *testing.T) {
	for _, tc := range []struct {
		name          string
		state         int
		usable, stale bool
	}{
		{"a reachable neighbour is used as it is", netlink.NUD_REACHABLE, true, false},
		{"a permanent neighbour is used as it is", netlink.NUD_PERMANENT, true, false},
		{"a neighbour being verified is used as it is", netlink.NUD_DELAY, true, false},
		{"a neighbour being probed is used as it is", netlink.NUD_PROBE, true, false},
		{"a stale neighbour is used, and one packet goes through the kernel to verify it", netlink.NUD_STALE, true, true},
		{"an incomplete neighbour is not used", netlink.NUD_INCOMPLETE, false, false},
		{"a failed neighbour is not used", netlink.NUD_FAILED, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			usable, stale := neighbourUse(tc.state)
			if usable != tc.usable || stale != tc.stale {
				t.Errorf("got usable %v stale %v", usable, stale)
			}
		})
	}
}

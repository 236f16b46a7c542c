package hostnet

import (
	"maps"
	"strings"
	"testing"

	"github.com/vpnmasq/vpnmasq/internal/netnstest"
)

// features reads the named features of dev in ns with ethtool -k.
func features(t *testing.T, ns, dev string, names ...string) map[string]string {
	t.Helper()
	out := netnstest.Run(t, "ip", "netns", "exec", ns, "ethtool", "-k", dev)
	got := make(map[string]string)
	for line := range strings.SplitSeq(out, "\n") {
		name, value, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if !ok {
			continue
		}
		for _, n := range names {
			if name == n {
				got[n] = strings.Fields(value)[0]
			}
		}
	}
	return got
}

func TestHostTurnsOnUDPGROForwardingAndRestoresIt(t *testing.T) {
	netnstest.RequireRoot(t, "ethtool")
	lab := newHostLab(t)
	lab.openTUN(t)
	// ethtool calls GRO generic-receive-offload; the kernel's name is rx-gro.
	names := []string{"generic-receive-offload", "rx-udp-gro-forwarding", "rx-gro-list"}
	// lan0 starts as a veth does (GRO off); wan0 with GRO already on and
	// fraglist GRO on, which must go off and come back.
	netnstest.Run(t, "ip", "netns", "exec", lab.router, "ethtool", "-K", "wan0", "gro", "on", "rx-gro-list", "on")
	before := map[string]map[string]string{"lan0": features(t, lab.router, "lan0", names...), "wan0": features(t, lab.router, "wan0", names...)}
	if before["lan0"]["rx-udp-gro-forwarding"] != "off" || before["wan0"]["rx-gro-list"] != "on" {
		t.Fatalf("the lab does not start as intended: %v", before)
	}

	s := lab.spec()
	s.UDPGRO = true
	h := lab.mustSetup(t, s)
	want := map[string]string{"generic-receive-offload": "on", "rx-udp-gro-forwarding": "on", "rx-gro-list": "off"}
	for _, dev := range []string{"lan0", "wan0"} {
		t.Run("Setup turns on GRO and UDP GRO forwarding, fraglist GRO off, on "+dev, func(t *testing.T) {
			if got := features(t, lab.router, dev, names...); !maps.Equal(got, want) {
				t.Fatalf("got %v, want %v", got, want)
			}
		})
	}
	if err := netnstest.Do(lab.router, h.Close); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, dev := range []string{"lan0", "wan0"} {
		t.Run("Close restores the features of "+dev, func(t *testing.T) {
			if got := features(t, lab.router, dev, names...); !maps.Equal(got, before[dev]) {
				t.Fatalf("got %v, want %v", got, before[dev])
			}
		})
	}
}

func TestHostLeavesFeaturesAloneWithoutUDPGRO(t *testing.T) {
	netnstest.RequireRoot(t, "ethtool")
	lab := newHostLab(t)
	lab.openTUN(t)
	names := []string{"generic-receive-offload", "rx-udp-gro-forwarding"}
	before := features(t, lab.router, "lan0", names...)
	lab.mustSetup(t, lab.spec())
	if got := features(t, lab.router, "lan0", names...); !maps.Equal(got, before) {
		t.Fatalf("features changed: %v, were %v", got, before)
	}
}

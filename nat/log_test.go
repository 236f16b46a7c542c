package nat

import (
	"testing"
	"time"
)

func TestMappingLifecycleIsLoggedAtDebug(t *testing.T) {
	l, logs := newLoggingLab(t, Config{})
	l.mustOut(udpPkt(ap(lanA, 40000), ap(remote1, 53), "q"), VerdictToWAN)
	created := logs.entries(t, "mapping created")
	if len(created) != 1 || created[0]["proto"] != "udp" || created[0]["lan"] != "10.0.0.10:40000" || created[0]["level"] != "debug" {
		t.Fatalf("mapping created lines: %v", created)
	}
	wan, _ := created[0]["wan"].(string)

	t.Run("one line when the mapping is created, none for later packets", func(t *testing.T) {
		l.mustOut(udpPkt(ap(lanA, 40000), ap(remote1, 53), "again"), VerdictToWAN)
		if n := len(logs.entries(t, "mapping created")); n != 1 {
			t.Errorf("%d mapping created lines after a second packet, want 1", n)
		}
	})
	t.Run("one line with the same endpoints when it expires", func(t *testing.T) {
		l.advance(5*time.Minute + time.Second)
		expired := logs.entries(t, "mapping expired")
		if len(expired) != 1 || expired[0]["lan"] != "10.0.0.10:40000" || expired[0]["wan"] != wan || expired[0]["age"] == nil {
			t.Errorf("mapping expired lines: %v", expired)
		}
	})
}

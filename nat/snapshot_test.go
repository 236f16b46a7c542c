package nat

import (
	"testing"
	"time"
)

func TestSnapshots(t *testing.T) {
	t.Run("IKE sessions are listed with their SPIs, age and idle time", func(t *testing.T) {
		l := newLab(t, Config{})
		l.mustOut(ikePkt(ap(lanA, PortIKE), ap(remote1, PortIKE), 0x1111, 0), VerdictToWAN)
		l.advance(2 * time.Second)
		l.mustIn(ikePkt(ap(remote1, PortIKE), ap(wanAddr, PortIKE), 0x1111, 0x2222), VerdictToLAN)
		l.advance(time.Second)
		got := l.e.IKESessions()
		if len(got) != 1 {
			t.Fatalf("%d sessions: %+v", len(got), got)
		}
		s := got[0]
		if s.Host != ap(lanA, PortIKE) || s.Remote != ap(remote1, PortIKE) || s.InitiatorSPI != 0x1111 || s.ResponderSPI != 0x2222 ||
			s.Age != 3*time.Second || s.Idle != time.Second {
			t.Errorf("session %+v", s)
		}
		l.advance(36 * time.Minute)
		if n := len(l.e.IKESessions()); n != 0 {
			t.Errorf("%d sessions after ike_timeout", n)
		}
	})
	t.Run("AH refusals are listed per host and remote with a packet count", func(t *testing.T) {
		l := newLab(t, Config{})
		for range 3 {
			r, _ := l.out(ahPkt(lanA, remote1, 7))
			wantDrop(t, r, DropAHNotMasqueradable)
		}
		l.advance(time.Second)
		r, _ := l.out(ahPkt(lanB, remote2, 8))
		wantDrop(t, r, DropAHNotMasqueradable)
		got := l.e.AHRefusals()
		if len(got) != 2 || got[0].Host != lanB || got[0].Packets != 1 || got[1].Host != lanA || got[1].Remote != remote1 ||
			got[1].Packets != 3 || got[1].LastSeen != time.Second {
			t.Errorf("refusals %+v", got)
		}
	})
}

package nat

import "testing"

func TestPortPool(t *testing.T) {
	t.Run("source port is kept when free and in range", func(t *testing.T) {
		pp := newPortPool(PortRange{First: 20000, Last: 20099})
		if p, ok := pp.take(20050); !ok || p != 20050 {
			t.Fatalf("take(20050) = %d, %v", p, ok)
		}
	})
	t.Run("a port outside the range is replaced by one of the same parity", func(t *testing.T) {
		pp := newPortPool(PortRange{First: 20000, Last: 20099})
		for _, want := range []uint16{5001, 5002, 65535, 0} {
			p, ok := pp.take(want)
			if !ok || p < 20000 || p > 20099 || p%2 != want%2 {
				t.Errorf("take(%d) = %d, %v: want an in-range port of the same parity", want, p, ok)
			}
		}
	})
	t.Run("a taken port is replaced by one of the same parity", func(t *testing.T) {
		pp := newPortPool(PortRange{First: 20000, Last: 20099})
		pp.take(20051)
		p, ok := pp.take(20051)
		if !ok || p == 20051 || p%2 != 1 {
			t.Errorf("second take(20051) = %d, %v", p, ok)
		}
	})
	t.Run("the other parity is used once one parity is exhausted", func(t *testing.T) {
		pp := newPortPool(PortRange{First: 20000, Last: 20003})
		pp.take(20000)
		pp.take(20002)
		p, ok := pp.take(20000)
		if !ok || p%2 != 1 {
			t.Errorf("take = %d, %v: want an odd port", p, ok)
		}
	})
	t.Run("no port is handed out twice and exhaustion is reported", func(t *testing.T) {
		pp := newPortPool(PortRange{First: 30000, Last: 30009})
		seen := map[uint16]bool{}
		for i := 0; i < 10; i++ {
			p, ok := pp.take(1234)
			if !ok || seen[p] {
				t.Fatalf("take #%d = %d, %v (seen before: %v)", i, p, ok, seen[p])
			}
			seen[p] = true
		}
		if p, ok := pp.take(30005); ok {
			t.Errorf("take on a full pool returned %d", p)
		}
		if pp.inUse != 10 {
			t.Errorf("inUse %d, want 10", pp.inUse)
		}
	})
	t.Run("a released port can be taken again", func(t *testing.T) {
		pp := newPortPool(PortRange{First: 30000, Last: 30001})
		pp.take(30000)
		pp.take(30001)
		pp.release(30001)
		pp.release(30001) // releasing twice must not corrupt the count
		if pp.inUse != 1 {
			t.Fatalf("inUse %d after double release, want 1", pp.inUse)
		}
		if p, ok := pp.take(30000); !ok || p != 30001 {
			t.Errorf("take = %d, %v; want the released 30001", p, ok)
		}
	})
	t.Run("the search wraps around the end of the range", func(t *testing.T) {
		pp := newPortPool(PortRange{First: 65530, Last: 65535})
		for want := uint16(65530); want != 0; want++ {
			pp.take(want)
		}
		pp.release(65530)
		pp.cursor = 65535
		if p, ok := pp.take(1); !ok || p != 65530 {
			t.Errorf("take = %d, %v; want 65530 after wrapping", p, ok)
		}
	})
	t.Run("a one-port range", func(t *testing.T) {
		pp := newPortPool(PortRange{First: 40000, Last: 40000})
		if p, ok := pp.take(1); !ok || p != 40000 {
			t.Fatalf("take = %d, %v", p, ok)
		}
		if _, ok := pp.take(40000); ok {
			t.Error("second take succeeded on a one-port range")
		}
		if pp.Len() != 1 {
			t.Errorf("Len %d", pp.Len())
		}
	})
	t.Run("ports marked outside the range do not shrink it", func(t *testing.T) {
		// Port forwards mark their external ports in the same pool; a
		// forward on port 80 must not cost the dynamic range a port.
		pp := newPortPool(PortRange{First: 20000, Last: 20001})
		pp.mark(80)
		for i := 0; i < 2; i++ {
			if p, ok := pp.take(5000); !ok {
				t.Fatalf("take #%d failed with %d of 2 range ports free", i, 2-i)
			} else if p < 20000 || p > 20001 {
				t.Fatalf("take #%d = %d, outside the range", i, p)
			}
		}
	})
}

package offload

import "testing"

func TestSegmentsHandOutBuffersWithHeadroomAndReuseThem(t *testing.T) {
	s := &Segments{Headroom: 10}
	a, b := s.Next(100), s.Next(1500)
	if len(a) != 100 || len(b) != 1500 {
		t.Fatalf("packet areas of %d and %d bytes, want 100 and 1500", len(a), len(b))
	}
	if len(s.Out) != 2 || len(s.Out[0]) != 110 || len(s.Out[1]) != 1510 {
		t.Fatalf("Out holds %d segments, want 2 of 110 and 1510 bytes with their headroom", len(s.Out))
	}
	a[0] = 0xab
	if s.Out[0][10] != 0xab {
		t.Fatal("the packet area does not start Headroom bytes into the segment")
	}
	s.Reset()
	if len(s.Out) != 0 {
		t.Fatalf("Out holds %d segments after Reset", len(s.Out))
	}
	if allocs := testing.AllocsPerRun(100, func() {
		s.Reset()
		s.Next(1000)
		s.Next(1500)
	}); allocs != 0 {
		t.Errorf("%v allocations per pass once the buffers are large enough, want 0", allocs)
	}
}

package offload

// Segments hands out the buffers Split writes segments into (pass Next as
// its next), each with Headroom bytes in front of the packet for the
// caller's own header, and lists them in Out until Reset. The buffers are
// kept from one Reset to the next, so a steady stream of super-packets
// allocates nothing once they are large enough.
type Segments struct {
	Headroom int
	// Out are the segments handed out since Reset, each buf[:Headroom+size].
	Out  [][]byte
	bufs [][]byte
	used int
}

// Reset makes every buffer available again; what Out held may be
// overwritten from now on.
func (s *Segments) Reset() {
	s.used = 0
	s.Out = s.Out[:0]
}

// Next returns the packet area, size bytes after Headroom, of the next
// buffer.
func (s *Segments) Next(size int) []byte {
	if s.used == len(s.bufs) {
		s.bufs = append(s.bufs, nil)
	}
	if cap(s.bufs[s.used]) < s.Headroom+size {
		s.bufs[s.used] = make([]byte, s.Headroom+max(size, 2048))
	}
	b := s.bufs[s.used][:s.Headroom+size]
	s.used++
	s.Out = append(s.Out, b)
	return b[s.Headroom:]
}

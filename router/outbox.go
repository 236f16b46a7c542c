package router

// outbox collects what one pass of a packet loop sends, so each side gets a
// single batched write per pass. Packets read from a device are queued by
// reference (no copy); packets the router makes itself (ICMP errors,
// fragments) get scratch buffers that live until the next reset.
//
// Every buffer has offset bytes of headroom before its packet (the TUN needs
// room for its virtio-net header); a queued entry is buf[:offset+length].
type outbox struct {
	offset   int
	wan      [][]byte
	whole    []bool // per wan entry: a GSO super-packet for WriteGSO
	lan      [][]byte
	lanWhole []bool // per lan entry: a GSO super-packet written with its virtio-net header
	scratch  [][]byte
	used     int
}

func newOutbox(batch, offset, scratchCount, scratchSize int) *outbox {
	o := &outbox{
		offset: offset,
		wan:    make([][]byte, 0, batch+scratchCount),
		lan:    make([][]byte, 0, batch+scratchCount),
	}
	for range scratchCount {
		o.scratch = append(o.scratch, make([]byte, offset+scratchSize))
	}
	return o
}

func (o *outbox) reset() {
	o.wan = o.wan[:0]
	o.whole = o.whole[:0]
	o.lan = o.lan[:0]
	o.lanWhole = o.lanWhole[:0]
	o.used = 0
}

// newBuffer returns a scratch buffer (headroom included), or nil when this
// pass used them all.
func (o *outbox) newBuffer() []byte {
	if o.used == len(o.scratch) {
		return nil
	}
	b := o.scratch[o.used]
	o.used++
	return b
}

// toWAN queues the n-byte packet at buf[offset:].
func (o *outbox) toWAN(buf []byte, n int) {
	o.wan = append(o.wan, buf[:o.offset+n])
	o.whole = append(o.whole, false)
}

// toWANWhole queues a GSO super-packet whose virtio-net header is in the
// headroom just before offset.
func (o *outbox) toWANWhole(buf []byte, n int) {
	o.wan = append(o.wan, buf[:o.offset+n])
	o.whole = append(o.whole, true)
}

// toLAN queues the n-byte packet at buf[offset:] for the TUN.
func (o *outbox) toLAN(buf []byte, n int) {
	o.lan = append(o.lan, buf[:o.offset+n])
	o.lanWhole = append(o.lanWhole, false)
}

// toLANWhole queues a super-packet whose virtio-net header (TUN form) is in
// the headroom just before offset.
func (o *outbox) toLANWhole(buf []byte, n int) {
	o.lan = append(o.lan, buf[:o.offset+n])
	o.lanWhole = append(o.lanWhole, true)
}

package datapath

import "github.com/vpnmasq/vpnmasq/offload"

// outbox collects what one pass of a packet loop sends, so each side gets a
// single batched write per pass. Packets read from a device are queued by
// reference (no copy); packets the path makes itself (ICMP errors,
// fragments) get scratch buffers that live until the next reset.
//
// Every buffer has Headroom bytes before its packet; a queued entry is
// buf[:Headroom+length]. Each entry has its offload header beside it: zero
// for a wire packet, the super-packet's (in the TUN's form) otherwise.
type outbox struct {
	wan     [][]byte
	wanHdrs []offload.Header
	lan     [][]byte
	lanHdrs []offload.Header
	scratch [][]byte
	used    int
}

func newOutbox(batch, scratchCount, scratchSize int) *outbox {
	o := &outbox{
		wan:     make([][]byte, 0, batch+scratchCount),
		wanHdrs: make([]offload.Header, 0, batch+scratchCount),
		lan:     make([][]byte, 0, batch+scratchCount),
		lanHdrs: make([]offload.Header, 0, batch+scratchCount),
	}
	for range scratchCount {
		o.scratch = append(o.scratch, make([]byte, Headroom+scratchSize))
	}
	return o
}

func (o *outbox) reset() {
	o.wan = o.wan[:0]
	o.wanHdrs = o.wanHdrs[:0]
	o.lan = o.lan[:0]
	o.lanHdrs = o.lanHdrs[:0]
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

// toWAN queues the n-byte wire packet at buf[Headroom:].
func (o *outbox) toWAN(buf []byte, n int) {
	o.wan = append(o.wan, buf[:Headroom+n])
	o.wanHdrs = append(o.wanHdrs, offload.Header{})
}

// toWANSuper queues the n-byte TCP or UDP super-packet at buf[Headroom:],
// described by h as the TUN gave it.
func (o *outbox) toWANSuper(buf []byte, n int, h offload.Header) {
	o.wan = append(o.wan, buf[:Headroom+n])
	o.wanHdrs = append(o.wanHdrs, h)
}

// toLAN queues the n-byte wire packet at buf[Headroom:] for the TUN.
func (o *outbox) toLAN(buf []byte, n int) {
	o.lan = append(o.lan, buf[:Headroom+n])
	o.lanHdrs = append(o.lanHdrs, offload.Header{})
}

// toLANSuper queues a super-packet for the TUN, h in the TUN's form.
func (o *outbox) toLANSuper(buf []byte, n int, h offload.Header) {
	o.lan = append(o.lan, buf[:Headroom+n])
	o.lanHdrs = append(o.lanHdrs, h)
}

package datapath

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vpnmasq/vpnmasq/offload"
)

// The two transports the packet path moves packets between. Both move
// batches: a loop reads up to BatchSize packets, decides each, and writes
// what it queued with one call per side. Every buffer passed to them has
// Headroom bytes before its packet, which a transport may use for its own
// framing (the TUN's virtio-net header); per-packet metadata travels in the
// arguments, never in that headroom.

// TUN is the LAN side: the TUN device the kernel forwards LAN traffic into.
//
// Read and Write may run concurrently with each other; concurrent calls of
// the same method are not made.
type TUN interface {
	// Read blocks until at least one packet arrives, fills bufs[i][offset:]
	// with wire-sized IPv4 packets (super-packets already split) and
	// sizes[i] with their lengths, and returns how many. It may return
	// packets together with an error wrapping ErrDropped, after which the
	// loop goes on. After the device is closed it returns an error for
	// which Devices.Closed reports true.
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)
	// Write writes each bufs[i][offset:] as one packet towards the LAN. It
	// may use the bytes before offset.
	Write(bufs [][]byte, offset int) (int, error)
	// BatchSize is the most packets one Read returns.
	BatchSize() int
}

// SuperPacketTUN is a TUN that can also move TCP super-packets whole, and
// UDP ones where the device has UDP segmentation offload, each described by
// its virtio-net header (offload.Header, CsumStart counted from the IPv4
// header).
type SuperPacketTUN interface {
	TUN
	// SuperPackets reports whether ReadSuperPackets and WriteSuperPacket
	// work (the device was created with a virtio-net header); it does not
	// change once the device is open.
	SuperPackets() bool
	// UDPSuperPackets reports whether UDP super-packets (GSO_UDP_L4) come
	// and go whole too, rather than only TCP ones; it does not change once
	// the device is open. Reads may return UDP super-packets either way
	// (the path splits what it cannot send whole); writes take them only
	// when this is true.
	UDPSuperPackets() bool
	// ReadSuperPackets is Read that leaves super-packets whole: hdrs[i] is
	// the header of packet i (zero for a wire packet; a wire packet may
	// still have NeedsChecksum set).
	ReadSuperPackets(bufs [][]byte, sizes []int, hdrs []offload.Header, offset int) (int, error)
	// WriteSuperPacket writes the super-packet buf[offset:] described by h.
	// It uses the offload.HeaderLen bytes before offset.
	WriteSuperPacket(buf []byte, h offload.Header, offset int) error
}

// WAN is the outside: it captures the packets addressed to the router on the
// WAN interface and sends packets out of it.
//
// Read and Write (and WriteSuperPackets) may run concurrently with each
// other; concurrent calls of the same method are serialised by the
// transport.
type WAN interface {
	// Read blocks until at least one packet arrives; fills bufs[i][offset:]
	// with an IPv4 packet, sizes[i] with its length and hdrs[i] with its
	// offload header: zero for a wire packet with complete checksums, or
	// the TUN-form header of a TCP or UDP super-packet kept whole (only
	// when the transport was opened to keep them). It returns how many. After Close
	// it returns an error for which Devices.Closed reports true.
	Read(bufs [][]byte, sizes []int, hdrs []offload.Header, offset int) (n int, err error)
	// Write sends each bufs[i][offset:] as one IPv4 packet; returns how many
	// were sent and the first error. A packet refused (e.g. EMSGSIZE,
	// EHOSTUNREACH) does not stop the rest of the batch: the error is then
	// a *WriteError naming every refused packet.
	Write(bufs [][]byte, offset int) (int, error)
	// BatchSize is the most packets one Read returns and one Write sends
	// in a single system call; callers size their buffer slices by it.
	BatchSize() int
}

// SuperPacketWAN is a WAN that can send TCP and UDP super-packets whole.
type SuperPacketWAN interface {
	WAN
	// SendsSuperPackets reports whether WriteSuperPackets sends them whole
	// (rather than split); it does not change once the transport is open.
	SendsSuperPackets() bool
	// WriteSuperPackets sends the super-packets bufs[i][offset:], each
	// described by hdrs[i] as the TUN gave it, whole where it can and split
	// into wire packets otherwise. It returns how many it sent.
	WriteSuperPackets(bufs [][]byte, hdrs []offload.Header, offset int) (int, error)
}

// ErrDropped, wrapped in a Read error, says that the transport dropped some
// packets but returns the others: the loop logs it and carries on.
var ErrDropped = errors.New("packets dropped")

// RefusedPacket is one packet of a batch the kernel did not send.
type RefusedPacket struct {
	Index int   // position in the bufs passed to Write
	Err   error // usually a syscall.Errno such as EMSGSIZE or EHOSTUNREACH
}

// WriteError reports the packets of one Write batch that were refused; every
// other packet of the batch was sent. errors.Is sees each packet's error, so
// errors.Is(err, unix.EMSGSIZE) asks whether any packet was too big.
type WriteError struct {
	Refused []RefusedPacket // in batch order
}

func (e *WriteError) Error() string {
	if len(e.Refused) == 0 {
		return "wan write: no packet refused"
	}
	first := e.Refused[0]
	var b strings.Builder
	fmt.Fprintf(&b, "wan write: packet %d refused: %v", first.Index, first.Err)
	if more := len(e.Refused) - 1; more > 0 {
		fmt.Fprintf(&b, " (and %d more)", more)
	}
	return b.String()
}

// Unwrap exposes every refused packet's error to errors.Is and errors.As.
func (e *WriteError) Unwrap() []error {
	errs := make([]error, len(e.Refused))
	for i, r := range e.Refused {
		errs[i] = r.Err
	}
	return errs
}

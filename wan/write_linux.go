package wan

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/datapath"
	"github.com/vpnmasq/vpnmasq/offload"
)

// Write implements datapath.WAN: frames to resolved next hops through the
// packet socket (Options.Frames), the rest (unresolved, not out of the WAN
// interface, or all without Frames) through the raw socket.
func (w *Transport) Write(bufs [][]byte, offset int) (int, error) {
	if w.frames == nil || !w.opts.Frames {
		return w.writeRaw(bufs, offset)
	}
	w.frameMu.Lock()
	defer w.frameMu.Unlock()
	slow, err := w.frames.write(bufs, nil, offset, w.slowIdx[:0])
	w.slowIdx = slow
	if err != nil {
		return 0, w.ioError(err)
	}
	sent := len(bufs) - len(slow)
	if len(slow) == 0 {
		return sent, nil
	}
	rest := w.slowBufs[:0]
	for _, i := range slow {
		rest = append(rest, bufs[i])
	}
	w.slowBufs = rest
	n, err := w.writeRaw(rest, offset)
	var we *datapath.WriteError
	if errors.As(err, &we) {
		for j := range we.Refused {
			we.Refused[j].Index = slow[we.Refused[j].Index]
		}
	}
	return sent + n, err
}

// writeRaw sends packets through the raw IPv4 socket; the host routes them.
func (w *Transport) writeRaw(bufs [][]byte, offset int) (int, error) {
	w.txMu.Lock()
	defer w.txMu.Unlock()
	defer runtime.KeepAlive(bufs)
	sent := 0
	var refused []datapath.RefusedPacket
	for start := 0; start < len(bufs); start += batchSize {
		chunk := bufs[start:min(start+batchSize, len(bufs))]
		k := 0
		for j, b := range chunk {
			if offset < 0 || offset > len(b) {
				refused = append(refused, datapath.RefusedPacket{Index: start + j, Err: fmt.Errorf("offset %d beyond the %d-byte buffer", offset, len(b))})
				continue
			}
			pkt := b[offset:]
			ip := header.IPv4(pkt)
			if len(pkt) < header.IPv4MinimumSize || !ip.IsValid(len(pkt)) {
				refused = append(refused, datapath.RefusedPacket{Index: start + j, Err: fmt.Errorf("not a valid IPv4 packet (%d bytes)", len(pkt))})
				continue
			}
			// The header's total length says where the packet ends; the
			// kernel would otherwise send trailing buffer bytes along.
			pkt = pkt[:ip.TotalLength()]
			w.txAddrs[k].Addr = ip.DestinationAddress().As4()
			w.txIovs[k].Base = &pkt[0]
			w.txIovs[k].SetLen(len(pkt))
			w.txIndex[k] = start + j
			k++
		}
		for i := 0; i < k; {
			var got int
			var errno syscall.Errno
			err := w.txConn.Write(func(fd uintptr) bool {
				for {
					r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.txMsgs[i])), uintptr(k-i), 0, 0, 0)
					switch e {
					case unix.EINTR:
						continue
					case unix.EAGAIN:
						return false // socket buffer full: wait in the poller
					}
					got, errno = int(r), e
					return true
				}
			})
			if err != nil {
				return sent, w.ioError(err)
			}
			if errno != 0 {
				// sendmmsg reports an error only when the first message of
				// the call failed; skip that one and go on with the rest.
				refused = append(refused, datapath.RefusedPacket{Index: w.txIndex[i], Err: os.NewSyscallError("sendmmsg", errno)})
				i++
				continue
			}
			if got <= 0 {
				return sent, fmt.Errorf("wan write: sendmmsg sent nothing")
			}
			sent += got
			i += got
		}
	}
	if len(refused) > 0 {
		slices.SortFunc(refused, func(a, b datapath.RefusedPacket) int { return a.Index - b.Index })
		return sent, &datapath.WriteError{Refused: refused}
	}
	return sent, nil
}

// SendsSuperPackets reports whether WriteSuperPackets sends them whole: the
// WAN link has an Ethernet header, so frames can go out.
func (w *Transport) SendsSuperPackets() bool { return w.frames != nil }

// WriteSuperPackets implements datapath.SuperPacketWAN: each super-packet
// goes whole through the packet socket where the next hop is resolved, and
// is otherwise split into segments and sent through the raw socket.
func (w *Transport) WriteSuperPackets(bufs [][]byte, hdrs []offload.Header, offset int) (int, error) {
	w.frameMu.Lock()
	defer w.frameMu.Unlock()
	slow := w.slowIdx[:0]
	if w.frames != nil {
		var err error
		if slow, err = w.frames.write(bufs, hdrs, offset, slow); err != nil {
			return 0, w.ioError(err)
		}
	} else {
		for i := range bufs {
			slow = append(slow, i)
		}
	}
	w.slowIdx = slow
	sent := len(bufs) - len(slow)
	w.superSent.Add(uint64(sent))
	w.segs.Headroom = offset
	for _, i := range slow {
		w.superSplit.Add(1)
		w.segs.Reset()
		first, _, err := offload.Split(bufs[i][offset:], hdrs[i], w.segs.Next)
		if err != nil {
			w.malformed.Add(1)
			continue
		}
		segs := append(append(w.slowBufs[:0], bufs[i][:offset+first]), w.segs.Out...)
		w.slowBufs = segs
		if _, err := w.writeRaw(segs, offset); err != nil && !errors.As(err, new(*datapath.WriteError)) {
			return sent, err
		}
		sent++
	}
	return sent, nil
}

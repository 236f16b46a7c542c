package router

import (
	"fmt"
	"os"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// SetCapture replaces the capture socket's filter with c's. The kernel
// swaps the program atomically: every packet meets either the old filter or
// the new one, none goes unfiltered.
func (w *socketWAN) SetCapture(c Capture) error {
	w.captureMu.Lock()
	defer w.captureMu.Unlock()
	c.Addr = w.capture.Addr // the address the watcher follows
	return w.attachCapture(c)
}

// attachCapture builds the filter for c, swaps it in on the capture socket
// and remembers c. Call with captureMu held.
func (w *socketWAN) attachCapture(c Capture) error {
	if err := c.Validate(); err != nil {
		return err
	}
	filter, err := captureFilterAt(c, uint32(w.linkHdr))
	if err != nil {
		return err
	}
	raw, err := bpf.Assemble(filter)
	if err != nil {
		return fmt.Errorf("capture filter: %w", err)
	}
	sf := make([]unix.SockFilter, len(raw))
	for i, ins := range raw {
		sf[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	prog := unix.SockFprog{Len: uint16(len(sf)), Filter: &sf[0]}
	var serr error
	if err := w.rxConn.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("replacing the capture filter: %w", os.NewSyscallError("setsockopt SO_ATTACH_FILTER", serr))
	}
	w.capture = c
	return nil
}

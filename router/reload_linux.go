package router

import (
	"fmt"
	"os"

	"github.com/google/nftables"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/vpnmasq/vpnmasq/config"
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

// UpdateGuard replaces the elements of the guard's and hairpin's port and
// protocol sets in one nftables transaction: the rules stay, only what
// they match changes.
func (h *Host) UpdateGuard(tun string, ports, hairpinPorts []config.PortRange, hairpinProtos []uint8) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done {
		return fmt.Errorf("host plumbing already removed")
	}
	c, err := nftConn(int(h.ns))
	if err != nil {
		return err
	}
	name := nftTableName(tun)
	ipTable := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: name}
	ndTable := &nftables.Table{Family: nftables.TableFamilyNetdev, Name: name}
	replace := func(t *nftables.Table, set string, elems []nftables.SetElement) error {
		s, err := c.GetSetByName(t, set)
		if err != nil {
			return fmt.Errorf("nftables set %s: %w", set, err)
		}
		c.FlushSet(s)
		if len(elems) > 0 {
			if err := c.SetAddElements(s, elems); err != nil {
				return fmt.Errorf("nftables set %s: %w", set, err)
			}
		}
		return nil
	}
	if err := replace(ipTable, nftSetNATPorts, portElements(ports)); err != nil {
		return err
	}
	if err := replace(ndTable, nftSetHairpinPorts, portElements(hairpinPorts)); err != nil {
		return err
	}
	var protos []nftables.SetElement
	for _, p := range dedupe(hairpinProtos) {
		protos = append(protos, nftables.SetElement{Key: []byte{p}})
	}
	if err := replace(ndTable, nftSetHairpinProtocols, protos); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("updating nftables sets of %s: %w", name, err)
	}
	h.log.Debug().Str("table", name).Msg("guard port sets updated")
	return nil
}

// portElements encodes port ranges for an interval set (see addPortSet).
func portElements(ports []config.PortRange) []nftables.SetElement {
	var ranges []addrRange
	for _, r := range mergePortRanges(ports) {
		ranges = append(ranges, addrRange{First: uint32(r.First), Last: uint32(r.Last)})
	}
	return intervalElements(ranges, 2)
}

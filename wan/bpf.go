package wan

import (
	"fmt"

	"golang.org/x/net/bpf"

	"github.com/vpnmasq/vpnmasq/internal/interval"
	"github.com/vpnmasq/vpnmasq/nat"
)

// captureSnapLen is what the filter returns for an accepted packet: more
// than any IPv4 packet (or GRO super-packet) can be, so nothing is cut.
const captureSnapLen = 0x40000

// maxFilterInstructions is the kernel's limit for classic BPF programs
// (BPF_MAXINSNS).
const maxFilterInstructions = 4096

// IPv4 header offsets the filter reads.
const (
	ipv4VersionIHLOffset = 0
	ipv4FragmentOffset   = 6
	ipv4ProtocolOffset   = 9
	ipv4DstOffset        = 16
	ipv4FragOffsetMask   = 0x1fff
	transportDstPortOff  = 2 // destination port inside a TCP or UDP header
)

// captureFilter builds the classic BPF program that decides, in the kernel,
// which packets arriving on the WAN interface reach vpnmasq, for a socket
// whose data starts linkHdrLen bytes before the IPv4 header (a SOCK_RAW
// packet socket: 14 on an Ethernet interface, 0 on a link without a
// header). It accepts iff the packet is IPv4 with a sane header length and either
//   - its destination is c.Addr and it is TCP or UDP to a port in c.Ports,
//     a TCP or UDP non-first fragment (only the NAT can tell whose it is),
//     a protocol in c.Protocols, or ICMP when c.ICMP is set; or
//   - its destination lies in one of c.Prefixes.
//
// Every comparison is "jump if equal/in range to a nearby ja", so the
// conditional offsets stay tiny and only the unconditional jumps (32-bit
// offsets) span the program, however many ranges there are.
func captureFilter(c Capture, linkHdrLen uint32) ([]bpf.Instruction, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	var a filterAsm
	const (
		accept   = "accept"
		reject   = "reject"
		prefixes = "prefixes"
		l4       = "l4"
	)

	// Version nibble 4 and a header of at least 20 bytes: packet sockets see
	// frames before ip_rcv has validated them.
	a.emit(bpf.LoadAbsolute{Off: linkHdrLen + ipv4VersionIHLOffset, Size: 1})
	a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xf0})
	a.gotoIfNot(0x40, reject)
	a.emit(bpf.LoadAbsolute{Off: linkHdrLen + ipv4VersionIHLOffset, Size: 1})
	a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0x0f})
	a.gotoIfBelow(5, reject)

	a.emit(bpf.LoadAbsolute{Off: linkHdrLen + ipv4DstOffset, Size: 4})
	a.gotoIfNot(interval.Addr(c.Addr), prefixes)

	// Destination is the WAN address: decide by protocol.
	a.emit(bpf.LoadAbsolute{Off: linkHdrLen + ipv4ProtocolOffset, Size: 1})
	a.gotoIf(uint32(nat.ProtoTCP), l4)
	a.gotoIf(uint32(nat.ProtoUDP), l4)
	for _, p := range interval.UniqueProtocols(c.Protocols) {
		a.gotoIf(uint32(p), accept)
	}
	if c.ICMP {
		a.gotoIf(uint32(nat.ProtoICMP), accept)
	}
	a.jump(prefixes)

	a.label(l4)
	ports := interval.MergePorts(c.Ports)
	if len(ports) > 0 {
		a.emit(bpf.LoadAbsolute{Off: linkHdrLen + ipv4FragmentOffset, Size: 2})
		a.gotoIfBitsSet(ipv4FragOffsetMask, accept)
		// X = 4*(IHL): the transport header follows the options (and
		// the link header, which the indirect load adds back).
		a.emit(bpf.LoadMemShift{Off: linkHdrLen + ipv4VersionIHLOffset})
		a.emit(bpf.LoadIndirect{Off: linkHdrLen + transportDstPortOff, Size: 2})
		for _, r := range ports {
			a.gotoIfInRange(uint32(r.First), uint32(r.Last), accept)
		}
	} else {
		// No ports owned: the only TCP/UDP packets that may still be the
		// NAT's are non-first fragments of flows it forwards.
		a.emit(bpf.LoadAbsolute{Off: linkHdrLen + ipv4FragmentOffset, Size: 2})
		a.gotoIfBitsSet(ipv4FragOffsetMask, accept)
	}

	a.label(prefixes)
	ranges := interval.Prefixes(c.Prefixes)
	if len(ranges) > 0 {
		a.emit(bpf.LoadAbsolute{Off: linkHdrLen + ipv4DstOffset, Size: 4})
		for _, r := range ranges {
			a.gotoIfInRange(r.First, r.Last, accept)
		}
	}

	a.label(reject)
	a.emit(bpf.RetConstant{Val: 0})
	a.label(accept)
	a.emit(bpf.RetConstant{Val: captureSnapLen})

	prog, err := a.resolve()
	if err != nil {
		return nil, err
	}
	if len(prog) > maxFilterInstructions {
		return nil, fmt.Errorf("capture filter needs %d instructions, the kernel allows %d: too many port ranges or prefixes", len(prog), maxFilterInstructions)
	}
	return prog, nil
}

// filterAsm assembles a classic BPF program with symbolic jump targets.
// Conditional jumps only ever skip over the single ja that follows them, so
// their 8-bit offsets cannot overflow.
type filterAsm struct {
	prog   []bpf.Instruction
	labels map[string]int
	jumps  map[int]string // index of a ja -> its target label
}

func (a *filterAsm) emit(ins bpf.Instruction) { a.prog = append(a.prog, ins) }

func (a *filterAsm) label(name string) {
	if a.labels == nil {
		a.labels = map[string]int{}
	}
	a.labels[name] = len(a.prog)
}

func (a *filterAsm) jump(target string) {
	if a.jumps == nil {
		a.jumps = map[int]string{}
	}
	a.jumps[len(a.prog)] = target
	a.emit(bpf.Jump{}) // Skip filled in by resolve
}

// gotoIf jumps to target when A == v.
func (a *filterAsm) gotoIf(v uint32, target string) {
	a.emit(bpf.JumpIf{Cond: bpf.JumpEqual, Val: v, SkipTrue: 0, SkipFalse: 1})
	a.jump(target)
}

// gotoIfNot jumps to target when A != v.
func (a *filterAsm) gotoIfNot(v uint32, target string) {
	a.emit(bpf.JumpIf{Cond: bpf.JumpEqual, Val: v, SkipTrue: 1, SkipFalse: 0})
	a.jump(target)
}

// gotoIfBelow jumps to target when A < v.
func (a *filterAsm) gotoIfBelow(v uint32, target string) {
	a.emit(bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: v, SkipTrue: 1, SkipFalse: 0})
	a.jump(target)
}

// gotoIfBitsSet jumps to target when A & mask != 0.
func (a *filterAsm) gotoIfBitsSet(mask uint32, target string) {
	a.emit(bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: mask, SkipTrue: 0, SkipFalse: 1})
	a.jump(target)
}

// gotoIfInRange jumps to target when first <= A <= last.
func (a *filterAsm) gotoIfInRange(first, last uint32, target string) {
	if first == last {
		a.gotoIf(first, target)
		return
	}
	a.emit(bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: first, SkipTrue: 0, SkipFalse: 2})
	a.emit(bpf.JumpIf{Cond: bpf.JumpGreaterThan, Val: last, SkipTrue: 1, SkipFalse: 0})
	a.jump(target)
}

func (a *filterAsm) resolve() ([]bpf.Instruction, error) {
	for at, name := range a.jumps {
		to, ok := a.labels[name]
		if !ok {
			return nil, fmt.Errorf("capture filter: jump to undefined label %q", name)
		}
		if to <= at {
			return nil, fmt.Errorf("capture filter: backward jump to %q", name)
		}
		a.prog[at] = bpf.Jump{Skip: uint32(to - at - 1)}
	}
	return a.prog, nil
}

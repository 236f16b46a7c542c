// Command rawgen sends and counts IP packets of one protocol, for the
// benchmark of what iperf3 cannot send: protocols that carry no ports (ESP,
// GRE), and UDP sent the way modern VPN and QUIC stacks send it:
//
//	rawgen send PROTO DST SIZE SECONDS  sends SIZE-byte PROTO payloads to DST from one
//	                                    raw socket, as fast as one thread can, for
//	                                    SECONDS; prints "sent N pps P"
//	rawgen count PROTO WAIT             counts PROTO packets arriving on a raw socket:
//	                                    waits up to WAIT seconds for the first, stops
//	                                    after 1 s without one; prints
//	                                    "received N seconds S pps P"
//
// PROTO is esp (IP protocol 50: SPI 0x0b0e0001, a sequence number counting
// up from 1), gre (IP protocol 47: enhanced GRE as PPTP sends it, version
// 1, protocol 0x880B, Call ID 0x4242, a sequence number), or udp: SIZE-byte
// datagrams to port 9000 written 44 at a time with UDP segmentation offload
// (the UDP_SEGMENT socket option, as wireguard-go, Tailscale and QUIC stacks
// send), so that they leave the host as one super-packet each write, and
// counted per datagram on a UDP socket bound to port 9000 that takes
// super-packets whole (UDP_GRO, as those stacks receive). For esp and gre
// the kernel adds the IPv4 header. pps is counted between the first and the
// last packet. Usage errors exit 2, other errors 1.
package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

const usage = `usage: rawgen send PROTO DST SIZE SECONDS
       rawgen count PROTO WAIT
PROTO is esp, gre or udp
`

// Fields of the generated packets.
const (
	espSPI    = 0x0b0e0001
	greCallID = 0x4242
	udpPort   = 9000
	// udpBatch datagrams go in one write with UDP_SEGMENT: 44 × 1400
	// bytes stay under the 64 KiB of one super-packet.
	udpBatch = 44
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	bad := func(msg string) int {
		fmt.Fprintf(stderr, "rawgen: %s\n\n%s", msg, usage)
		return 2
	}
	if len(args) < 2 {
		return bad("missing arguments")
	}
	proto, ok := map[string]int{"esp": unix.IPPROTO_ESP, "gre": unix.IPPROTO_GRE, "udp": unix.IPPROTO_UDP}[args[1]]
	if !ok {
		return bad(fmt.Sprintf("unknown protocol %q", args[1]))
	}
	var err error
	switch {
	case args[0] == "send" && len(args) == 5:
		dst, perr := netip.ParseAddr(args[2])
		size, serr := strconv.Atoi(args[3])
		secs, terr := strconv.ParseFloat(args[4], 64)
		if perr != nil || !dst.Is4() || serr != nil || size < 16 || size > 65000 || terr != nil || secs <= 0 {
			return bad("send wants an IPv4 address, a size of 16..65000 and a positive duration")
		}
		if proto == unix.IPPROTO_UDP && size*udpBatch > 65000 {
			return bad(fmt.Sprintf("udp sends %d datagrams at a time: a size of 16..%d", udpBatch, 65000/udpBatch))
		}
		err = send(proto, dst, size, time.Duration(secs*float64(time.Second)), stdout)
	case args[0] == "count" && len(args) == 3:
		wait, werr := strconv.ParseFloat(args[2], 64)
		if werr != nil || wait <= 0 {
			return bad("count wants a positive wait in seconds")
		}
		err = count(proto, time.Duration(wait*float64(time.Second)), stdout)
	default:
		return bad("unknown command or wrong number of arguments")
	}
	if err != nil {
		fmt.Fprintf(stderr, "rawgen: %v\n", err)
		return 1
	}
	return 0
}

// payload returns the first packet's payload; stamp sets packet n's
// sequence number in it.
func payload(proto, size int) (b []byte, stamp func(b []byte, n uint32)) {
	b = make([]byte, size)
	for i := range b {
		b[i] = byte(i)
	}
	if proto == unix.IPPROTO_ESP {
		binary.BigEndian.PutUint32(b[0:], espSPI)
		return b, func(b []byte, n uint32) { binary.BigEndian.PutUint32(b[4:], n) }
	}
	// Enhanced GRE: key and sequence present, version 1; the key holds
	// the payload length and the Call ID.
	binary.BigEndian.PutUint16(b[0:], 0x3001)
	binary.BigEndian.PutUint16(b[2:], 0x880B)
	binary.BigEndian.PutUint16(b[4:], uint16(size-12))
	binary.BigEndian.PutUint16(b[6:], greCallID)
	return b, func(b []byte, n uint32) { binary.BigEndian.PutUint32(b[8:], n) }
}

// socket opens the socket send and count use for proto: a raw socket, or a
// UDP socket for udp.
func socket(proto int) (int, error) {
	if proto == unix.IPPROTO_UDP {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, fmt.Errorf("udp socket: %w", err)
		}
		return fd, nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, fmt.Errorf("raw socket: %w", err)
	}
	return fd, nil
}

// send writes packets from one thread until d has passed.
func send(proto int, dst netip.Addr, size int, d time.Duration, w io.Writer) error {
	runtime.LockOSThread()
	fd, err := socket(proto)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: dst.As4(), Port: udpPort}); err != nil {
		return fmt.Errorf("connect %v: %w", dst, err)
	}
	if proto == unix.IPPROTO_UDP {
		return sendUDP(fd, size, d, w)
	}
	b, stamp := payload(proto, size)
	var sent, full uint32
	start := time.Now()
	deadline := start.Add(d)
	for {
		if sent&255 == 0 && time.Now().After(deadline) {
			break
		}
		stamp(b, sent+1)
		if _, err := unix.Write(fd, b); err != nil {
			if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) {
				full++
				continue
			}
			return fmt.Errorf("send: %w", err)
		}
		sent++
	}
	el := time.Since(start).Seconds()
	fmt.Fprintf(w, "sent %d pps %.0f refused %d\n", sent, float64(sent)/el, full)
	return nil
}

// sendUDP writes udpBatch datagrams of size bytes at a time with
// UDP_SEGMENT until d has passed.
func sendUDP(fd, size int, d time.Duration, w io.Writer) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_SEGMENT, size); err != nil {
		return fmt.Errorf("UDP_SEGMENT: %w", err)
	}
	b := make([]byte, size*udpBatch)
	for i := range b {
		b[i] = byte(i)
	}
	var sent, full uint64
	start := time.Now()
	deadline := start.Add(d)
	for {
		if time.Now().After(deadline) {
			break
		}
		if _, err := unix.Write(fd, b); err != nil {
			if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ECONNREFUSED) {
				full++
				continue
			}
			return fmt.Errorf("send: %w", err)
		}
		sent += udpBatch
	}
	el := time.Since(start).Seconds()
	fmt.Fprintf(w, "sent %d pps %.0f refused %d\n", sent, float64(sent)/el, full)
	return nil
}

// datagrams is how many datagrams one receive of size bytes held: one, or
// for a super-packet (a UDP_GRO control message giving the segment size)
// one per segment.
func datagrams(size int, oob []byte) uint64 {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 1
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_UDP && m.Header.Type == unix.UDP_GRO && len(m.Data) >= 4 {
			if seg := int(binary.NativeEndian.Uint32(m.Data)); seg > 0 {
				return uint64((size + seg - 1) / seg)
			}
		}
	}
	return 1
}

// count counts packets until 1 s passes without one.
func count(proto int, wait time.Duration, w io.Writer) error {
	runtime.LockOSThread()
	fd, err := socket(proto)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if proto == unix.IPPROTO_UDP {
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: udpPort}); err != nil {
			return fmt.Errorf("bind port %d: %w", udpPort, err)
		}
		// Take super-packets whole, as a UDP_SEGMENT sender's peer does:
		// one receive per super-packet, so that the count, not the
		// counter, is what is measured.
		if err := unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_GRO, 1); err != nil {
			return fmt.Errorf("UDP_GRO: %w", err)
		}
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	fmt.Fprintln(w, "listening")
	buf := make([]byte, 65536)
	oob := make([]byte, unix.CmsgSpace(4))
	var n uint64
	var first, last time.Time
	giveUp := time.Now().Add(wait)
	for {
		size, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, 0)
		now := time.Now()
		if err == nil {
			if n == 0 {
				first = now
			}
			n += datagrams(size, oob[:oobn])
			last = now
			continue
		}
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("receive: %w", err)
		}
		if n == 0 && now.After(giveUp) {
			return fmt.Errorf("no packet within %v", wait)
		}
		if n > 0 && now.Sub(last) > time.Second {
			break
		}
	}
	el := last.Sub(first).Seconds()
	pps := 0.0
	if el > 0 {
		pps = float64(n-1) / el
	}
	fmt.Fprintf(w, "received %d seconds %.3f pps %.0f\n", n, el, pps)
	return nil
}

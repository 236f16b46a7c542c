// Command rawgen sends and counts raw IP packets of one protocol, for the
// benchmark of protocols that carry no ports (ESP, GRE):
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
// up from 1) or gre (IP protocol 47: enhanced GRE as PPTP sends it, version
// 1, protocol 0x880B, Call ID 0x4242, a sequence number). The kernel adds
// the IPv4 header. pps is counted between the first and the last packet.
// Usage errors exit 2, other errors 1.
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
PROTO is esp or gre
`

// Fields of the generated packets.
const (
	espSPI    = 0x0b0e0001
	greCallID = 0x4242
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
	proto, ok := map[string]int{"esp": unix.IPPROTO_ESP, "gre": unix.IPPROTO_GRE}[args[1]]
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

// send writes packets from one thread until d has passed.
func send(proto int, dst netip.Addr, size int, d time.Duration, w io.Writer) error {
	runtime.LockOSThread()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
		return fmt.Errorf("connect %v: %w", dst, err)
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

// count counts packets until 1 s passes without one.
func count(proto int, wait time.Duration, w io.Writer) error {
	runtime.LockOSThread()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	fmt.Fprintln(w, "listening")
	buf := make([]byte, 65536)
	var n uint64
	var first, last time.Time
	giveUp := time.Now().Add(wait)
	for {
		_, _, err := unix.Recvfrom(fd, buf, 0)
		now := time.Now()
		if err == nil {
			if n == 0 {
				first = now
			}
			n++
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

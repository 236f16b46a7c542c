package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// blobSeed fixes the content of Blob so that both ends of a transfer can
// compute it independently.
var blobSeed = [32]byte{'v', 'p', 'n', 'm', 'a', 's', 'q', ' ', 'l', 'a', 'b', ' ', 'b', 'l', 'o', 'b'}

// MaxBlob caps the size HTTPServer serves, so a typo cannot fill a link for
// hours.
const MaxBlob = 4 << 30

// Blob returns n bytes of deterministic, incompressible content.
func Blob(n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8(blobSeed), n)
}

// BlobSHA256 is the SHA-256 of Blob(n).
func BlobSHA256(n int64) [32]byte {
	h := sha256.New()
	if _, err := io.Copy(h, Blob(n)); err != nil {
		panic(err) // reading a generator cannot fail
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// HTTPServer is a small HTTP server running inside a namespace. It answers
//
//	GET /blob?bytes=N  N bytes of Blob content
//	GET /peer          the client address as the server sees it ("ip:port")
//	GET /              "hello from <name>"
//
// and remembers the client address of every request.
type HTTPServer struct {
	Name string
	Addr net.Addr // the bound address

	srv  *http.Server
	done chan struct{}

	mu    sync.Mutex
	peers []netip.AddrPort
}

// ServeHTTP starts an HTTPServer listening on addr inside ns.
func ServeHTTP(ns *NS, addr, name string) (*HTTPServer, error) {
	l, err := ns.Listen("tcp4", addr)
	if err != nil {
		return nil, err
	}
	s := &HTTPServer{Name: name, Addr: l.Addr(), done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /blob", s.serveBlob)
	mux.HandleFunc("GET /peer", func(w http.ResponseWriter, r *http.Request) {
		s.record(r)
		fmt.Fprintln(w, r.RemoteAddr)
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		s.record(r)
		fmt.Fprintf(w, "hello from %s\n", name)
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(l) // returns http.ErrServerClosed after Close
	}()
	return s, nil
}

func (s *HTTPServer) serveBlob(w http.ResponseWriter, r *http.Request) {
	s.record(r)
	n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
	if err != nil || n < 0 || n > MaxBlob {
		http.Error(w, fmt.Sprintf("bytes must be an integer in 0..%d", int64(MaxBlob)), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	_, _ = io.Copy(w, Blob(n)) // a client that goes away ends the copy
}

func (s *HTTPServer) record(r *http.Request) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.peers = append(s.peers, ap)
	s.mu.Unlock()
}

// Peers returns the client address of every request so far, in order.
func (s *HTTPServer) Peers() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.AddrPort(nil), s.peers...)
}

// Close stops the server and closes its connections.
func (s *HTTPServer) Close() error {
	err := s.srv.Close()
	<-s.done
	return err
}

// UDPEcho is a UDP server inside a namespace that sends every datagram back
// to its sender and remembers the senders.
type UDPEcho struct {
	Addr net.Addr

	conn net.PacketConn
	done chan struct{}

	mu    sync.Mutex
	peers []netip.AddrPort
}

// ServeUDPEcho starts a UDPEcho listening on addr inside ns.
func ServeUDPEcho(ns *NS, addr string) (*UDPEcho, error) {
	c, err := ns.ListenPacket("udp4", addr)
	if err != nil {
		return nil, err
	}
	e := &UDPEcho{Addr: c.LocalAddr(), conn: c, done: make(chan struct{})}
	go e.serve()
	return e, nil
}

func (e *UDPEcho) serve() {
	defer close(e.done)
	buf := make([]byte, 65536)
	for {
		n, from, err := e.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ECONNREFUSED from an earlier reply; keep serving
		}
		if ua, ok := from.(*net.UDPAddr); ok {
			e.mu.Lock()
			e.peers = append(e.peers, ua.AddrPort())
			e.mu.Unlock()
		}
		_, _ = e.conn.WriteTo(buf[:n], from)
	}
}

// Peers returns the sender of every datagram so far, in order.
func (e *UDPEcho) Peers() []netip.AddrPort {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]netip.AddrPort(nil), e.peers...)
}

// Close stops the server.
func (e *UDPEcho) Close() error {
	err := e.conn.Close()
	<-e.done
	return err
}

// UDPRoundTrip sends payload from local (e.g. "0.0.0.0:40000"; "" for any
// port) inside ns to remote and waits for the same payload to come back,
// trying up to tries times with the given timeout each. It returns the
// round-trip time of the answered try.
func UDPRoundTrip(ns *NS, local, remote string, payload []byte, tries int, timeout time.Duration) (time.Duration, error) {
	var laddr net.Addr
	if local != "" {
		ua, err := net.ResolveUDPAddr("udp4", local)
		if err != nil {
			return 0, fmt.Errorf("lab: local address: %w", err)
		}
		laddr = ua
	}
	c, err := ns.DialFrom(context.Background(), laddr, "udp4", remote)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	buf := make([]byte, len(payload)+1)
	var lastErr, wrong error
	for try := 0; try < max(tries, 1); try++ {
		start := time.Now()
		if _, err := c.Write(payload); err != nil {
			lastErr = err
			continue
		}
		if err := c.SetReadDeadline(start.Add(timeout)); err != nil {
			return 0, err
		}
		for {
			n, err := c.Read(buf)
			if err != nil {
				lastErr = err
				break
			}
			if bytes.Equal(buf[:n], payload) {
				return time.Since(start), nil
			}
			// A late answer to an earlier try carries the same payload and
			// is accepted above; anything else is a wrong answer, which
			// says more than the timeout that follows it.
			wrong = fmt.Errorf("lab: unexpected answer %q", buf[:n])
		}
	}
	if wrong != nil {
		lastErr = wrong
	}
	return 0, fmt.Errorf("lab: UDP %s -> %s unanswered after %d tries: %w", local, remote, tries, lastErr)
}

// PingResult holds the outcome of Ping.
type PingResult struct {
	Sent     int
	Received int
	RTTs     []time.Duration
}

// Ping sends count ICMP echo requests from inside ns to dst, one at a time,
// each waiting up to timeout for its reply. It needs a raw ICMP socket
// (root), because unprivileged ICMP sockets are disabled by default in new
// namespaces (net.ipv4.ping_group_range).
func Ping(ns *NS, dst netip.Addr, count int, timeout time.Duration) (PingResult, error) {
	var c *icmp.PacketConn
	err := ns.Do(func() (err error) {
		c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return PingResult{}, fmt.Errorf("lab: ICMP socket in %s: %w", ns.Name, err)
	}
	defer c.Close()

	var res PingResult
	id := (os.Getpid() ^ int(rand.Uint32())) & 0xffff
	to := &net.IPAddr{IP: net.IP(dst.AsSlice())}
	buf := make([]byte, 1500)
	for seq := 1; seq <= count; seq++ {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("vpnmasq lab ping")}}
		wire, err := msg.Marshal(nil)
		if err != nil {
			return res, fmt.Errorf("lab: marshal echo: %w", err)
		}
		start := time.Now()
		if _, err := c.WriteTo(wire, to); err != nil {
			return res, fmt.Errorf("lab: send echo to %s: %w", dst, err)
		}
		res.Sent++
		if err := c.SetReadDeadline(start.Add(timeout)); err != nil {
			return res, err
		}
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				break // timeout: this one is lost
			}
			// A raw socket sees every ICMP message of the namespace; keep
			// only the reply to this request.
			if ip, ok := from.(*net.IPAddr); !ok || !ip.IP.Equal(to.IP) {
				continue
			}
			reply, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || reply.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			if echo, ok := reply.Body.(*icmp.Echo); ok && echo.ID == id && echo.Seq == seq {
				res.Received++
				res.RTTs = append(res.RTTs, time.Since(start))
				break
			}
		}
	}
	return res, nil
}

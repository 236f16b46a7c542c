package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// printer writes whole lines from any goroutine, so that lines of
// concurrent requests never interleave in the container's log.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// maxOver bounds the pacing of a blob, so that a typo cannot hold a
// connection open for hours.
const maxOver = 10 * time.Minute

// httpServer serves until ctx ends:
//
//	GET /              the client's address as this server sees it ("ip:port")
//	GET /blob?bytes=N  N bytes of lab.Blob, whose SHA-256 the test knows
//	GET /blob?bytes=N&over=D
//	                   the same bytes spread evenly over the duration D (Go
//	                   syntax, e.g. 4s; at most maxOver), so that the
//	                   download is in flight that long
func httpServer(ctx context.Context, addr string, w io.Writer) error {
	out := &printer{w: w}
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(rw, r.RemoteAddr)
		out.printf("http GET / from %s", r.RemoteAddr)
	})
	mux.HandleFunc("GET /blob", func(rw http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
		if err != nil || n < 0 || n > lab.MaxBlob {
			http.Error(rw, fmt.Sprintf("bytes must be an integer in 0..%d", int64(lab.MaxBlob)), http.StatusBadRequest)
			out.printf("http GET %s from %s: bad request", r.URL, r.RemoteAddr)
			return
		}
		var over time.Duration
		if v := r.URL.Query().Get("over"); v != "" {
			if over, err = time.ParseDuration(v); err != nil || over < 0 || over > maxOver {
				http.Error(rw, fmt.Sprintf("over must be a duration in 0..%v", maxOver), http.StatusBadRequest)
				out.printf("http GET %s from %s: bad request", r.URL, r.RemoteAddr)
				return
			}
		}
		rw.Header().Set("Content-Type", "application/octet-stream")
		rw.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		sent, err := pacedCopy(rw, lab.Blob(n), n, over)
		if err != nil {
			out.printf("http GET /blob from %s: %d of %d bytes sent: %v", r.RemoteAddr, sent, n, err)
			return
		}
		out.printf("http GET /blob from %s: %d bytes sent", r.RemoteAddr, sent)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	out.printf("http-server listening on %s", l.Addr())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		srv.Close()
		<-done
		return nil
	}
}

// pacedCopy copies n bytes from src to w in 64 KiB chunks, chunk i of k
// written no earlier than over*i/k after the start, so that the stream
// takes at least over. After a stall (a full window, a retransmission) it
// catches up with the schedule, never gets ahead of it.
func pacedCopy(w http.ResponseWriter, src io.Reader, n int64, over time.Duration) (int64, error) {
	if over == 0 {
		return io.Copy(w, src)
	}
	const chunk = 64 << 10
	flusher, _ := w.(http.Flusher)
	k := max(1, (n+chunk-1)/chunk)
	start := time.Now()
	var sent int64
	for i := int64(0); sent < n; i++ {
		time.Sleep(time.Until(start.Add(time.Duration(int64(over) * i / k))))
		m, err := io.CopyN(w, src, min(chunk, n-sent))
		sent += m
		if err != nil {
			return sent, err
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
	return sent, nil
}

// udpEcho sends every datagram back to its sender until ctx ends.
func udpEcho(ctx context.Context, addr string, w io.Writer) error {
	out := &printer{w: w}
	c, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	out.printf("udp-echo listening on %s", c.LocalAddr())
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if _, err := c.WriteTo(buf[:n], from); err != nil {
			out.printf("udp %d bytes from %s: echo failed: %v", n, from, err)
			continue
		}
		out.printf("udp %d bytes from %s echoed", n, from)
	}
}

// udpClient sends message to server and waits for the same bytes to come
// back, resending a few times: UDP may lose the first datagram while ARP
// entries are still being resolved.
func udpClient(server, message string, w io.Writer) error {
	const tries, wait = 5, 2 * time.Second
	c, err := net.Dial("udp4", server)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 65536)
	for try := 1; try <= tries; try++ {
		if _, err := c.Write([]byte(message)); err != nil {
			return err
		}
		if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
			return err
		}
		n, err := c.Read(buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			continue
		}
		if err != nil {
			return err
		}
		if got := string(buf[:n]); got != message {
			return fmt.Errorf("echo from %s is %q, want %q", server, got, message)
		}
		fmt.Fprintf(w, "udp-client: echo from %s: %s\n", server, message)
		return nil
	}
	return fmt.Errorf("no echo from %s after %d tries %v apart", server, tries, wait)
}

package admin

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// countingHandler answers 200 "ok" and counts the requests it saw.
type countingHandler struct{ n atomic.Int64 }

func (h *countingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.n.Add(1)
	w.Write([]byte("ok"))
}

// testServer serves h on loopback TCP with limits l, behind
// AllowListenerFunc when allow is not nil, as the router serves its LAN side.
func testServer(t *testing.T, h http.Handler, l ServerLimits, allow []netip.Prefix) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wrapped := ln
	if allow != nil {
		wrapped = AllowListenerFunc(wrapped, func() []netip.Prefix { return allow }, zerolog.Nop())
	}
	srv := NewServer(h, l)
	go srv.Serve(Listener(wrapped, l.MaxConns))
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// get sends one request on c and reads the status line, waiting at most d.
func get(c net.Conn, d time.Duration) (string, error) {
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return "", err
	}
	c.SetReadDeadline(time.Now().Add(d))
	return bufio.NewReader(c).ReadString('\n')
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestServerLimitsAreSet(t *testing.T) {
	for name, l := range map[string]ServerLimits{"the LAN server": LANLimits, "the unix socket": SocketLimits} {
		t.Run(name+" has every timeout, a header size cap and a connection cap", func(t *testing.T) {
			v := reflect.ValueOf(l)
			for i := range v.NumField() {
				if v.Field(i).IsZero() {
					t.Errorf("%s is not set", v.Type().Field(i).Name)
				}
			}
			srv := NewServer(http.NotFoundHandler(), l)
			if srv.ReadHeaderTimeout != l.ReadHeaderTimeout || srv.ReadTimeout != l.ReadTimeout ||
				srv.WriteTimeout != l.WriteTimeout || srv.IdleTimeout != l.IdleTimeout || srv.MaxHeaderBytes != l.MaxHeaderBytes {
				t.Errorf("server %+v does not carry the limits %+v", srv, l)
			}
		})
	}
}

func TestServerUnderAbuse(t *testing.T) {
	quick := ServerLimits{ReadHeaderTimeout: 300 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second,
		IdleTimeout: time.Second, MaxHeaderBytes: 1 << 10, MaxConns: 2}

	t.Run("a slowloris client trickling its headers is cut off after the header timeout", func(t *testing.T) {
		addr := testServer(t, &countingHandler{}, quick, nil)
		c := dial(t, addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n")
		start := time.Now()
		closed := make(chan time.Duration, 1)
		go func() {
			io.Copy(io.Discard, c) // until the server closes
			closed <- time.Since(start)
		}()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case took := <-closed:
				if took > quick.ReadHeaderTimeout+400*time.Millisecond {
					t.Errorf("cut off after %v", took)
				}
				return
			case <-tick.C:
				c.Write([]byte("X")) // one more byte of a header that never ends
				if time.Since(start) > 5*time.Second {
					t.Fatal("the server still reads the trickle after 5s")
				}
			}
		}
	})
	t.Run("headers over the size cap are refused", func(t *testing.T) {
		addr := testServer(t, &countingHandler{}, quick, nil)
		c := dial(t, addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 8<<10)+"\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		if line != "HTTP/1.1 431 Request Header Fields Too Large\r\n" {
			t.Errorf("answer %q, want 431", line)
		}
	})
	t.Run("the connection over the cap waits until one is closed", func(t *testing.T) {
		h := &countingHandler{}
		l := quick
		l.ReadHeaderTimeout, l.ReadTimeout = 5*time.Second, 5*time.Second
		addr := testServer(t, h, l, nil)
		held := []net.Conn{dial(t, addr), dial(t, addr)} // accepted, silent: they hold both slots
		time.Sleep(100 * time.Millisecond)
		extra := dial(t, addr)
		if line, err := get(extra, 400*time.Millisecond); err == nil {
			t.Fatalf("the third connection was served at once: %q", line)
		}
		held[0].Close()
		extra.SetReadDeadline(time.Now().Add(3 * time.Second))
		line, err := bufio.NewReader(extra).ReadString('\n')
		if err != nil || line != "HTTP/1.1 200 OK\r\n" {
			t.Errorf("after a slot freed up: %q %v, want 200", line, err)
		}
	})
	t.Run("a connection from outside admin_allow is closed at accept, before any HTTP", func(t *testing.T) {
		h := &countingHandler{}
		addr := testServer(t, h, quick, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
		c := dial(t, addr)
		line, err := get(c, 2*time.Second)
		if line != "" || err == nil || isTimeout(err) {
			t.Errorf("got %q, %v; want the connection closed without an answer", line, err)
		}
		if n := h.n.Load(); n != 0 {
			t.Errorf("the handler saw %d requests", n)
		}
	})
	t.Run("a connection from inside admin_allow is served", func(t *testing.T) {
		h := &countingHandler{}
		addr := testServer(t, h, quick, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
		if line, err := get(dial(t, addr), 2*time.Second); err != nil || line != "HTTP/1.1 200 OK\r\n" {
			t.Errorf("got %q, %v; want 200", line, err)
		}
	})
	t.Run("an empty admin_allow closes every connection", func(t *testing.T) {
		h := &countingHandler{}
		addr := testServer(t, h, quick, []netip.Prefix{})
		if line, err := get(dial(t, addr), 2*time.Second); line != "" || err == nil || isTimeout(err) {
			t.Errorf("got %q, %v; want the connection closed", line, err)
		}
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestUnixSocketConnectionCap(t *testing.T) {
	t.Run("the socket serves at most SocketLimits.MaxConns connections at once", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "admin.sock")
		closer, err := ServeUnix(path, &countingHandler{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { closer() })
		var held []net.Conn
		for range SocketLimits.MaxConns {
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			held = append(held, c)
		}
		time.Sleep(100 * time.Millisecond)
		extra, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer extra.Close()
		if line, err := get(extra, 400*time.Millisecond); err == nil {
			t.Fatalf("connection %d was served at once: %q", SocketLimits.MaxConns+1, line)
		}
		held[0].Close()
		extra.SetReadDeadline(time.Now().Add(3 * time.Second))
		if line, err := bufio.NewReader(extra).ReadString('\n'); err != nil || line != "HTTP/1.1 200 OK\r\n" {
			t.Errorf("after a slot freed up: %q %v, want 200", line, err)
		}
	})
}

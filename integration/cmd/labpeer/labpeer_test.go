package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

func TestUsageErrorsExit2(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no command prints the usage", nil, "usage: labpeer"},
		{"an unknown command is named", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"a missing argument is counted", []string{"udp-client", "127.0.0.1:9"}, "want 2 arguments, got 1"},
		{"an extra argument is counted", []string{"http-server", ":80", ":81"}, "want 1 arguments, got 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), tc.args, &stdout, &stderr); code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tc.want)
			}
		})
	}
}

func TestCallIDs(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    uint16
		wantErr bool
	}{
		{"0x4242", 0x4242, false},
		{"17", 17, false},
		{"65535", 65535, false},
		{"0", 0, true},
		{"65536", 0, true},
		{"-1", 0, true},
		{"call", 0, true},
		{"", 0, true},
	} {
		t.Run(fmt.Sprintf("%q", tc.in), func(t *testing.T) {
			got, err := parseCallID(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("parseCallID(%q) = %#04x, want an error", tc.in, got)
				}
				if !strings.Contains(err.Error(), "1..65535") {
					t.Errorf("error %q does not say what is allowed", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("parseCallID(%q) = %#04x, %v; want %#04x", tc.in, got, err, tc.want)
			}
		})
	}
}

// logShows waits up to d for the server's log to match re.
func logShows(log *syncBuffer, re string, d time.Duration) bool {
	r := regexp.MustCompile(re)
	for deadline := time.Now().Add(d); ; time.Sleep(10 * time.Millisecond) {
		if r.MatchString(log.String()) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// syncBuffer collects a server's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var listening = regexp.MustCompile(`listening on (\S+)`)

// startServer runs a server command until the test ends, when it must exit
// 0; it returns the address from its "listening on" line and its output.
func startServer(t *testing.T, args ...string) (string, *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out, errOut := &syncBuffer{}, &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, out, errOut) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("labpeer %s exited %d after its context ended; stderr: %s", args[0], code, errOut)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("labpeer %s still running 5s after its context ended", args[0])
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if m := listening.FindStringSubmatch(out.String()); m != nil {
			return m[1], out
		}
		select {
		case code := <-done:
			t.Fatalf("labpeer %s exited %d at start; stderr: %s", args[0], code, errOut)
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatalf("labpeer %s printed no \"listening on\" line within 5s; output: %s", args[0], out)
	return "", nil
}

func TestServersAndClientsOverLoopback(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the PPTP peers open raw GRE sockets: run as root")
	}
	t.Run("udp-client gets its datagram back from udp-echo, which logs the sender", func(t *testing.T) {
		addr, log := startServer(t, "udp-echo", "127.0.0.1:0")
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), []string{"udp-client", addr, "hello udp"}, &stdout, &stderr); code != 0 {
			t.Fatalf("udp-client exited %d: %s", code, stderr.String())
		}
		if want := "udp-client: echo from " + addr + ": hello udp"; !strings.Contains(stdout.String(), want) {
			t.Errorf("udp-client printed %q, want %q", stdout.String(), want)
		}
		// The server logs after it echoed: the client may read the echo
		// first.
		if !logShows(log, `udp 9 bytes from 127\.0\.0\.1:\d+ echoed`, 5*time.Second) {
			t.Errorf("udp-echo log lacks the datagram from 127.0.0.1: %s", log)
		}
	})
	t.Run("http-server answers the client's address and blobs of lab.Blob", func(t *testing.T) {
		addr, log := startServer(t, "http-server", "127.0.0.1:0")
		client := &http.Client{Timeout: 5 * time.Second}
		get := func(path string) []byte {
			t.Helper()
			resp, err := client.Get("http://" + addr + path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: status %d, %v: %s", path, resp.StatusCode, err, body)
			}
			return body
		}
		if body := string(get("/")); !strings.HasPrefix(body, "127.0.0.1:") {
			t.Errorf("GET / = %q, want the client's address 127.0.0.1:port", body)
		}
		const size = 300_000
		if got := sha256.Sum256(get(fmt.Sprintf("/blob?bytes=%d", size))); got != lab.BlobSHA256(size) {
			t.Errorf("GET /blob: SHA-256 differs from lab.BlobSHA256(%d)", size)
		}
		if !strings.Contains(log.String(), fmt.Sprintf("%d bytes sent", size)) {
			t.Errorf("http-server log lacks the blob: %s", log)
		}
		t0 := time.Now()
		if got := sha256.Sum256(get(fmt.Sprintf("/blob?bytes=%d&over=500ms", size))); got != lab.BlobSHA256(size) {
			t.Errorf("GET /blob&over=500ms: SHA-256 differs from lab.BlobSHA256(%d)", size)
		}
		// Five 64 KiB chunks: the last one is due at 4/5 of 500 ms.
		if took := time.Since(t0); took < 400*time.Millisecond || took > 5*time.Second {
			t.Errorf("GET /blob&over=500ms took %v, want about 400 ms", took)
		}
		for _, q := range []string{"over=soon", "over=-1s", "over=11m"} {
			resp, err := client.Get("http://" + addr + "/blob?bytes=1&" + q)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("GET /blob?bytes=1&%s: status %d, want 400", q, resp.StatusCode)
			}
		}
	})
	t.Run("pptp-client makes a call with GRE both ways and clears it; the server logs the call", func(t *testing.T) {
		// 127.0.0.2: the PPTP port is fixed, and loopback's 127.0.0.1 is
		// the address something else on the machine might use.
		_, log := startServer(t, "pptp-server", "127.0.0.2")
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), []string{"pptp-client", "127.0.0.2", "0x4242"}, &stdout, &stderr); code != 0 {
			t.Fatalf("pptp-client exited %d: %s\nserver log:\n%s", code, stderr.String(), log)
		}
		want := "pptp-client: call 0x4242 to 127.0.0.2 (server call 0x5000): 3 GRE packets each way echoed, call cleared, control connection stopped"
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("pptp-client printed %q, want %q", stdout.String(), want)
		}
		// The client's stop makes the server log the end of the connection;
		// give it a moment to be written.
		logShows(log, "stopped", 5*time.Second)
		for _, re := range []string{
			`pptp call 0x5000 for client call 0x4242 from 127\.0\.0\.1:\d+`,
			`pptp call 0x5000 cleared: client call 0x4242 from 127\.0\.0\.1:\d+, GRE from 127\.0\.0\.1: 3 in, 3 echoed`,
			`pptp control connection from 127\.0\.0\.1:\d+ stopped`,
		} {
			if !regexp.MustCompile(re).MatchString(log.String()) {
				t.Errorf("server log lacks %s:\n%s", re, log)
			}
		}
	})
	t.Run("pptp-hold holds its call until the server sends GRE unasked on SIGUSR1", func(t *testing.T) {
		// 127.0.0.4: a server of its own, with no call of the test above.
		_, log := startServer(t, "pptp-server", "127.0.0.4")
		stdout, stderr := &syncBuffer{}, &syncBuffer{}
		done := make(chan int, 1)
		go func() {
			done <- run(context.Background(), []string{"pptp-hold", "127.0.0.4", "0x4343"}, stdout, stderr)
		}()
		waitOutput := func(what string, buf *syncBuffer, want string) {
			t.Helper()
			deadline := time.Now().Add(5 * time.Second)
			for !strings.Contains(buf.String(), want) {
				select {
				case code := <-done:
					t.Fatalf("pptp-hold exited %d before %s: %s%s", code, what, stdout, stderr)
				case <-time.After(10 * time.Millisecond):
				}
				if time.Now().After(deadline) {
					t.Fatalf("no %s within 5s: %s", what, buf)
				}
			}
		}
		waitOutput("waiting line", stdout, "waiting for the server's GRE")
		time.Sleep(300 * time.Millisecond)
		if strings.Contains(log.String(), "cleared") {
			t.Fatalf("pptp-hold cleared its call before the server's GRE:\n%s", log)
		}
		if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		select {
		case code := <-done:
			if code != 0 {
				t.Fatalf("pptp-hold exited %d: %s\nserver log:\n%s", code, stderr, log)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("pptp-hold still running 10s after SIGUSR1: %s\nserver log:\n%s", stdout, log)
		}
		for _, want := range []string{
			`pptp-hold: call 0x4343: the server's GRE "labpeer server gre 1" received`,
			"pptp-hold: call 0x4343 to 127.0.0.4 (server call 0x5000): 3 GRE packets each way echoed, " +
				"the server's GRE received first, 3 more each way echoed, call cleared, control connection stopped",
		} {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("pptp-hold printed %q, want %q", stdout, want)
			}
		}
		waitOutput("cleared call in the server's log", log, "cleared")
		re := `pptp call 0x5000 cleared: client call 0x4343 from 127\.0\.0\.1:\d+, GRE from 127\.0\.0\.1: 6 in, 6 echoed, 1 sent first`
		if !regexp.MustCompile(re).MatchString(log.String()) {
			t.Errorf("server log lacks %s:\n%s", re, log)
		}
	})
	t.Run("pptp-client fails with the reason when no server answers", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		// 127.0.0.3 has no server: the connection is refused at once.
		if code := run(context.Background(), []string{"pptp-client", "127.0.0.3", "7"}, &stdout, &stderr); code != 1 {
			t.Fatalf("pptp-client exited %d, want 1; stdout %q", code, stdout.String())
		}
		if !strings.Contains(stderr.String(), "connection refused") {
			t.Errorf("stderr %q does not give the reason", stderr.String())
		}
	})
}

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var watchStart = time.Date(2026, 12, 6, 22, 40, 1, 0, time.UTC)

func TestRenderFrame(t *testing.T) {
	tables := "vpnmasq 9.9.9, up 1m30s\n\nDrops\n  reason  packets\n  martian  5\n"
	ok := frame{at: watchStart, interval: 2 * time.Second, tables: []byte(tables), tablesAt: watchStart}
	failed := ok
	failed.at = watchStart.Add(2 * time.Second)
	failed.err = errors.New("cannot reach the router at /x.sock: connect: connection refused; is it running?")
	header := "every 2s at 2026-12-06 22:40:01 UTC, Ctrl-C to quit\n"
	failedHeader := "every 2s at 2026-12-06 22:40:03 UTC, Ctrl-C to quit; failed: " +
		"cannot reach the router at /x.sock: connect: connection refused; is it running?"
	escaping := ok
	escaping.err = errors.New("answered 500: \x1b[2Jgone\n")

	cases := []struct {
		name  string
		frame frame
		scr   screen
		first bool
		want  string
	}{
		{"on a terminal a frame clears the screen, then the header and the tables",
			ok, screen{terminal: true}, true, termClear + header + "\n" + strings.TrimSuffix(tables, "\n")},
		{"on a terminal a later frame is drawn the same way", ok, screen{terminal: true}, false,
			termClear + header + "\n" + strings.TrimSuffix(tables, "\n")},
		{"on a terminal a failed fetch is in the header, over the last tables and their time",
			failed, screen{terminal: true}, false,
			termClear + failedHeader + " (tables from 22:40:01)\n\n" + strings.TrimSuffix(tables, "\n")},
		{"on a terminal the frame is cut to the window so that the header stays on it",
			ok, screen{terminal: true, rows: 4, cols: 12}, false,
			termClear + "every 2s at \n\nvpnmasq 9.9.\n… 4 more lin"},
		{"off a terminal the first frame is the header and the tables, without escape codes",
			ok, screen{}, true, header + "\n" + tables},
		{"off a terminal a later frame follows the one before after a blank line",
			ok, screen{}, false, "\n" + header + "\n" + tables},
		{"off a terminal a failed fetch is its header line alone: the last tables are above",
			failed, screen{}, false, "\n" + failedHeader + "\n"},
		{"a terminal size does not matter off a terminal", ok, screen{rows: 2, cols: 5}, true, header + "\n" + tables},
		{"control characters of an error are made printable", escaping, screen{}, true,
			"every 2s at 2026-12-06 22:40:01 UTC, Ctrl-C to quit; failed: answered 500: ?[2Jgone?\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := renderFrame(&out, tc.frame, tc.scr, tc.first); err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.want {
				t.Errorf("got\n%q\nwant\n%q", &out, tc.want)
			}
		})
	}
}

// frameWriter collects the loop's output and tells each frame's write.
type frameWriter struct {
	mu     sync.Mutex // guards buf: the loop writes, the test reads
	buf    bytes.Buffer
	frames chan struct{}
}

func (w *frameWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	w.mu.Unlock()
	if s := string(p); s != termEnter && s != termLeave {
		w.frames <- struct{}{}
	}
	return len(p), nil
}

func (w *frameWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestWatchLoop(t *testing.T) {
	cases := []struct {
		name     string
		terminal bool
		failing  map[int]bool // the fetches (from 1) that fail
		frames   int          // drawn before ctx ends; 0 when run must fail at once
		want     string       // the whole output
		wantErr  string
	}{
		{"off a terminal it draws after the first fetch and each tick until ctx ends", false, nil, 3, "" +
			"every 2s at 2026-12-06 22:40:01 UTC, Ctrl-C to quit\n\ntables 1\n" +
			"\nevery 2s at 2026-12-06 22:40:03 UTC, Ctrl-C to quit\n\ntables 2\n" +
			"\nevery 2s at 2026-12-06 22:40:05 UTC, Ctrl-C to quit\n\ntables 3\n", ""},
		{"on a terminal it uses the alternate screen, redraws it and restores the terminal", true, nil, 3,
			termEnter +
				termClear + "every 2s at 2026-12-06 22:40:01 UTC, Ctrl-C to quit\n\ntables 1" +
				termClear + "every 2s at 2026-12-06 22:40:03 UTC, Ctrl-C to quit\n\ntables 2" +
				termClear + "every 2s at 2026-12-06 22:40:05 UTC, Ctrl-C to quit\n\ntables 3" +
				termLeave, ""},
		{"a failed fetch after the first is shown and the next one is drawn", false, map[int]bool{2: true}, 3, "" +
			"every 2s at 2026-12-06 22:40:01 UTC, Ctrl-C to quit\n\ntables 1\n" +
			"\nevery 2s at 2026-12-06 22:40:03 UTC, Ctrl-C to quit; failed: fetch 2 failed\n" +
			"\nevery 2s at 2026-12-06 22:40:05 UTC, Ctrl-C to quit\n\ntables 3\n", ""},
		{"a failing first fetch is the error, before anything is drawn", true, map[int]bool{1: true}, 0, "",
			"fetch 1 failed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fetches := 0
			ticks := make(chan time.Time)
			l := watchLoop{
				interval: 2 * time.Second,
				fetch: func(context.Context) ([]byte, error) {
					fetches++
					if tc.failing[fetches] {
						return nil, fmt.Errorf("fetch %d failed", fetches)
					}
					return fmt.Appendf(nil, "tables %d\n", fetches), nil
				},
				// The clock advances 2s a fetch: the first refresh is at watchStart.
				now:      func() time.Time { return watchStart.Add(time.Duration(fetches-1) * 2 * time.Second) },
				ticks:    ticks,
				terminal: tc.terminal,
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			w := &frameWriter{frames: make(chan struct{}, 100)}
			done := make(chan error, 1)
			go func() { done <- l.run(ctx, w) }()
			for i := 0; i < tc.frames; i++ {
				select {
				case <-w.frames:
				case err := <-done:
					t.Fatalf("run ended after %d frames: %v", i, err)
				case <-time.After(10 * time.Second):
					t.Fatalf("frame %d not drawn", i+1)
				}
				if i < tc.frames-1 {
					select {
					case ticks <- time.Time{}:
					case <-time.After(10 * time.Second):
						t.Fatalf("no tick taken after frame %d", i+1)
					}
				}
			}
			if tc.frames > 0 {
				cancel()
			}
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("run did not end when ctx ended")
			}
			if got := fmt.Sprint(err); (tc.wantErr == "" && err != nil) || (tc.wantErr != "" && got != tc.wantErr) {
				t.Errorf("run returned %v, want %q", err, tc.wantErr)
			}
			if got := w.String(); got != tc.want {
				t.Errorf("output\n%q\nwant\n%q", got, tc.want)
			}
			if fetches != max(tc.frames, 1) {
				t.Errorf("%d fetches for %d frames", fetches, tc.frames)
			}
		})
	}
}

// TestStatusWatchCommand runs `vpnmasq status --watch` against the fake
// router, with its real ticker, until a timeout ends it.
func TestStatusWatchCommand(t *testing.T) {
	sock := serveFake(t)
	ctx, cancel := context.WithTimeout(context.Background(), 550*time.Millisecond)
	defer cancel()
	var stdout, stderr bytes.Buffer
	start := time.Now()
	code := runStatus(ctx, []string{"--watch", "--interval", "100ms", "--socket", sock}, &stdout, &stderr)
	if code != 0 || stderr.Len() > 0 {
		t.Errorf("exit %d, stderr %q", code, &stderr)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v to end after its context", d)
	}
	out := stdout.String()
	frame := `every 100ms at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+, Ctrl-C to quit\n\n` +
		`vpnmasq 9\.9\.9, up 1m30s, at 2026-03-04 05:06:07 UTC\n(?:.*\n)*?  21 +1 +9 +0 +22\n`
	frames := regexp.MustCompile(`(?:^|\n)`+frame).FindAllStringIndex(out, -1)
	if len(frames) < 2 {
		t.Fatalf("%d refreshes, want at least 2:\n%s", len(frames), out)
	}
	if !regexp.MustCompile(`^(?:` + frame + `)(?:\n` + frame + `)+$`).MatchString(out) {
		t.Errorf("the output is not refreshes one after another with a blank line between:\n%s", out)
	}
	if strings.Contains(out, "\x1b") {
		t.Errorf("escape codes in output that is not a terminal: %q", out)
	}
}

// TestStatusWatchSignals sends the test process SIGINT and SIGTERM while
// --watch runs: it has them (a first frame is drawn after it asked for
// them), and either one is the end of it with exit 0.
func TestStatusWatchSignals(t *testing.T) {
	sock := serveFake(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String()+" ends --watch with exit 0", func(t *testing.T) {
			w := &frameWriter{frames: make(chan struct{}, 100)}
			var stderr bytes.Buffer
			done := make(chan int, 1)
			go func() {
				done <- runStatus(context.Background(), []string{"--watch", "--interval", "100ms", "--socket", sock}, w, &stderr)
			}()
			select {
			case <-w.frames:
			case <-time.After(10 * time.Second):
				t.Fatal("no first frame")
			}
			if err := syscall.Kill(os.Getpid(), sig); err != nil {
				t.Fatal(err)
			}
			select {
			case code := <-done:
				if code != 0 || stderr.Len() > 0 {
					t.Errorf("exit %d, stderr %q", code, &stderr)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("--watch did not end on %v", sig)
			}
		})
	}
}

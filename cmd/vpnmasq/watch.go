package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/mattn/go-isatty"
	"golang.org/x/sys/unix"
)

// The terminal controls of --watch. The alternate screen buffer keeps the
// shell's scrollback as it was: on exit the terminal shows what it showed
// before the command.
const (
	termEnter = "\x1b[?1049h\x1b[?25l" // alternate screen on, cursor hidden
	termLeave = "\x1b[?25h\x1b[?1049l" // cursor shown, alternate screen off
	termClear = "\x1b[H\x1b[2J"        // cursor home, clear the screen
)

// runWatch implements `vpnmasq status --watch`: it redraws the tables
// fetch returns every interval until ctx ends or SIGINT or SIGTERM
// arrives, which is exit 0. A failing first fetch is exit 1, as plain
// status is.
func runWatch(ctx context.Context, stdout, stderr io.Writer, interval time.Duration,
	fetch func(context.Context) ([]byte, error)) int {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	l := watchLoop{interval: interval, fetch: fetch, now: time.Now, ticks: ticker.C}
	if f, ok := stdout.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		l.terminal = true
		l.size = func() (rows, cols int) {
			ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
			if err != nil {
				return 0, 0
			}
			return int(ws.Row), int(ws.Col)
		}
	}
	if err := l.run(ctx, stdout); err != nil {
		fmt.Fprintf(stderr, "vpnmasq status: %v\n", err)
		return 1
	}
	return 0
}

// watchLoop is the refresh loop of --watch, with its clock, ticks and
// terminal given so that tests drive it without a terminal or sleeping.
type watchLoop struct {
	interval time.Duration
	fetch    func(context.Context) ([]byte, error) // the tables, as plain status prints them
	now      func() time.Time
	ticks    <-chan time.Time // one refresh each
	terminal bool
	size     func() (rows, cols int) // the terminal's size at each refresh; nil or 0 is no limit
}

// run draws a frame after the first fetch and after each tick, until ctx
// ends (nil). It returns the error of a failing first fetch, before
// touching the terminal, or of a failing write.
func (l watchLoop) run(ctx context.Context, w io.Writer) error {
	f := frame{interval: l.interval}
	tables, err := l.fetch(ctx)
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return err
	}
	f.at, f.tables, f.tablesAt = l.now(), tables, l.now()
	if l.terminal {
		if _, err := io.WriteString(w, termEnter); err != nil {
			return err
		}
		defer io.WriteString(w, termLeave)
	}
	for first := true; ; first = false {
		var s screen
		s.terminal = l.terminal
		if l.size != nil {
			s.rows, s.cols = l.size()
		}
		if err := renderFrame(w, f, s, first); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-l.ticks:
		}
		tables, err := l.fetch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		f.at, f.err = l.now(), err
		if err == nil {
			f.tables, f.tablesAt = tables, f.at
		}
	}
}

// frame is what one refresh of --watch shows.
type frame struct {
	at       time.Time // when the refresh was made
	interval time.Duration
	err      error     // this refresh's fetch error; nil when tables are this refresh's
	tables   []byte    // the tables of the last fetch that worked
	tablesAt time.Time // when they were fetched
}

// screen says where a frame goes: a terminal of rows×cols (0 for no
// limit), redrawn each time, or, with terminal false, plain text that
// follows the frames before it.
type screen struct {
	terminal   bool
	rows, cols int
}

// renderFrame writes one frame in one write: on a terminal the whole
// screen, cut to its size so that the header never scrolls away; else
// the header and the tables after a blank line, without escape codes and,
// after a failed fetch, without the old tables that are above already.
func renderFrame(w io.Writer, f frame, s screen, first bool) error {
	var text bytes.Buffer
	fmt.Fprintf(&text, "every %s at %s, Ctrl-C to quit", f.interval, f.at.Format("2006-01-02 15:04:05 MST"))
	if f.err != nil {
		fmt.Fprintf(&text, "; failed: %s", printableText(f.err.Error()))
		if s.terminal {
			fmt.Fprintf(&text, " (tables from %s)", f.tablesAt.Format("15:04:05"))
		}
	}
	text.WriteString("\n")
	if f.err == nil || s.terminal {
		text.WriteString("\n")
		text.Write(f.tables)
	}
	var out bytes.Buffer
	switch {
	case s.terminal:
		out.WriteString(termClear)
		out.WriteString(fitScreen(text.String(), s.rows, s.cols))
	case first:
		out.Write(text.Bytes())
	default:
		out.WriteString("\n")
		out.Write(text.Bytes())
	}
	_, err := w.Write(out.Bytes())
	return err
}

// fitScreen cuts text to rows lines of cols characters (0: no limit). The
// last line says how many lines were cut, and has no newline: a newline on
// the last row would scroll the first one off the screen.
func fitScreen(text string, rows, cols int) string {
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if rows > 0 && len(lines) > rows {
		cut := len(lines) - rows + 1
		lines = append(lines[:rows-1], fmt.Sprintf("… %d more lines: a taller window shows them", cut))
	}
	for i, line := range lines {
		if r := []rune(line); cols > 0 && len(r) > cols {
			lines[i] = string(r[:cols])
		}
	}
	return strings.Join(lines, "\n")
}

// printableText replaces control characters, so that an error that quotes
// the router's answer cannot send escape sequences to the terminal.
func printableText(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}

package config

import (
	"fmt"
	"sort"
	"strings"
)

// Error is one problem in a configuration, located by file, line and key so
// that an operator can go straight to it.
type Error struct {
	File string // file path or "<embedded default>"
	Line int    // 1-based; 0 when the problem has no single line (a value left to its default)
	Key  string // dotted key, e.g. "nat.port_range" or "forward[1].port"; empty for syntax errors without one
	Msg  string
	// Warning marks something that works but deserves a look; it never
	// stops vpnmasq. It reads "file:line: key: warning: msg".
	Warning bool
}

// Error formats the problem as "file:line: key: msg", leaving out the parts
// that are unknown.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	if e.Warning {
		b.WriteString("warning: ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one configuration. Load and Resolve
// return all of them at once, so a broken file is fixed in one round trip.
type Errors []*Error

// Error prints one problem per line.
func (es *Errors) Error() string {
	lines := make([]string, len(*es))
	for i, e := range *es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap gives errors.Is and errors.As access to every problem.
func (es *Errors) Unwrap() []error {
	out := make([]error, len(*es))
	for i, e := range *es {
		out[i] = e
	}
	return out
}

// add records a problem.
func (es *Errors) add(file string, line int, key, format string, args ...any) {
	*es = append(*es, &Error{File: file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// sortByLine orders problems as they appear in the file; problems without a
// line keep their relative order and come last.
func (es Errors) sortByLine() {
	sort.SliceStable(es, func(i, j int) bool {
		li, lj := es[i].Line, es[j].Line
		if li == 0 || lj == 0 {
			return li != 0 && lj == 0
		}
		return li < lj
	})
}

// orNil turns an empty list into a nil error, so callers can test err != nil
// (a nil *Errors inside an error interface would not compare equal to nil).
func (es Errors) orNil() error {
	if len(es) == 0 {
		return nil
	}
	es.sortByLine()
	return &es
}

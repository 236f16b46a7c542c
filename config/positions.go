package config

import (
	"strconv"
	"strings"
)

// positions maps key paths to the line where they are written.
//
// BurntSushi/toml v1.6 keeps key positions private and, for arrays of tables,
// keeps only the last element's, so the loader scans the text itself. It runs
// only on text the TOML parser has accepted, but stays defensive: a scan that
// gets confused stops early and lookups fall back to the enclosing table.
//
// Paths use the decoded key names joined with dots; elements of arrays
// (including [[forward]] tables) carry an index: "forward[1].port",
// "lan.prefixes[0]".
type positions struct {
	lines map[string]int
}

// line returns the line of path, or of its nearest recorded ancestor, or 0.
func (p *positions) line(path string) int {
	for path != "" {
		if l, ok := p.lines[path]; ok {
			return l
		}
		path = parentPath(path)
	}
	return 0
}

// parentPath strips the last ".key" or "[n]" from path.
func parentPath(path string) string {
	if strings.HasSuffix(path, "]") {
		if i := strings.LastIndexByte(path, '['); i >= 0 {
			return path[:i]
		}
		return ""
	}
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		return path[:i]
	}
	return ""
}

func joinPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func indexPath(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// scanPositions records the line of every table header, key and array element.
func scanPositions(text string) *positions {
	s := &scanner{text: text, line: 1, lines: map[string]int{}, tableArrays: map[string]int{}}
	s.document()
	return &positions{lines: s.lines}
}

type scanner struct {
	text  string
	i     int
	line  int
	lines map[string]int
	// tableArrays counts the [[x]] headers seen per (indexed) path, so that
	// keys below the n-th header are recorded as x[n-1].key.
	tableArrays map[string]int
}

func (s *scanner) eof() bool { return s.i >= len(s.text) }

func (s *scanner) peek(prefix string) bool { return strings.HasPrefix(s.text[s.i:], prefix) }

func (s *scanner) record(path string, line int) {
	if _, seen := s.lines[path]; !seen {
		s.lines[path] = line
	}
}

// advance moves over n bytes, counting newlines.
func (s *scanner) advance(n int) {
	for ; n > 0 && !s.eof(); n-- {
		if s.text[s.i] == '\n' {
			s.line++
		}
		s.i++
	}
}

func (s *scanner) skipBlanks() {
	for !s.eof() && (s.text[s.i] == ' ' || s.text[s.i] == '\t') {
		s.i++
	}
}

// skipBlanksAndLines skips whitespace, newlines and comments.
func (s *scanner) skipBlanksAndLines() {
	for !s.eof() {
		switch s.text[s.i] {
		case ' ', '\t', '\r', '\n':
			s.advance(1)
		case '#':
			for !s.eof() && s.text[s.i] != '\n' {
				s.i++
			}
		default:
			return
		}
	}
}

func (s *scanner) document() {
	table := ""
	for {
		s.skipBlanksAndLines()
		if s.eof() {
			return
		}
		start, line := s.i, s.line
		if s.peek("[[") {
			s.advance(2)
			keys, ok := s.key()
			if !ok || !s.peek("]]") {
				return
			}
			s.advance(2)
			table = s.headerPath(keys, true)
			s.record(table, line)
		} else if s.peek("[") {
			s.advance(1)
			keys, ok := s.key()
			if !ok || !s.peek("]") {
				return
			}
			s.advance(1)
			table = s.headerPath(keys, false)
			s.record(table, line)
		} else if !s.keyValue(table) {
			return
		}
		if s.i == start {
			return
		}
	}
}

// headerPath turns the keys of a table header into an indexed path; for an
// array-of-tables header it also counts the new element.
func (s *scanner) headerPath(keys []string, arrayOfTables bool) string {
	path := ""
	for n, k := range keys {
		path = joinPath(path, k)
		count := s.tableArrays[path]
		if arrayOfTables && n == len(keys)-1 {
			s.tableArrays[path] = count + 1
			return indexPath(path, count)
		}
		if count > 0 {
			path = indexPath(path, count-1)
		}
	}
	return path
}

// keyValue scans `key = value` below table and records it.
func (s *scanner) keyValue(table string) bool {
	line := s.line
	keys, ok := s.key()
	if !ok {
		return false
	}
	s.skipBlanks()
	if !s.peek("=") {
		return false
	}
	s.advance(1)
	s.skipBlanks()
	path := table
	for _, k := range keys {
		path = joinPath(path, k)
		s.record(path, line) // dotted keys also define their parents here
	}
	return s.value(path)
}

// key scans a possibly dotted key of bare and quoted parts.
func (s *scanner) key() ([]string, bool) {
	var keys []string
	for {
		s.skipBlanks()
		if s.eof() {
			return nil, false
		}
		switch c := s.text[s.i]; {
		case c == '"':
			start := s.i
			if !s.basicString() {
				return nil, false
			}
			raw := s.text[start:s.i]
			k, err := strconv.Unquote(raw)
			if err != nil {
				k = raw[1 : len(raw)-1]
			}
			keys = append(keys, k)
		case c == '\'':
			end := strings.IndexByte(s.text[s.i+1:], '\'')
			if end < 0 {
				return nil, false
			}
			keys = append(keys, s.text[s.i+1:s.i+1+end])
			s.i += end + 2
		case isBareKeyChar(c):
			start := s.i
			for !s.eof() && isBareKeyChar(s.text[s.i]) {
				s.i++
			}
			keys = append(keys, s.text[start:s.i])
		default:
			return nil, false
		}
		s.skipBlanks()
		if !s.peek(".") {
			return keys, true
		}
		s.i++
	}
}

func isBareKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// basicString scans a single-line "..." string with escapes.
func (s *scanner) basicString() bool {
	for j := s.i + 1; j < len(s.text); j++ {
		switch s.text[j] {
		case '\\':
			j++
		case '"':
			s.i = j + 1
			return true
		case '\n':
			return false
		}
	}
	return false
}

// multiline scans a string in triple quotes or triple apostrophes; only
// the quoted (basic) kind honours backslash escapes.
// The closing delimiter may be followed by up to two more quote characters,
// which belong to the content.
func (s *scanner) multiline(delim string) bool {
	s.advance(3)
	for !s.eof() {
		if delim == `"""` && s.text[s.i] == '\\' {
			s.advance(2)
			continue
		}
		if s.peek(delim) {
			s.advance(3)
			for n := 0; n < 2 && !s.eof() && s.text[s.i] == delim[0]; n++ {
				s.i++
			}
			return true
		}
		s.advance(1)
	}
	return false
}

// value scans one value; arrays and inline tables record their elements.
func (s *scanner) value(path string) bool {
	if s.eof() {
		return false
	}
	switch {
	case s.peek(`"""`):
		return s.multiline(`"""`)
	case s.peek("'''"):
		return s.multiline("'''")
	case s.peek(`"`):
		return s.basicString()
	case s.peek("'"):
		end := strings.IndexByte(s.text[s.i+1:], '\'')
		if end < 0 {
			return false
		}
		s.i += end + 2
		return true
	case s.peek("["):
		s.advance(1)
		for n := 0; ; n++ {
			s.skipBlanksAndLines()
			if s.eof() {
				return false
			}
			if s.peek("]") {
				s.advance(1)
				return true
			}
			element := indexPath(path, n)
			s.record(element, s.line)
			start := s.i
			if !s.value(element) || s.i == start {
				return false
			}
			s.skipBlanksAndLines()
			if s.peek(",") {
				s.advance(1)
			}
		}
	case s.peek("{"):
		s.advance(1)
		for {
			s.skipBlanksAndLines()
			if s.eof() {
				return false
			}
			if s.peek("}") {
				s.advance(1)
				return true
			}
			start := s.i
			if !s.keyValue(path) || s.i == start {
				return false
			}
			s.skipBlanksAndLines()
			if s.peek(",") {
				s.advance(1)
			}
		}
	default:
		// Numbers, booleans and dates (which may contain a space) end at a
		// separator, a comment or the end of the line.
		start := s.i
		for !s.eof() && !strings.ContainsRune(",]}#\r\n", rune(s.text[s.i])) {
			s.i++
		}
		return s.i > start
	}
}

package doccheck

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/vpnmasq/vpnmasq/config"
)

// repoRoot is the directory holding go.mod, found upwards from the test's
// working directory (the package directory).
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// docFiles are the Markdown files checked, relative to the repository root.
func docFiles(t *testing.T, root string) []string {
	t.Helper()
	files := []string{"README.md"}
	more, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range more {
		rel, err := filepath.Rel(root, f)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, filepath.ToSlash(rel))
	}
	return files
}

// line is one line of a Markdown file outside fenced code blocks, with
// inline code spans blanked so that nothing in them reads as a link.
type line struct {
	n    int // 1-based line number
	text string
}

var codeSpan = regexp.MustCompile("`+[^`]*`+")

// prose returns the lines of a Markdown text outside fenced code blocks,
// inline code blanked out, and the fenced lines separately (raw).
func prose(text string) (out []line, fenced []line) {
	inFence := false
	var fence string
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		trimmed := strings.TrimLeft(l, " ")
		if !inFence && (strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~")) {
			inFence, fence = true, trimmed[:3]
			continue
		}
		if inFence {
			if strings.HasPrefix(trimmed, fence) {
				inFence = false
				continue
			}
			fenced = append(fenced, line{n, l})
			continue
		}
		out = append(out, line{n, codeSpan.ReplaceAllStringFunc(l, func(s string) string { return strings.Repeat(" ", len(s)) })})
	}
	return out, fenced
}

var (
	atxHeading = regexp.MustCompile(`^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$`)
	htmlAnchor = regexp.MustCompile(`<a\s+(?:id|name)="([^"]+)"`)
	// A Markdown link or image: [text](target) or ![alt](target), with an
	// optional title after the target. Nested brackets in the text are rare
	// enough in these docs not to need a parser.
	mdLink = regexp.MustCompile(`!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)`)
	scheme = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
)

// slug is the anchor GitHub gives a heading: lower case, punctuation other
// than '-' and '_' dropped, spaces turned into '-'.
func slug(heading string) string {
	heading = strings.ReplaceAll(heading, "`", "")
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.M, r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// anchors returns every anchor a Markdown text defines: its headings'
// slugs (a repeated slug gets -1, -2, … as on GitHub) and explicit HTML
// anchors.
func anchors(text string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	lines, _ := prose(text)
	for _, l := range lines {
		for _, m := range htmlAnchor.FindAllStringSubmatch(l.text, -1) {
			out[m[1]] = true
		}
	}
	// Headings: read from the text with code spans intact (their content
	// counts in the slug), outside fences.
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	inFence := false
	var fence string
	for sc.Scan() {
		l := sc.Text()
		trimmed := strings.TrimLeft(l, " ")
		if !inFence && (strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~")) {
			inFence, fence = true, trimmed[:3]
			continue
		}
		if inFence {
			if strings.HasPrefix(trimmed, fence) {
				inFence = false
			}
			continue
		}
		m := atxHeading.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		s := slug(m[2])
		if k := seen[s]; k > 0 {
			out[s+"-"+strconv.Itoa(k)] = true
		} else {
			out[s] = true
		}
		seen[s]++
	}
	return out
}

func TestSlugMatchesGitHubs(t *testing.T) {
	for heading, want := range map[string]string{
		"Local services: ping, DNS, admin API, metrics, status page": "local-services-ping-dns-admin-api-metrics-status-page",
		"The attacks, tested":              "the-attacks-tested",
		"RFC 4787 — unicast UDP":           "rfc-4787--unicast-udp",
		"A WAN address that changes":       "a-wan-address-that-changes",
		"How `vpnmasq check` reads a_file": "how-vpnmasq-check-reads-a_file",
	} {
		if got := slug(heading); got != want {
			t.Errorf("slug(%q) = %q, want %q", heading, got, want)
		}
	}
	got := anchors("# A\n\n## A\n\n```\n# not a heading\n```\n<a id=\"x\"></a>\n")
	for _, want := range []string{"a", "a-1", "x"} {
		if !got[want] {
			t.Errorf("anchors lack %q (have %v)", want, got)
		}
	}
	if got["not-a-heading"] {
		t.Error("a line in a code block was taken for a heading")
	}
}

// TestLinksResolve checks every relative link of README.md and docs/*.md:
// the file it names exists, and the #anchor it names is a heading (or HTML
// anchor) of that file. Absolute URLs are not fetched.
func TestLinksResolve(t *testing.T) {
	root := repoRoot(t)
	texts := map[string]string{}
	read := func(rel string) (string, bool) {
		if s, ok := texts[rel]; ok {
			return s, true
		}
		b, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(rel)))
		if err != nil {
			return "", false
		}
		texts[rel] = string(b)
		return string(b), true
	}
	links := 0
	for _, file := range docFiles(t, root) {
		text, ok := read(file)
		if !ok {
			t.Fatalf("cannot read %s", file)
		}
		// Links may wrap: match over the prose joined into one string,
		// each line's start remembered to name the line of a match.
		lines, _ := prose(text)
		var joined strings.Builder
		starts := make([]int, len(lines))
		for i, l := range lines {
			starts[i] = joined.Len()
			joined.WriteString(l.text)
			joined.WriteByte(' ')
		}
		for _, idx := range mdLink.FindAllStringSubmatchIndex(joined.String(), -1) {
			i, _ := slices.BinarySearch(starts, idx[0]+1)
			l := lines[i-1]
			target := joined.String()[idx[2]:idx[3]]
			if scheme.MatchString(target) {
				continue
			}
			links++
			path, anchor, _ := strings.Cut(target, "#")
			dest := file
			if path != "" {
				dest = filepath.ToSlash(filepath.Join(filepath.Dir(file), filepath.FromSlash(path)))
				if strings.HasPrefix(dest, "../") {
					t.Errorf("%s:%d: link %q leaves the repository", file, l.n, target)
					continue
				}
				if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(dest))); err != nil {
					t.Errorf("%s:%d: link %q: %s does not exist", file, l.n, target, dest)
					continue
				}
			}
			if anchor == "" {
				continue
			}
			if !strings.HasSuffix(dest, ".md") {
				t.Errorf("%s:%d: link %q: an anchor into %s, which is not Markdown", file, l.n, target, dest)
				continue
			}
			destText, _ := read(dest)
			if !anchors(destText)[anchor] {
				t.Errorf("%s:%d: link %q: %s has no heading with anchor #%s", file, l.n, target, dest, anchor)
			}
		}
	}
	if links == 0 {
		t.Fatal("found no relative links at all: the link pattern is broken")
	}
}

var (
	testFuncDecl = regexp.MustCompile(`(?m)^func ((?:Test|Benchmark|Fuzz)[A-Z0-9]\w*)\(`)
	// A test cited as "`path/x_test.go` `TestName`": the name after the file.
	citedInFile = regexp.MustCompile("`([\\w./-]+_test\\.go)`\\s+`((?:Test|Benchmark|Fuzz)[A-Z0-9]\\w*)`")
	// Any test function named in backquotes.
	citedName = regexp.MustCompile("`((?:Test|Benchmark|Fuzz)[A-Z0-9]\\w*)`")
)

// placeholders are names the docs use to explain the naming, not tests.
var placeholders = []string{"TestFunc"}

// TestCitedTestsExist checks that every test, benchmark and fuzz function
// the docs name in backquotes is declared in a _test.go file of the
// repository, and that one cited with its file ("`nat/udp_test.go`
// `TestUDPMapping`") is declared in a file of that name. Directories are not
// compared: a test moves with its package, its file name stays.
func TestCitedTestsExist(t *testing.T) {
	root := repoRoot(t)
	declared := map[string][]string{} // function name -> base names of the files declaring it
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range testFuncDecl.FindAllStringSubmatch(string(b), -1) {
			declared[m[1]] = append(declared[m[1]], filepath.Base(path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(declared) == 0 {
		t.Fatal("found no test functions in the repository")
	}
	for _, file := range docFiles(t, root) {
		b, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(file)))
		if err != nil {
			t.Fatal(err)
		}
		for n, l := range strings.Split(string(b), "\n") {
			for _, m := range citedName.FindAllStringSubmatch(l, -1) {
				if name := m[1]; declared[name] == nil && !slices.Contains(placeholders, name) {
					t.Errorf("%s:%d: %s is not declared in any _test.go file", file, n+1, name)
				}
			}
			for _, m := range citedInFile.FindAllStringSubmatch(l, -1) {
				base, name := filepath.Base(m[1]), m[2]
				if files := declared[name]; files != nil && !slices.Contains(files, base) {
					t.Errorf("%s:%d: %s is cited in %s but declared in %v", file, n+1, name, m[1], files)
				}
			}
		}
	}
}

// TestREADMEConfigurationsLoad loads the README's TOML examples with the
// configuration loader: the annotated one of "Configuration" and the
// container's. Values that come from the host are not resolved.
func TestREADMEConfigurationsLoad(t *testing.T) {
	root := repoRoot(t)
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	rest := string(b)
	for {
		_, after, ok := strings.Cut(rest, "```toml\n")
		if !ok {
			break
		}
		block, tail, ok := strings.Cut(after, "```")
		if !ok {
			t.Fatal("README.md: a toml block does not end")
		}
		blocks = append(blocks, block)
		rest = tail
	}
	if len(blocks) < 2 {
		t.Fatalf("README.md has %d toml blocks, want the configuration's and the container's", len(blocks))
	}
	for i, block := range blocks {
		path := filepath.Join(t.TempDir(), "vpnmasq.toml")
		if err := os.WriteFile(path, []byte(block), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := config.Load(path); err != nil {
			t.Errorf("README.md's toml block %d does not load:\n%v", i+1, err)
		}
	}
}

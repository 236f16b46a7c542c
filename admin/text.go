package admin

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"unicode"
)

// WriteText prints s as aligned text tables, with the sections of the status
// page, for `vpnmasq status`. It lists the mappings s holds (the first 100
// on /api/v1/status) and says how many more s.MappingsTotal counts.
func WriteText(w io.Writer, s Snapshot) error {
	v := newView(s, -1)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	head := printable([]string{v.Version, v.Uptime, v.Time, v.WAN, v.LANPrefixes, v.ServiceAddr})
	fmt.Fprintf(tw, "vpnmasq %s, up %s, at %s\n", head[0], head[1], head[2])
	fmt.Fprintf(tw, "  WAN\t%s\n", head[3])
	fmt.Fprintf(tw, "  LAN prefixes\t%s\n", head[4])
	fmt.Fprintf(tw, "  Service address\t%s\n", head[5])
	// Each section is flushed on its own so that its columns are aligned
	// within it, not with the widest cell of the whole output.
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, t := range v.Tables {
		fmt.Fprintf(tw, "\n%s\n", t.Title)
		names := make([]string, len(t.Columns))
		for i, c := range t.Columns {
			names[i] = c.Name
		}
		fmt.Fprintf(tw, "  %s\n", strings.Join(names, "\t"))
		if len(t.Rows) == 0 {
			fmt.Fprintf(tw, "  none\n")
		}
		for _, row := range t.Rows {
			fmt.Fprintf(tw, "  %s\n", strings.Join(printable(row), "\t"))
		}
		if t.More > 0 {
			fmt.Fprintf(tw, "  … and %d more; %s\n", t.More, t.Hint)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// printable replaces control characters, so that no value can break the
// table's columns or send escape sequences to the terminal.
func printable(row []string) []string {
	out := make([]string, len(row))
	for i, cell := range row {
		out[i] = strings.Map(func(r rune) rune {
			if unicode.IsControl(r) {
				return '?'
			}
			return r
		}, cell)
	}
	return out
}

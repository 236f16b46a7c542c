package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// newFlags is the flag set of one command. Its usage, printed to stderr
// on -h and on usage errors, is "usage: vpnmasq SYNOPSIS", a blank line,
// about (which says what the command does), a blank line and the flags.
func newFlags(name, synopsis, about string, stderr io.Writer) *flag.FlagSet {
	flags := flag.NewFlagSet(name, flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() {
		fmt.Fprintf(stderr, "usage: vpnmasq %s\n\n%s\n\n", synopsis, about)
		flags.PrintDefaults()
	}
	return flags
}

// parseFlags parses a command's arguments, which are flags only. When it
// returns ok false the command ends with code: 0 after -h, 2 after a usage
// error (already printed, with the usage).
func parseFlags(flags *flag.FlagSet, args []string) (code int, ok bool) {
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(flags.Output(), "%s: unexpected argument %q\n", flags.Name(), flags.Arg(0))
		flags.Usage()
		return 2, false
	}
	return 0, true
}

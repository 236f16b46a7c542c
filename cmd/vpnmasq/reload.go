package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/vpnmasq/vpnmasq/admin"
)

// reloadTimeout bounds the exchange: a reload reads the file and the
// host's interfaces and updates a few nftables sets, well under a second.
const reloadTimeout = 30 * time.Second

// cmdReload implements `vpnmasq reload [--socket PATH]`.
func cmdReload(args []string) int { return runReload(args, os.Stdout, os.Stderr) }

const reloadAbout = `Makes the running router re-read its configuration file, like SIGHUP.
Timeouts, limits, forwards, routing.no_nat, the admin allow list and
token, DNS upstreams and the log level apply at once, keeping every
mapping; interfaces, addresses, the TUN, the service address and
nat.port_range need a restart. A file with problems changes nothing.`

// runReload asks the running router to re-read its configuration file
// (POST /api/v1/reload on the admin unix socket; SIGHUP does the same) and
// prints what it applied, what needs a restart, or the file's problems.
// It returns 0 when the file was applied, 1 when it was refused or the
// router could not be asked, 2 on usage errors.
func runReload(args []string, stdout, stderr io.Writer) int {
	flags := newFlags("reload", "reload [--socket PATH]", reloadAbout, stderr)
	socket := flags.String("socket", admin.DefaultSocket, "the router's admin unix socket `PATH`")
	if code, ok := parseFlags(flags, args); !ok {
		return code
	}
	resp, body, err := askRouter(context.Background(), *socket, http.MethodPost, "/api/v1/reload", reloadTimeout)
	if err != nil {
		fmt.Fprintf(stderr, "vpnmasq reload: %v\n", err)
		return 1
	}
	var res admin.ReloadResult
	if err := json.Unmarshal(body, &res); err != nil {
		fmt.Fprintf(stderr, "vpnmasq reload: the router at %s answered %s: %s\n", *socket, resp.Status, body)
		return 1
	}
	if len(res.Errors) > 0 {
		fmt.Fprintf(stderr, "vpnmasq reload: %s refused; the running configuration stays:\n", res.Source)
		for _, e := range res.Errors {
			fmt.Fprintln(stderr, e)
		}
		return 1
	}
	fmt.Fprintf(stdout, "reloaded %s\n", res.Source)
	if len(res.Applied) == 0 {
		fmt.Fprintln(stdout, "applied: nothing changed")
	}
	for _, a := range res.Applied {
		fmt.Fprintf(stdout, "applied: %s\n", a)
	}
	for _, n := range res.NeedsRestart {
		fmt.Fprintf(stdout, "needs a restart: %s\n", n)
	}
	return 0
}

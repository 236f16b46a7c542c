package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/vpnmasq/vpnmasq/admin"
)

// statusTimeout bounds the whole exchange with the router: a router that
// accepts but never answers must not hang the command.
const statusTimeout = 10 * time.Second

// cmdStatus implements `vpnmasq status [--json | --health | --watch
// [--interval DURATION]] [--socket PATH]`.
func cmdStatus(args []string) int {
	return runStatus(context.Background(), args, os.Stdout, os.Stderr)
}

const statusSynopsis = "status [--json | --health | --watch [--interval DURATION]] [--socket PATH]"

const statusAbout = `Shows the running router's state: VPN sessions, the LAN hosts holding the
most NAT state, NAT mappings (the first 100), traffic, drops
and DNS counters. The socket is root-only.

--watch fetches the state every interval and redraws the tables, like top,
under a line with the time, the interval and a fetch error if the last
fetch failed (it keeps trying; only a failing first fetch ends it, exit 1).
Ctrl-C (SIGINT) or SIGTERM ends it with exit 0. When the output is not a
terminal each refresh is printed after the last one, without escape codes.`

// minWatchInterval keeps --watch from asking the router many times a
// second for tables nobody can read that fast.
const minWatchInterval = 100 * time.Millisecond

// runStatus asks the running router for its state over the admin unix
// socket and prints it as text tables, or as the API's JSON with --json,
// or again every interval with --watch until ctx ends or SIGINT or SIGTERM
// arrives. It returns 0 on success, 1 when the router cannot be asked, 2
// on usage errors.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	flags := newFlags("status", statusSynopsis, statusAbout, stderr)
	asJSON := flags.Bool("json", false, "print the router's JSON (/api/v1/status) instead of tables")
	health := flags.Bool("health", false, "only check that the router answers (/healthz): for container health checks")
	watch := flags.Bool("watch", false, "redraw the tables every interval until Ctrl-C, like top")
	interval := flags.Duration("interval", 2*time.Second, "with --watch, the `DURATION` between refreshes (at least 100ms)")
	socket := flags.String("socket", admin.DefaultSocket, "the router's admin unix socket `PATH`")
	if code, ok := parseFlags(flags, args); !ok {
		return code
	}
	set := map[string]bool{}
	flags.Visit(func(f *flag.Flag) { set[f.Name] = true })
	usageError := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "status: "+format+"\n", a...)
		flags.Usage()
		return 2
	}
	switch {
	case *watch && *asJSON:
		return usageError("--watch redraws the tables; it does not combine with --json")
	case *watch && *health:
		return usageError("--watch redraws the tables; it does not combine with --health")
	case set["interval"] && !*watch:
		return usageError("--interval is the time between the refreshes of --watch; add --watch")
	case *interval < minWatchInterval:
		return usageError("--interval %s is too short: it must be at least %s", *interval, minWatchInterval)
	}

	if *health {
		body, err := fetch(ctx, *socket, "/healthz", statusTimeout)
		if err != nil {
			fmt.Fprintf(stderr, "vpnmasq status: %v\n", err)
			return 1
		}
		stdout.Write(body)
		return 0
	}
	if *asJSON {
		body, err := fetch(ctx, *socket, "/api/v1/status", statusTimeout)
		if err != nil {
			fmt.Fprintf(stderr, "vpnmasq status: %v\n", err)
			return 1
		}
		stdout.Write(body)
		return 0
	}
	tables := func(ctx context.Context) ([]byte, error) { return fetchTables(ctx, *socket) }
	if *watch {
		return runWatch(ctx, stdout, stderr, *interval, tables)
	}
	text, err := tables(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "vpnmasq status: %v\n", err)
		return 1
	}
	stdout.Write(text)
	return 0
}

// fetchTables asks the router for /api/v1/status and returns it as the
// text tables of admin.WriteText.
func fetchTables(ctx context.Context, socket string) ([]byte, error) {
	body, err := fetch(ctx, socket, "/api/v1/status", statusTimeout)
	if err != nil {
		return nil, err
	}
	var snap admin.Snapshot
	if err := json.Unmarshal(body, &snap); err != nil {
		return nil, fmt.Errorf("the router at %s sent an unreadable status: %v", socket, err)
	}
	var text bytes.Buffer
	if err := admin.WriteText(&text, snap); err != nil {
		return nil, err
	}
	return text.Bytes(), nil
}

// fetch GETs a path of the admin API over the unix socket. Its errors read
// as the rest of a sentence after "vpnmasq status: ".
func fetch(ctx context.Context, socket, path string, timeout time.Duration) ([]byte, error) {
	resp, body, err := askRouter(ctx, socket, http.MethodGet, path, timeout)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the router at %s answered %s: %s", socket, resp.Status,
			strings.TrimSpace(string(bytes.ToValidUTF8(body, []byte("?")))))
	}
	return body, nil
}

// askRouter sends one request to the router's admin unix socket and reads
// the whole answer, whatever its status; errors say which socket and why.
// Ending ctx abandons the request.
func askRouter(ctx context.Context, socket, method, path string, timeout time.Duration) (*http.Response, []byte, error) {
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, method, "http://unix"+path, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) && ue.Timeout() {
			return nil, nil, fmt.Errorf("the router at %s did not answer within %s", socket, timeout)
		}
		return nil, nil, reachError(socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the router's answer from %s: %v", socket, err)
	}
	return resp, body, nil
}

// reachError explains a failed request. The dial error alone ("connect: no
// such file or directory") says what happened; the URL around it does not.
func reachError(socket string, err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		err = op.Err
	}
	if errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("cannot reach the router at %s: %v; the socket is root-only", socket, err)
	}
	return fmt.Errorf("cannot reach the router at %s: %v; is it running?", socket, err)
}

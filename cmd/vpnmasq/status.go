package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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

// cmdStatus implements `vpnmasq status [--json | --health] [--socket PATH]`.
func cmdStatus(args []string) int { return runStatus(args, os.Stdout, os.Stderr) }

const statusAbout = `Shows the running router's state: VPN sessions, the LAN hosts holding the
most NAT state, NAT mappings (the first 100), traffic, drops
and DNS counters. The socket is root-only.`

// runStatus asks the running router for its state over the admin unix
// socket and prints it as text tables, or as the API's JSON with --json.
// It returns 0 on success, 1 when the router cannot be asked, 2 on usage
// errors.
func runStatus(args []string, stdout, stderr io.Writer) int {
	flags := newFlags("status", "status [--json | --health] [--socket PATH]", statusAbout, stderr)
	asJSON := flags.Bool("json", false, "print the router's JSON (/api/v1/status) instead of tables")
	health := flags.Bool("health", false, "only check that the router answers (/healthz): for container health checks")
	socket := flags.String("socket", admin.DefaultSocket, "the router's admin unix socket `PATH`")
	if code, ok := parseFlags(flags, args); !ok {
		return code
	}

	if *health {
		body, err := fetch(*socket, "/healthz", statusTimeout)
		if err != nil {
			fmt.Fprintf(stderr, "vpnmasq status: %v\n", err)
			return 1
		}
		stdout.Write(body)
		return 0
	}
	body, err := fetch(*socket, "/api/v1/status", statusTimeout)
	if err != nil {
		fmt.Fprintf(stderr, "vpnmasq status: %v\n", err)
		return 1
	}
	if *asJSON {
		stdout.Write(body)
		return 0
	}
	var snap admin.Snapshot
	if err := json.Unmarshal(body, &snap); err != nil {
		fmt.Fprintf(stderr, "vpnmasq status: the router at %s sent an unreadable status: %v\n", *socket, err)
		return 1
	}
	if err := admin.WriteText(stdout, snap); err != nil {
		fmt.Fprintf(stderr, "vpnmasq status: %v\n", err)
		return 1
	}
	return 0
}

// fetch GETs a path of the admin API over the unix socket. Its errors read
// as the rest of a sentence after "vpnmasq status: ".
func fetch(socket, path string, timeout time.Duration) ([]byte, error) {
	resp, body, err := askRouter(socket, http.MethodGet, path, timeout)
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
func askRouter(socket, method, path string, timeout time.Duration) (*http.Response, []byte, error) {
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequest(method, "http://unix"+path, nil)
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

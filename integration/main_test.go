// Package integration runs the real vpnmasq binary inside a namespace lab
// (see internal/lab) and drives traffic through it with real tools.
// Everything happens inside namespaces the tests create and delete; the
// host's own interfaces and routes are never touched. Root is required.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// vpnmasqBin is the binary under test, built once by TestMain.
var vpnmasqBin string

// Tools the tests run inside namespaces, with the Debian package providing each.
var requiredTools = map[string]string{
	"ip":      "iproute2",
	"curl":    "curl",
	"ping":    "iputils-ping",
	"tcpdump": "tcpdump",
	"nft":     "nftables",
}

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "FAIL: the integration tests create network namespaces and run the router; run them as root")
		os.Exit(1)
	}
	var missing []string
	for tool, pkg := range requiredTools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", tool, pkg))
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		fmt.Fprintf(os.Stderr, "FAIL: missing tools: %s\n", strings.Join(missing, ", "))
		os.Exit(1)
	}
	// Labs of earlier runs that crashed before their cleanup; labs of
	// processes still running are left alone.
	if deleted, err := lab.CleanupStale(); err != nil || len(deleted) > 0 {
		fmt.Fprintf(os.Stderr, "removed stale lab namespaces %v (err %v)\n", deleted, err)
	}

	// VPNMASQ_TEST_BIN runs the suite against an already built binary
	// (e.g. a release build) instead of building one from this tree.
	if bin := os.Getenv("VPNMASQ_TEST_BIN"); bin != "" {
		vpnmasqBin = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "vpnmasq-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		os.Exit(1)
	}
	vpnmasqBin = filepath.Join(dir, "vpnmasq")
	build := exec.Command(goTool(), "build", "-o", vpnmasqBin, "github.com/vpnmasq/vpnmasq/cmd/vpnmasq")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: building vpnmasq:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// goTool finds the go command: PATH first, then $GOROOT, then where Go
// lives on this machine's image.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := os.Getenv("GOROOT"); root != "" {
		return filepath.Join(root, "bin", "go")
	}
	return "/usr/local/go/bin/go"
}

// labConfig is the router configuration for the standard lab.
const labConfig = `[lan]
interfaces = ["br-lan"]
prefixes = ["192.168.77.0/24"]

[wan]
interface = "rtr-wan"

[nat]
port_range = "20000-32767"

[routing]
no_nat = ["10.20.0.0/16"]

[[forward]]
proto = "tcp"
port = 8080
to = "192.168.77.10:80"

[log]
level = "debug"
format = "json"
`

// newLab builds a lab that is removed when the test ends, whatever happens.
func newLab(t *testing.T, opts lab.Options) *lab.Lab {
	t.Helper()
	l, err := lab.New(opts)
	if err != nil {
		t.Fatalf("building the lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("removing the lab: %v", err)
		}
	})
	return l
}

// logLine is one line of the router's stderr; JSON lines are decoded.
type logLine struct {
	Raw    string
	Fields map[string]any // nil for a line that is not JSON
}

func (l logLine) Message() string { s, _ := l.Fields["message"].(string); return s }
func (l logLine) Level() string   { s, _ := l.Fields["level"].(string); return s }

// Str returns a field as text ("" if absent).
func (l logLine) Str(key string) string {
	v, ok := l.Fields[key]
	if !ok {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// routerLog collects the router's stderr as it arrives.
type routerLog struct {
	mu      sync.Mutex
	lines   []logLine
	changed chan struct{} // closed and replaced on every new line
}

func newRouterLog() *routerLog { return &routerLog{changed: make(chan struct{})} }

func (rl *routerLog) add(raw string) {
	line := logLine{Raw: raw}
	if strings.HasPrefix(raw, "{") {
		var f map[string]any
		if json.Unmarshal([]byte(raw), &f) == nil {
			line.Fields = f
		}
	}
	rl.mu.Lock()
	rl.lines = append(rl.lines, line)
	close(rl.changed)
	rl.changed = make(chan struct{})
	rl.mu.Unlock()
}

// since returns the lines from index i on and the current length.
func (rl *routerLog) since(i int) ([]logLine, int, chan struct{}) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	return append([]logLine(nil), rl.lines[min(i, len(rl.lines)):]...), len(rl.lines), rl.changed
}

func (rl *routerLog) len() int {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	return len(rl.lines)
}

// waitFor waits for a line with the given message at index from or later.
// It gives up at the deadline or when stop is closed.
func (rl *routerLog) waitFor(message string, from int, timeout time.Duration, stop <-chan struct{}) (logLine, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		lines, n, changed := rl.since(from)
		for _, l := range lines {
			if l.Message() == message {
				return l, true
			}
		}
		from = n
		select {
		case <-changed:
		case <-stop:
			// The process ended; its last lines are already in.
			lines, _, _ := rl.since(from)
			for _, l := range lines {
				if l.Message() == message {
					return l, true
				}
			}
			return logLine{}, false
		case <-deadline.C:
			return logLine{}, false
		}
	}
}

func (rl *routerLog) find(message string) []logLine {
	lines, _, _ := rl.since(0)
	var out []logLine
	for _, l := range lines {
		if l.Message() == message {
			out = append(out, l)
		}
	}
	return out
}

func (rl *routerLog) String() string {
	lines, _, _ := rl.since(0)
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.Raw)
		b.WriteByte('\n')
	}
	return b.String()
}

// router is one vpnmasq process running in a lab's router namespace.
type router struct {
	t      *testing.T
	cmd    *exec.Cmd
	log    *routerLog
	exited chan struct{} // closed once the process has been waited for
	ready  logLine
}

const readyTimeout = 15 * time.Second

// startRouter writes config to a file and runs `vpnmasq run --config` in
// the lab's router namespace (an empty config runs `vpnmasq run` alone, on
// the embedded default), waiting for "router ready". When the test
// ends the router gets SIGTERM and must exit 0 after logging
// "router stopped".
func startRouter(t *testing.T, l *lab.Lab, config string) *router {
	t.Helper()
	r, err := launchRouter(t, l, config)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !r.hasExited() {
			r.stop()
		}
		if t.Failed() {
			t.Logf("router log:\n%s", r.log)
		}
	})
	return r
}

// launchRouter starts the router and waits for it to be ready; on failure
// the process is killed and the error carries its log.
func launchRouter(t *testing.T, l *lab.Lab, config string) (*router, error) {
	t.Helper()
	args := []string{"run"} // no config: the embedded default
	if config != "" {
		config = withAdminSocket(config, filepath.Join(t.TempDir(), "admin.sock"))
		config = withStateFile(config, filepath.Join(t.TempDir(), "state.bin"))
		path := filepath.Join(t.TempDir(), "vpnmasq.toml")
		if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
			return nil, err
		}
		args = append(args, "--config", path)
	}
	if config == "" {
		removeDefaultStateAfter(t)
	}
	cmd := exec.Command(vpnmasqBin, args...)
	r := &router{t: t, cmd: cmd, log: newRouterLog(), exited: make(chan struct{})}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = cmd.Stderr
	// A test binary that dies (e.g. on -timeout) takes the router with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := l.Router.Start(cmd); err != nil {
		return nil, fmt.Errorf("starting vpnmasq: %w", err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			r.log.add(sc.Text())
		}
		_ = cmd.Wait() // only after every read, as StderrPipe requires
		close(r.exited)
	}()
	ready, ok := r.log.waitFor("router ready", 0, readyTimeout, r.exited)
	if !ok {
		if !r.hasExited() {
			_ = cmd.Process.Kill()
		}
		<-r.exited
		return nil, fmt.Errorf("vpnmasq did not log \"router ready\" (waited up to %v; process %s); log:\n%s", readyTimeout, cmd.ProcessState, r.log)
	}
	r.ready = ready
	t.Logf("router ready: %s", ready.Raw)
	return r, nil
}

// withAdminSocket puts the router's admin socket at path unless the
// configuration names one, so a test (or a kill -9) leaves no socket in
// /run/vpnmasq and tests never meet another router's socket.
func withAdminSocket(config, path string) string {
	if strings.Contains(config, "admin_socket") {
		return config
	}
	line := fmt.Sprintf("admin_socket = %q\n", path)
	if i := strings.Index(config, "[services]\n"); i >= 0 {
		i += len("[services]\n")
		return config[:i] + line + config[i:]
	}
	return config + "\n[services]\n" + line
}

// removeDefaultStateAfter removes, when t ends, what a router on the
// embedded default wrote in /var/lib/vpnmasq (the directory too, when the
// router created it), leaving what was there before.
func removeDefaultStateAfter(t *testing.T) {
	_, fileErr := os.Stat(defaultStateFile)
	_, dirErr := os.Stat(filepath.Dir(defaultStateFile))
	t.Cleanup(func() {
		if errors.Is(fileErr, fs.ErrNotExist) {
			os.Remove(defaultStateFile)
		}
		if errors.Is(dirErr, fs.ErrNotExist) {
			os.Remove(filepath.Dir(defaultStateFile))
		}
	})
}

// defaultStateFile is [state] file's default.
const defaultStateFile = "/var/lib/vpnmasq/state.bin"

// withStateFile keeps the router's NAT state at path unless the
// configuration has a [state] section, so that no two tests share the
// default file and no test restores another's state. It also turns the
// hold off: tests that stop the router check that it leaves nothing, and
// a hold would carry over to the next test's start in the same lab. The
// state tests, which give their own [state], run with the hold.
func withStateFile(config, path string) string {
	if strings.Contains(config, "[state]") {
		return config
	}
	return config + fmt.Sprintf("\n[state]\nfile = %q\nhold = \"0s\"\n", path)
}

func (r *router) hasExited() bool {
	select {
	case <-r.exited:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and checks the clean-exit contract: exit status 0 and
// "router stopped" logged, within 10 s.
func (r *router) stop() {
	r.t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		r.t.Errorf("SIGTERM to vpnmasq: %v", err)
	}
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.exited
		r.t.Errorf("vpnmasq still running 10s after SIGTERM; killed")
		return
	}
	if code := r.cmd.ProcessState.ExitCode(); code != 0 {
		r.t.Errorf("vpnmasq exited with %s after SIGTERM, want status 0", r.cmd.ProcessState)
	}
	if len(r.log.find("router stopped")) == 0 {
		r.t.Errorf("vpnmasq exited without logging \"router stopped\"")
	}
}

// kill ends the router with SIGKILL, leaving whatever it had set up.
func (r *router) kill() {
	_ = r.cmd.Process.Kill()
	<-r.exited
}

// natMappings asks for the NAT table (SIGUSR1) and returns the
// "nat mapping" lines of that dump.
func (r *router) natMappings() ([]logLine, error) {
	from := r.log.len()
	if err := r.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return nil, err
	}
	if _, ok := r.log.waitFor("nat table", from, 5*time.Second, r.exited); !ok {
		return nil, errors.New("no \"nat table\" line within 5s of SIGUSR1")
	}
	lines, _, _ := r.log.since(from)
	var out []logLine
	for _, l := range lines {
		if l.Message() == "nat table" {
			break
		}
		if l.Message() == "nat mapping" {
			out = append(out, l)
		}
	}
	return out, nil
}

// runIn runs a command inside a namespace via `ip netns exec` and returns
// its combined output and exit status (-1 if it did not run to an exit).
func runIn(t *testing.T, ns *lab.NS, timeout time.Duration, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	out, err := cmd.CombinedOutput()
	code := cmd.ProcessState.ExitCode()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Logf("%s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		t.Logf("%s: timed out after %v", strings.Join(args, " "), timeout)
	}
	return string(out), code
}

// capture is a tcpdump running inside a namespace.
type capture struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// startCapture starts tcpdump on ifname in ns with a pcap filter and waits
// until it is listening. It is stopped at the latest when the test ends.
func startCapture(t *testing.T, ns *lab.NS, ifname, filter string) *capture {
	t.Helper()
	args := []string{"netns", "exec", ns.Name, "tcpdump", "--immediate-mode", "-i", ifname, "-n", "-l", "-p", "-vv", filter}
	// `ip netns exec` execs tcpdump in place, so the PID is tcpdump's.
	cmd := exec.Command("ip", args...)
	c := &capture{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout = c.out
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting tcpdump in %s: %v", ns.Name, err)
	}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		signalled := false
		for sc.Scan() {
			if !signalled && strings.Contains(sc.Text(), "listening on") {
				close(listening)
				signalled = true
			}
		}
		_ = cmd.Wait()
		if !signalled {
			close(listening)
		}
		close(c.done)
	}()
	t.Cleanup(func() { c.stop() })
	select {
	case <-listening:
	case <-time.After(5 * time.Second):
		t.Fatalf("tcpdump in %s not listening after 5s", ns.Name)
	}
	select {
	case <-c.done:
		t.Fatalf("tcpdump in %s exited at start: %s", ns.Name, cmd.ProcessState)
	default:
	}
	return c
}

// stop ends the capture and returns the packets it printed. It first
// gives tcpdump a moment to print what is still in flight: a test asserting
// that nothing was captured must not pass merely because it asked too soon.
func (c *capture) stop() []string {
	time.Sleep(200 * time.Millisecond)
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	var packets []string
	for _, l := range strings.Split(c.out.String(), "\n") {
		if strings.TrimSpace(l) != "" {
			packets = append(packets, l)
		}
	}
	return packets
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// sha256Counter hashes and counts what is written to it.
type sha256Counter struct {
	h hash.Hash
	n int64
}

func newSHA256Counter() *sha256Counter { return &sha256Counter{h: sha256.New()} }

func (s *sha256Counter) Write(p []byte) (int, error) {
	s.n += int64(len(p))
	return s.h.Write(p)
}

func (s *sha256Counter) Sum() (sum [32]byte) {
	s.h.Sum(sum[:0])
	return sum
}

// curlBlob downloads size bytes of lab.Blob with curl inside ns and checks
// length and SHA-256.
func curlBlob(t *testing.T, ns *lab.NS, url string, size int64, timeout time.Duration) {
	t.Helper()
	msg, err := fetchBlob(ns, url, size, timeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(msg)
}

// fetchBlob is curlBlob without the test: safe to call from goroutines.
// It returns a summary line on success.
func fetchBlob(ns *lab.NS, url string, size int64, timeout time.Duration) (string, error) {
	want := make(chan [32]byte, 1)
	go func() { want <- lab.BlobSHA256(size) }()

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	got := newSHA256Counter()
	stderr := &bytes.Buffer{}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns.Name,
		"curl", "--silent", "--show-error", "--fail", "--connect-timeout", "5", "--max-time", fmt.Sprint(int(timeout.Seconds())), "--output", "-", url)
	cmd.Stdout, cmd.Stderr = got, stderr
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)
	if err != nil {
		return "", fmt.Errorf("curl %s in %s: %v after %v, %d bytes received: %s", url, ns.Name, err, elapsed.Round(time.Millisecond), got.n, stderr)
	}
	if got.n != size {
		return "", fmt.Errorf("curl in %s received %d bytes, want %d", ns.Name, got.n, size)
	}
	if sum := got.Sum(); sum != <-want {
		return "", fmt.Errorf("SHA-256 of the %d bytes %s downloaded does not match the server's content", size, ns.Name)
	}
	return fmt.Sprintf("%s downloaded %d bytes in %v (%.0f Mbit/s), SHA-256 matches", ns.Name, size, elapsed.Round(time.Millisecond), float64(size)*8/elapsed.Seconds()/1e6), nil
}

// routerState captures what vpnmasq may change in the router namespace.
type routerState struct {
	Links, Rules, Routes, Nft, Sysctls string
}

// watchedSysctls are the settings a router might be tempted to change.
var watchedSysctls = []string{
	"net.ipv4.ip_forward",
	"net.ipv4.conf.all.rp_filter", "net.ipv4.conf.all.accept_local", "net.ipv4.conf.all.forwarding",
	"net.ipv4.conf.br-lan.rp_filter", "net.ipv4.conf.br-lan.accept_local",
	"net.ipv4.conf.rtr-wan.rp_filter", "net.ipv4.conf.rtr-wan.accept_local",
}

func snapshotRouter(t *testing.T, ns *lab.NS) routerState {
	t.Helper()
	get := func(args ...string) string {
		out, code := runIn(t, ns, 10*time.Second, args...)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", strings.Join(args, " "), code, out)
		}
		return out
	}
	return routerState{
		Links:   get("ip", "-o", "link", "show"),
		Rules:   get("ip", "rule", "show"),
		Routes:  get("ip", "route", "show", "table", "all"),
		Nft:     get("nft", "list", "ruleset"),
		Sysctls: get(append([]string{"sysctl"}, watchedSysctls...)...),
	}
}

// vpnmasqLeftovers lists what of vpnmasq's (default names) is present in
// the router namespace: the TUN link, rules at priority 5353, routes in
// table 5353, nftables tables named vpnmasq*.
func vpnmasqLeftovers(t *testing.T, ns *lab.NS) []string {
	t.Helper()
	var left []string
	lines := func(args ...string) []string {
		out, code := runIn(t, ns, 10*time.Second, args...)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", strings.Join(args, " "), code, out)
		}
		var ls []string
		for _, l := range strings.Split(out, "\n") {
			if l = strings.TrimSpace(l); l != "" {
				ls = append(ls, l)
			}
		}
		return ls
	}
	for _, l := range lines("ip", "-o", "link", "show") {
		if strings.Contains(l, " vpnmasq0:") || strings.Contains(l, " vpnmasq0@") {
			left = append(left, "link: "+l)
		}
	}
	for _, l := range lines("ip", "rule", "show") {
		if strings.HasPrefix(l, "5353:") || strings.Contains(l, "lookup 5353") {
			left = append(left, "rule: "+l)
		}
	}
	// A table that was never created (or was emptied) is an error to
	// `ip route show table`, with exit status 2.
	if out, code := runIn(t, ns, 10*time.Second, "ip", "route", "show", "table", "5353"); code == 0 {
		for _, l := range strings.Split(out, "\n") {
			if l = strings.TrimSpace(l); l != "" {
				left = append(left, "route: "+l)
			}
		}
	} else if !strings.Contains(out, "table does not exist") {
		t.Fatalf("ip route show table 5353: exit %d: %s", code, out)
	}
	for _, l := range lines("nft", "list", "tables") {
		if f := strings.Fields(l); len(f) == 3 && strings.HasPrefix(f[2], "vpnmasq") {
			left = append(left, "nft: "+l)
		}
	}
	return left
}

// kernelMasquerade is the kernel's own NAT for the lab, forwarding between
// br-lan and rtr-wan: the benchmark's baseline and the reference the IPsec
// harnesses are checked against.
const kernelMasquerade = `table ip kmasq {
	chain post {
		type nat hook postrouting priority srcnat;
		oifname "rtr-wan" ip saddr 192.168.77.0/24 masquerade
	}
}
`

// loadKernelNAT turns the router namespace into a kernel router: it enables
// forwarding and loads the nftables rules (they go with the namespace).
func loadKernelNAT(t *testing.T, l *lab.Lab, rules string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "kernel-nat.nft")
	if err := os.WriteFile(file, []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
		{"nft", "-f", file},
	} {
		if out, code := runIn(t, l.Router, 10*time.Second, args...); code != 0 {
			t.Fatalf("%s: exit %d: %s", strings.Join(args, " "), code, out)
		}
	}
}

package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// demoConfig runs the router on the lab's interfaces. JSON logs let the
// demo read "router ready" and the NAT table dump. No state file: a demo
// neither restores an earlier demo's NAT state nor overwrites that of a
// router installed on the host.
const demoConfig = `[lan]
interfaces = ["br-lan"]
prefixes = ["192.168.77.0/24"]

[wan]
interface = "rtr-wan"

[nat]
port_range = "20000-32767"

[state]
enabled = false

[log]
level = "info"
format = "json"
`

const demoAbout = `Builds a throwaway network-namespace lab and routes traffic from LAN
hosts through the real router: HTTP, UDP and ping from two hosts, then
VPN passthrough — IKE from UDP port 500 of two hosts to one gateway (both
leave from WAN port 500, told apart by SPI), raw ESP of three hosts to one
gateway (each gets only its own replies), two PPTP clients using the same
Call ID to one server (GRE both ways). The VPN peers are built in; no
IPsec or PPTP software is needed. It prints a line per check, the
router's VPN table (from its admin socket) and NAT table, and removes the
lab again. It exits 1 if any check fails. With --compare it then stops
the router, makes the router namespace masquerade with the kernel's
nftables (forwarding on, one masquerade rule, no conntrack helpers) and
prints the same VPN checks through it next to vpnmasq's results; the
kernel's failures do not make it exit 1. It needs root: it creates
network namespaces.`

// cmdDemo builds a namespace lab, runs the real router in it, sends HTTP,
// UDP and ping from two LAN hosts and VPN traffic (IKE, ESP, PPTP) from
// up to three through it, prints what happened, the VPN table and the NAT
// table, and removes everything again.
func cmdDemo(args []string) int {
	flags := newFlags("demo", "demo [--bytes N] [--compare]", demoAbout, os.Stderr)
	size := flags.Int64("bytes", 4<<20, "`N` bytes in each HTTP download")
	compare := flags.Bool("compare", false, "afterwards run the VPN checks through the kernel's nftables masquerade and print both results")
	if code, ok := parseFlags(flags, args); !ok {
		return code
	}
	if *size < 0 || *size > lab.MaxBlob {
		fmt.Fprintf(os.Stderr, "vpnmasq demo: -bytes must be in 0..%d\n", int64(lab.MaxBlob))
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "vpnmasq demo: must run as root: it creates network namespaces and runs the router in one")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	d := &demo{out: os.Stdout, size: *size, compare: *compare}
	start := time.Now()
	err := d.run(ctx)
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "vpnmasq demo: interrupted")
		return 1
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "vpnmasq demo: FAILED: %v\n", err)
		return 1
	}
	fmt.Fprintf(d.out, "demo: everything worked in %v\n", time.Since(start).Round(100*time.Millisecond))
	return 0
}

type demo struct {
	out     io.Writer
	size    int64
	compare bool // --compare: the VPN checks again through the kernel's masquerade

	vpnResults []vpnResult // vpnmasq's, for the comparison
}

func (d *demo) printf(format string, args ...any) { fmt.Fprintf(d.out, format, args...) }

func (d *demo) run(ctx context.Context) (err error) {
	if deleted, cerr := lab.CleanupStale(); cerr == nil && len(deleted) > 0 {
		d.printf("removed namespaces of an earlier lab whose process died: %s\n", strings.Join(deleted, " "))
	}
	l, err := lab.New(lab.Options{})
	if err != nil {
		return err
	}
	var hosts []*lab.NS // added to the lab with AddLANHost
	defer func() {
		if cerr := d.removeLab(l, hosts); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	// The third LAN host (ESP only) joins before the router starts: a
	// port added to the bridge later can change the bridge's MAC address
	// under the other hosts' ARP entries.
	lan3, err := l.AddLANHost("lan3", demoLAN3Addr)
	if err != nil {
		return err
	}
	hosts = append(hosts, lan3)
	d.printf("lab %s: namespaces %s-{lan1,lan2,lan3,rtr,wan}\n", l.Tag, l.Tag)
	d.printf("  lan1 %s ─┐\n", lab.LAN1Addr)
	d.printf("  lan2 %s ─┼─ %s %s [rtr: vpnmasq] %s %s ── %s wan\n",
		lab.LAN2Addr, lab.RouterLANIf, lab.RouterLANAddr, lab.RouterWANIf, lab.RouterWANAddr, lab.WANAddr)
	d.printf("  lan3 %s ─┘\n\n", demoLAN3Addr)

	dir, err := os.MkdirTemp("", "vpnmasq-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfgPath := filepath.Join(dir, "vpnmasq.toml")
	// The admin socket in the demo's own directory: the demo reads the VPN
	// table from it, and a router already running on this host keeps its own.
	socket := filepath.Join(dir, "admin.sock")
	cfg := demoConfig + fmt.Sprintf("\n[services]\nadmin_socket = %q\n", socket)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}

	rt, err := startDemoRouter(l, cfgPath, d.out)
	if err != nil {
		return err
	}
	defer func() {
		if serr := rt.stop(); serr != nil {
			err = errors.Join(err, serr)
		}
	}()
	d.printf("router ready in %v: tun %s, wan %s %s, lan %s\n\n", rt.readyAfter.Round(time.Millisecond),
		rt.ready["tun"], rt.ready["wan"], rt.ready["wan_addr"], rt.ready["lan"])

	if err := ctx.Err(); err != nil {
		return err
	}
	failures := d.traffic(ctx, l)
	if err := ctx.Err(); err != nil {
		return err
	}
	peers, vpnFailures := d.vpn(ctx, l, lan3, socket)
	failures = append(failures, vpnFailures...)
	if err := ctx.Err(); err == nil {
		if err := d.natTable(rt); err != nil {
			failures = append(failures, err)
		}
	}
	if err := peers.close(); err != nil {
		failures = append(failures, fmt.Errorf("closing the VPN peers: %w", err))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.compare {
		if err := rt.stop(); err != nil {
			return errors.Join(append(failures, err)...)
		}
		if err := d.compareKernel(ctx, l, lan3); err != nil {
			failures = append(failures, fmt.Errorf("the comparison with the kernel's masquerade: %w", err))
		}
	}
	return errors.Join(failures...)
}

// traffic runs every check from both LAN hosts and prints one line each.
func (d *demo) traffic(ctx context.Context, l *lab.Lab) []error {
	web, err := lab.ServeHTTP(l.WAN, "198.18.0.2:80", "wan")
	if err != nil {
		return []error{err}
	}
	defer web.Close()
	echo, err := lab.ServeUDPEcho(l.WAN, "198.18.0.2:7")
	if err != nil {
		return []error{err}
	}
	defer echo.Close()
	want := lab.BlobSHA256(d.size)

	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WHAT\tFROM\tTO\tRESULT\tBYTES\tRTT\tNOTE")
	var failures []error
	report := func(what, from, to string, err error, bytes int64, rtt time.Duration, note string) {
		result := "ok"
		if err != nil {
			result = "FAIL"
			note = err.Error()
			failures = append(failures, fmt.Errorf("%s from %s to %s: %w", what, from, to, err))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%v\t%s\n", what, from, to, result, bytes, rtt.Round(10*time.Microsecond), note)
	}
	hosts := []struct {
		name string
		ns   *lab.NS
		addr netip.Addr
	}{{"lan1", l.LAN1, lab.LAN1Addr}, {"lan2", l.LAN2, lab.LAN2Addr}}

	for _, h := range hosts {
		if ctx.Err() != nil {
			break
		}
		from := fmt.Sprintf("%s %s", h.name, h.addr)

		seen := len(web.Peers())
		n, rtt, elapsed, err := httpGet(ctx, h.ns, fmt.Sprintf("http://198.18.0.2/blob?bytes=%d", d.size), want)
		note := ""
		if err == nil {
			note = fmt.Sprintf("sha256 ok, %.0f Mbit/s, seen as %s", float64(n)*8/elapsed.Seconds()/1e6, lastPeer(web.Peers(), seen))
		}
		report("http", from, "198.18.0.2:80", err, n, rtt, note)

		seen = len(echo.Peers())
		payload := []byte("hello from " + h.name)
		rtt, err = lab.UDPRoundTrip(h.ns, "0.0.0.0:40000", "198.18.0.2:7", payload, 3, 2*time.Second)
		note = ""
		if err == nil {
			note = fmt.Sprintf("source port 40000, seen as %s", lastPeer(echo.Peers(), seen))
		}
		report("udp", from+":40000", "198.18.0.2:7", err, int64(len(payload)), rtt, note)

		res, err := lab.Ping(h.ns, lab.WANAddr, 3, 2*time.Second)
		if err == nil && res.Received < res.Sent {
			err = fmt.Errorf("%d of %d echo requests answered", res.Received, res.Sent)
		}
		note = fmt.Sprintf("%d/%d replies", res.Received, res.Sent)
		report("ping", from, "198.18.0.2", err, int64(res.Received), average(res.RTTs), note)
	}
	tw.Flush()
	d.printf("\n")
	return failures
}

// httpGet downloads url from inside ns and checks the body's SHA-256. It
// returns the bytes read, the time to the response headers and the total.
func httpGet(ctx context.Context, ns *lab.NS, url string, want [32]byte) (int64, time.Duration, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, 0, err
	}
	start := time.Now()
	resp, err := ns.HTTPClient(0).Do(req)
	if err != nil {
		return 0, 0, 0, err
	}
	defer resp.Body.Close()
	rtt := time.Since(start)
	if resp.StatusCode != http.StatusOK {
		return 0, rtt, 0, fmt.Errorf("HTTP status %s", resp.Status)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	elapsed := time.Since(start)
	if err != nil {
		return n, rtt, elapsed, err
	}
	if [32]byte(h.Sum(nil)) != want {
		return n, rtt, elapsed, errors.New("SHA-256 of the body does not match the server's content")
	}
	return n, rtt, elapsed, nil
}

func lastPeer(peers []netip.AddrPort, before int) string {
	if len(peers) <= before {
		return "?"
	}
	return peers[len(peers)-1].String()
}

func average(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

// natTable asks the router for its NAT table (SIGUSR1) and prints it.
func (d *demo) natTable(rt *demoRouter) error {
	mappings, err := rt.dumpNAT()
	if err != nil {
		return err
	}
	d.printf("NAT table (SIGUSR1): %d mappings\n", len(mappings))
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTO\tLAN\tWAN\tREMOTE\tIDLE")
	for _, m := range mappings {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m["proto"], m["lan"], m["wan"], m["remote"], m["idle"])
	}
	tw.Flush()
	d.printf("\n")
	if len(mappings) == 0 {
		return errors.New("the NAT table dump listed no mappings after the traffic")
	}
	return nil
}

// removeLab deletes the hosts added to the lab and the lab, and confirms
// their namespaces are gone.
func (d *demo) removeLab(l *lab.Lab, hosts []*lab.NS) error {
	var errs []error
	for _, h := range hosts {
		errs = append(errs, l.RemoveHost(h))
	}
	errs = append(errs, l.Close())
	if err := errors.Join(errs...); err != nil {
		return err
	}
	all := append(l.Namespaces(), hosts...)
	var left []string
	for _, n := range all {
		if n.Exists() {
			left = append(left, n.Name)
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("namespaces still present after removing the lab: %s", strings.Join(left, " "))
	}
	d.printf("lab %s removed: its %d namespaces and all their interfaces are gone\n", l.Tag, len(all))
	return nil
}

// demoRouter is the `vpnmasq run` child process in the router namespace.
type demoRouter struct {
	out        io.Writer
	cmd        *exec.Cmd
	exited     chan struct{}
	readyAfter time.Duration
	ready      map[string]string
	stopped    bool // stop was called

	mu      sync.Mutex          // guards lines and changed: the log reader appends while waiters read
	lines   []map[string]string // decoded JSON log lines
	changed chan struct{}
}

// startDemoRouter starts the router and waits up to 15 s for "router
// ready". Warnings and errors it logs are echoed to out as they come.
func startDemoRouter(l *lab.Lab, cfgPath string, out io.Writer) (*demoRouter, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "run", "--config", cfgPath)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = cmd.Stderr
	// Own process group: Ctrl-C reaches only the demo, which then stops
	// the router in order. Pdeathsig: a demo killed outright still takes
	// the router down with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	r := &demoRouter{out: out, cmd: cmd, exited: make(chan struct{}), changed: make(chan struct{})}
	start := time.Now()
	if err := l.Router.Start(cmd); err != nil {
		return nil, fmt.Errorf("starting the router: %w", err)
	}
	fmt.Fprintf(out, "router started in %s: %s run --config %s (pid %d)\n", l.Router.Name, exe, cfgPath, cmd.Process.Pid)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			r.add(sc.Text(), out)
		}
		_ = cmd.Wait()
		close(r.exited)
	}()
	ready, ok := r.waitFor("router ready", 0, 15*time.Second)
	if !ok {
		_ = cmd.Process.Kill()
		<-r.exited
		return nil, fmt.Errorf("router not ready within 15s (%s)", cmd.ProcessState)
	}
	r.readyAfter = time.Since(start)
	r.ready = ready
	return r, nil
}

func (r *demoRouter) add(raw string, out io.Writer) {
	var decoded map[string]any
	if json.Unmarshal([]byte(raw), &decoded) != nil {
		fmt.Fprintf(out, "router: %s\n", raw)
		return
	}
	fields := map[string]string{}
	for k, v := range decoded {
		fields[k] = logValue(v)
	}
	switch fields["level"] {
	case "warn", "error", "fatal", "panic":
		fmt.Fprintf(out, "router %s: %s\n", fields["level"], raw)
	}
	r.mu.Lock()
	r.lines = append(r.lines, fields)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// logValue renders a decoded JSON log field as text: strings as they are,
// lists joined by commas, anything else as JSON.
func logValue(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = logValue(e)
		}
		return strings.Join(parts, ",")
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// waitFor returns the first line at index from or later with the message.
func (r *demoRouter) waitFor(message string, from int, timeout time.Duration) (map[string]string, bool) {
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		lines, changed := r.lines[min(from, len(r.lines)):], r.changed
		r.mu.Unlock()
		for _, l := range lines {
			if l["message"] == message {
				return l, true
			}
		}
		from += len(lines)
		select {
		case <-changed:
		case <-r.exited:
			r.mu.Lock()
			lines := r.lines[min(from, len(r.lines)):]
			r.mu.Unlock()
			for _, l := range lines {
				if l["message"] == message {
					return l, true
				}
			}
			return nil, false
		case <-deadline:
			return nil, false
		}
	}
}

func (r *demoRouter) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.lines)
}

// dumpNAT sends SIGUSR1 and returns the "nat mapping" lines of the dump.
func (r *demoRouter) dumpNAT() ([]map[string]string, error) {
	from := r.count()
	if err := r.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return nil, err
	}
	if _, ok := r.waitFor("nat table", from, 5*time.Second); !ok {
		return nil, errors.New("the router logged no \"nat table\" within 5s of SIGUSR1")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]string
	for _, l := range r.lines[from:] {
		if l["message"] == "nat table" {
			break
		}
		if l["message"] == "nat mapping" {
			out = append(out, l)
		}
	}
	return out, nil
}

// stop sends SIGTERM and requires a clean exit within 10 s. Only the
// first call stops the router and reports; later ones return nil.
func (r *demoRouter) stop() error {
	if r.stopped {
		return nil
	}
	r.stopped = true
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.exited
		return errors.New("router still running 10s after SIGTERM; killed")
	}
	if _, ok := r.waitFor("router stopped", 0, 0); !ok {
		return fmt.Errorf("router exited (%s) without logging \"router stopped\"", r.cmd.ProcessState)
	}
	if code := r.cmd.ProcessState.ExitCode(); code != 0 {
		return fmt.Errorf("router exited with status %d after SIGTERM", code)
	}
	fmt.Fprintln(r.out, "router stopped cleanly (SIGTERM, exit status 0)")
	return nil
}

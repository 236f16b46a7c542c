package integration

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// chromiumInstallHint installs what the Chromium helpers need: the browser,
// and a font, without which a screenshot shows no text (Chromium does not
// depend on any font package).
const chromiumInstallHint = "apt-get install -y --no-install-recommends chromium fonts-dejavu-core"

// chromiumFont is a file of fonts-dejavu-core.
const chromiumFont = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"

// chromiumBinaries are tried in order. Debian's /usr/bin/chromium is a shell
// wrapper that adds flags from /etc/chromium.d (remote extensions, GPU
// rasterisation) and mis-parses findmnt when /dev/shm is mounted twice; the
// browser itself needs none of it.
var chromiumBinaries = []string{"/usr/lib/chromium/chromium", "chromium"}

// chromiumVirtualTimeBudget lets timers and scripts of a page run for this
// much virtual time before the DOM is dumped or the screenshot taken.
// Virtual time stands still while a request is in flight, so slow loads
// still complete. It must stay below the meta-refresh interval of any page
// under test: a refresh within the budget starts a new navigation, the
// budget starts over, and Chromium never returns.
const chromiumVirtualTimeBudget = 1000 * time.Millisecond

// chromiumFlags make Chromium run headless, as root, inside a lab namespace,
// touching nothing outside its private directory. With the resolver rules
// of chromiumResolverRules it sends nothing but the page's own requests
// (TestIntegrationHelpersChromiumAndDNS captures to make sure).
var chromiumFlags = []string{
	"--headless",    // no display server
	"--no-sandbox",  // Chromium refuses to run as root with its sandbox
	"--disable-gpu", // no GPU: software rendering only
	// Shared memory in TMPDIR (the private directory) rather than
	// /dev/shm, which containers often limit to 64 MiB.
	"--disable-dev-shm-usage",
	"--no-first-run",             // no first-run tasks (import, welcome page)
	"--no-default-browser-check", // nor the default-browser check
	"--password-store=basic",     // no keyring over D-Bus
	"--no-proxy-server",          // a proxy from the environment must not divert lab traffic
	// Fewer background services at start: less work, less to block. They
	// do not stop everything (update checks and account lookups remain),
	// hence the resolver rules.
	"--disable-background-networking",
	"--disable-component-update",
	"--disable-sync",
	"--disable-extensions",
	"--disable-default-apps",
	"--mute-audio",
	"--hide-scrollbars", // screenshots show the page alone
	// The secure-time query (clients2.google.com) that Chromium sends at
	// start even with background networking off.
	"--disable-features=NetworkTimeServiceQuerying",
	fmt.Sprintf("--virtual-time-budget=%d", chromiumVirtualTimeBudget.Milliseconds()),
}

// requireChromium fails the test unless Chromium and a font are installed,
// and returns the browser binary.
func requireChromium(t *testing.T) string {
	t.Helper()
	bin := ""
	for _, b := range chromiumBinaries {
		if p, err := exec.LookPath(b); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		t.Fatalf("Chromium is required (%s)", chromiumInstallHint)
	}
	if _, err := os.Stat(chromiumFont); err != nil {
		t.Fatalf("a font is required, or screenshots show no text (%s): %v", chromiumInstallHint, err)
	}
	return bin
}

// chromiumDumpDOM loads pageURL in headless Chromium inside ns and returns the
// DOM as rendered after the virtual-time budget (scripts run). The test
// fails if Chromium does not finish within timeout.
func chromiumDumpDOM(t *testing.T, ns *lab.NS, pageURL string, timeout time.Duration) string {
	t.Helper()
	bin := requireChromium(t)
	run, err := runChromium(ns, bin, chromiumDir(t), timeout, pageURL, "--dump-dom")
	if err != nil {
		t.Fatalf("chromium --dump-dom %s in %s: %v", pageURL, ns.Name, err)
	}
	t.Logf("chromium --dump-dom %s in %s: %d bytes in %v", pageURL, ns.Name, len(run.stdout), run.elapsed.Round(time.Millisecond))
	return string(run.stdout)
}

// chromiumScreenshot loads pageURL in headless Chromium inside ns and writes a
// 1280x1600 PNG screenshot of it to path. The test fails if Chromium does
// not finish within timeout or path is not a PNG afterwards.
func chromiumScreenshot(t *testing.T, ns *lab.NS, pageURL, path string, timeout time.Duration) {
	t.Helper()
	bin := requireChromium(t)
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	// A file from an earlier run must not pass for this one's.
	if err := os.Remove(abs); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	run, err := runChromium(ns, bin, chromiumDir(t), timeout, pageURL, "--screenshot="+abs, "--window-size=1280,1600")
	if err != nil {
		t.Fatalf("chromium --screenshot %s in %s: %v", pageURL, ns.Name, err)
	}
	data, err := os.ReadFile(abs)
	if err != nil {
		t.Fatalf("chromium --screenshot %s in %s exited 0 but wrote no screenshot: %v\n%s", pageURL, ns.Name, err, run.stderrTail())
	}
	if len(data) == 0 || !bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("chromium --screenshot %s in %s wrote %d bytes that are not a PNG", pageURL, ns.Name, len(data))
	}
	t.Logf("chromium --screenshot %s in %s: %s (%d bytes) in %v", pageURL, ns.Name, abs, len(data), run.elapsed.Round(time.Millisecond))
}

// chromiumDir makes a private directory for one Chromium run, removed when
// the test ends. It is not under t.TempDir: Chromium puts a unix socket in
// TMPDIR, and a path under a directory named after a long test exceeds the
// 108 bytes a socket path may have.
func chromiumDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing Chromium's directory: %v", err)
		}
	})
	return dir
}

// chromiumRun is the outcome of one Chromium process that ran to its end.
type chromiumRun struct {
	stdout  []byte
	stderr  []byte
	elapsed time.Duration
}

// stderrTail is the end of Chromium's stderr without its complaints about
// the missing D-Bus, which are expected in a lab and drown the rest.
func (r chromiumRun) stderrTail() string {
	var keep []string
	for line := range strings.SplitSeq(string(r.stderr), "\n") {
		if line != "" && !strings.Contains(line, ":ERROR:dbus/") {
			keep = append(keep, line)
		}
	}
	if len(keep) > 40 {
		keep = keep[len(keep)-40:]
	}
	return "chromium stderr (D-Bus errors left out):\n" + strings.Join(keep, "\n")
}

// runChromium loads pageURL in Chromium, with chromiumFlags and args, inside
// ns, with its profile, HOME and temporary files under dir, and waits for it
// at most timeout. Only the page's own host name resolves (see
// chromiumResolverRules).
//
// Chromium forks zygotes, renderers, a GPU and a network process: it runs
// as the leader of its own process group, and that group is killed once the
// browser has exited or the timeout has passed. Its crash handler detaches
// into a session of its own; it is recognised by dir in its command line
// and must be gone too before runChromium returns. An error means a
// timeout, an exit status other than 0, a page that failed to load
// (Chromium still exits 0 then) or a process left behind.
func runChromium(ns *lab.NS, bin, dir string, timeout time.Duration, pageURL string, args ...string) (chromiumRun, error) {
	var run chromiumRun
	rules, err := chromiumResolverRules(pageURL)
	if err != nil {
		return run, err
	}
	home, profile, tmp := filepath.Join(dir, "home"), filepath.Join(dir, "profile"), filepath.Join(dir, "tmp")
	for _, d := range []string{home, profile, tmp} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return run, err
		}
	}
	// Files, not pipes: the browser's helpers inherit stdout and stderr,
	// and a pipe would stay open for as long as the last of them lives.
	stdoutPath, stderrPath := filepath.Join(dir, "stdout"), filepath.Join(dir, "stderr")
	stdout, err := os.Create(stdoutPath)
	if err != nil {
		return run, err
	}
	defer stdout.Close()
	stderr, err := os.Create(stderrPath)
	if err != nil {
		return run, err
	}
	defer stderr.Close()

	argv := append([]string(nil), chromiumFlags...)
	argv = append(argv, "--user-data-dir="+profile, "--host-resolver-rules="+rules)
	argv = append(argv, args...)
	cmd := exec.Command(bin, append(argv, pageURL)...)
	cmd.Dir = dir
	cmd.Env = chromiumEnv(home, tmp)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// Its own process group, so that all its helpers can be killed at once;
	// and a test binary that dies takes the browser (and thereby its
	// helpers, which exit with it) along.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := ns.Start(cmd); err != nil {
		return run, fmt.Errorf("starting %s: %w", bin, err)
	}
	pgid := cmd.Process.Pid

	// Waiting without reaping keeps the leader a zombie, so the group's ID
	// cannot be reused while the group is killed below.
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		var info unix.Siginfo
		for {
			err := unix.Waitid(unix.P_PID, pgid, &info, unix.WEXITED|unix.WNOWAIT, nil)
			if !errors.Is(err, unix.EINTR) {
				return
			}
		}
	}()
	timedOut := false
	timer := time.NewTimer(timeout)
	select {
	case <-exited:
		timer.Stop()
	case <-timer.C:
		timedOut = true
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			return run, fmt.Errorf("timed out after %v, and the browser (PID %d) still runs 10s after SIGKILL", timeout, pgid)
		}
	}
	run.elapsed = time.Since(start)
	// Helpers still running after the browser has gone have nothing left
	// to do.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	waitErr := cmd.Wait()
	leftErr := killChromiumLeftovers(pgid, dir)

	run.stdout, _ = os.ReadFile(stdoutPath)
	run.stderr, _ = os.ReadFile(stderrPath)
	var exitErr *exec.ExitError
	switch {
	case timedOut:
		err = fmt.Errorf("timed out after %v; killed\n%s", timeout, run.stderrTail())
	case errors.As(waitErr, &exitErr):
		err = fmt.Errorf("exit status %s after %v\n%s", cmd.ProcessState, run.elapsed.Round(time.Millisecond), run.stderrTail())
	case waitErr != nil:
		err = waitErr
	default:
		if m := chromiumLoadFailed.FindSubmatch(run.stderr); m != nil {
			err = fmt.Errorf("page load failed: %s\n%s", m[1], run.stderrTail())
		}
	}
	return run, errors.Join(err, leftErr)
}

// chromiumLoadFailed is what Chromium logs when the page did not load
// (connection refused, name not resolved, ...); it still exits 0 then, with
// an empty DOM and no screenshot.
var chromiumLoadFailed = regexp.MustCompile(`Page load failed: (\S+)`)

// chromiumResolverRules makes every host name but the page's own fail
// without a DNS query. Chromium's own services (update checks, account
// lookups) then cannot send anything, whichever of them a new version adds,
// and a page under test that needs another host fails visibly. IP
// addresses go through the rules too, so the page's host is excluded even
// when it is an address.
func chromiumResolverRules(pageURL string) (string, error) {
	u, err := url.Parse(pageURL)
	if err != nil {
		return "", fmt.Errorf("page URL %q: %w", pageURL, err)
	}
	rules := "MAP * ~NOTFOUND"
	if h := u.Hostname(); h != "" {
		if strings.ContainsAny(h, ", ") {
			return "", fmt.Errorf("page URL %q: host %q not usable in resolver rules", pageURL, h)
		}
		rules += ", EXCLUDE " + h
	}
	return rules, nil
}

// chromiumEnv is the environment for Chromium: this process's, with HOME,
// the XDG directories and TMPDIR moved into the private directory, so that
// nothing is written elsewhere (crash reports, caches, shared memory files).
func chromiumEnv(home, tmp string) []string {
	set := map[string]string{
		"HOME":            home,
		"XDG_CONFIG_HOME": filepath.Join(home, ".config"),
		"XDG_CACHE_HOME":  filepath.Join(home, ".cache"),
		"XDG_DATA_HOME":   filepath.Join(home, ".local", "share"),
		"TMPDIR":          tmp,
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if _, replaced := set[k]; !replaced {
			env = append(env, kv)
		}
	}
	for k, v := range set {
		env = append(env, k+"="+v)
	}
	return env
}

// killChromiumLeftovers waits up to 5 s for the processes of one Chromium
// run to end (the crash handler exits by itself shortly after the browser),
// then kills those that remain, and reports any still alive 2 s later.
func killChromiumLeftovers(pgid int, dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if len(chromiumLeftovers(pgid, dir)) == 0 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, pid := range chromiumLeftovers(pgid, dir) {
		// A pidfd pins the process: if the PID is reused after the check,
		// the signal goes nowhere rather than to a stranger.
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue // gone meanwhile
		}
		if isChromiumProcess(pid, pgid, dir) {
			_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		}
		unix.Close(fd)
	}
	deadline = time.Now().Add(2 * time.Second)
	for {
		left := chromiumLeftovers(pgid, dir)
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("chromium processes %v still alive after SIGKILL", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// chromiumLeftovers lists the live processes of one Chromium run.
func chromiumLeftovers(pgid int, dir string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if isChromiumProcess(pid, pgid, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// isChromiumProcess reports whether pid is alive (not a zombie) and belongs
// to the Chromium run with process group pgid and private directory dir.
func isChromiumProcess(pid, pgid int, dir string) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return false
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 3 || fields[0] == "Z" || fields[0] == "X" {
		return false
	}
	if pg, err := strconv.Atoi(fields[2]); err == nil && pg == pgid {
		return true
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(cmdline, []byte(dir+"/"))
}

// pngInkRatio decodes a PNG and returns its size and the share of its
// pixels that are dark (text, borders) on a light page.
func pngInkRatio(path string) (image.Point, float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return image.Point{}, 0, err
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		return image.Point{}, 0, fmt.Errorf("%s: %w", path, err)
	}
	b := img.Bounds()
	dark := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if (r+g+bl)/3 < 0x8000 {
				dark++
			}
		}
	}
	return b.Size(), float64(dark) / float64(b.Dx()*b.Dy()), nil
}

// helperTestPage is what the WAN host serves to prove the Chromium helpers:
// a table to find, a meta refresh slower than the virtual-time budget (as on
// a status page), and a timer whose effect shows that scripts ran.
const helperTestPage = `<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>lab page</title>
<style>body{font-family:sans-serif} td,th{border:1px solid #444;padding:4px 8px}</style></head>
<body><h1>Lab page from 198.18.0.2</h1>
<table id="t1"><thead><tr><th>host</th><th>address</th></tr></thead>
<tbody><tr><td>wan</td><td>198.18.0.2</td></tr><tr><td>lan1</td><td>192.168.77.10</td></tr></tbody></table>
<p id="js">script has not run</p>
<script>setTimeout(function(){document.getElementById('js').textContent='script ran after 500 ms'},500)</script>
</body></html>
`

// The helpers the local-services tests build on: headless Chromium in a LAN
// host's namespace, and a DNS server in the WAN namespace. The router
// namespace is a plain kernel router here; vpnmasq is not involved.
func TestIntegrationHelpersChromiumAndDNS(t *testing.T) {
	bin := requireChromium(t)
	requireDig(t)
	l := newLab(t, lab.Options{})
	if out, code := runIn(t, l.Router, 10*time.Second, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"); code != 0 {
		t.Fatalf("enabling forwarding in the router namespace: exit %d: %s", code, out)
	}
	// Without NAT the WAN host needs a route back to the LAN, which the
	// standard lab does not give it.
	if err := l.WAN.AddRoute(lab.LANPrefix, lab.RouterWANAddr); err != nil {
		t.Fatal(err)
	}

	var pageHits atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		pageHits.Add(1)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = io.WriteString(w, helperTestPage)
	})
	// A page that never arrives: the handler holds the request until the
	// client or the server closes the connection.
	mux.HandleFunc("/never", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	ln, err := l.WAN.Listen("tcp4", "198.18.0.2:80")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		select {
		case <-served:
		case <-time.After(5 * time.Second):
			t.Error("the lab page's HTTP server still serving 5s after Close")
		}
	})

	t.Run("chromium in lan1 renders the WAN host's page with its scripts run, fetching it once and nothing else", func(t *testing.T) {
		// Everything lan1 sends but ARP and the page's own connection.
		others := startCapture(t, l.LAN1, lab.HostIf, "not arp and not (tcp and host 198.18.0.2 and port 80)")
		before := pageHits.Load()
		dom := chromiumDumpDOM(t, l.LAN1, "http://198.18.0.2/", time.Minute)
		for _, want := range []string{`<table id="t1">`, "<td>lan1</td><td>192.168.77.10</td>", "script ran after 500 ms"} {
			if !strings.Contains(dom, want) {
				t.Errorf("rendered DOM lacks %s:\n%s", want, dom)
			}
		}
		if n := pageHits.Load() - before; n != 1 {
			t.Errorf("the page was fetched %d times, want once (a meta refresh within the virtual-time budget would reload it)", n)
		}
		if pkts := others.stop(); len(pkts) > 0 {
			t.Errorf("chromium sent other traffic from lan1:\n%s", strings.Join(pkts, "\n"))
		}
	})

	t.Run("a screenshot of the page is a 1280x1600 PNG with text on it", func(t *testing.T) {
		path := filepath.Join(t.ArtifactDir(), "lab-page.png")
		chromiumScreenshot(t, l.LAN1, "http://198.18.0.2/", path, time.Minute)
		size, ink, err := pngInkRatio(path)
		if err != nil {
			t.Fatal(err)
		}
		if size != image.Pt(1280, 1600) {
			t.Errorf("screenshot is %v, want 1280x1600", size)
		}
		// A heading, a table with borders and a paragraph: some ink, but
		// far from all (an all-dark image is a rendering failure).
		if ink < 0.001 || ink > 0.5 {
			t.Errorf("%.4f%% of the screenshot is dark: no text rendered?", ink*100)
		}
	})

	failures := []struct {
		name    string
		url     string
		timeout time.Duration
		wantErr string
	}{
		{"a page that never arrives is cut off at the timeout, leaving no Chromium process behind",
			"http://198.18.0.2/never", 3 * time.Second, "timed out after 3s"},
		{"a page that does not load is an error naming Chromium's reason, leaving no Chromium process behind",
			"http://198.18.0.2:81/", 30 * time.Second, "net::ERR_CONNECTION_REFUSED"},
	}
	for _, f := range failures {
		t.Run(f.name, func(t *testing.T) {
			dir := chromiumDir(t)
			start := time.Now()
			_, err := runChromium(l.LAN1, bin, dir, f.timeout, f.url, "--dump-dom")
			elapsed := time.Since(start)
			if err == nil || !strings.Contains(err.Error(), f.wantErr) {
				t.Fatalf("loading %s returned %v, want an error with %q", f.url, err, f.wantErr)
			}
			if strings.Contains(err.Error(), "still alive") || strings.Contains(err.Error(), "still runs") {
				t.Errorf("processes survived: %v", err)
			}
			if left := chromiumLeftovers(-1, dir); len(left) > 0 {
				t.Errorf("processes naming %s still alive: %v", dir, left)
			}
			// At most the timeout plus the wait for the crash handler to
			// follow the browser.
			if elapsed > f.timeout+5*time.Second {
				t.Errorf("runChromium returned %v after its %v timeout", elapsed-f.timeout, f.timeout)
			}
			t.Logf("failed as expected after %v: %s", elapsed.Round(time.Millisecond), strings.SplitN(err.Error(), "\n", 2)[0])
		})
	}

	records := map[string]string{
		"wan.lab.test.":   "198.18.0.2",
		"Status.Lab.Test": "192.0.2.53", // no trailing dot, mixed case
	}
	names := serveDNS(t, l.WAN, lab.WANAddr, records)
	queries := []struct {
		name      string
		qname     string
		qtype     string
		tcp       bool
		wantRcode string
		wantA     string // "": no answer, an SOA with minimum 30 in the authority section
	}{
		{"an A query over UDP is answered with the record, TTL 60", "wan.lab.test", "A", false, "NOERROR", "198.18.0.2"},
		{"an A query over TCP is answered with the record, TTL 60", "status.lab.test", "A", true, "NOERROR", "192.0.2.53"},
		{"names match regardless of case", "WAN.LAB.TEST", "A", false, "NOERROR", "198.18.0.2"},
		{"an unknown name over UDP is NXDOMAIN with an SOA of minimum 30", "nowhere.lab.test", "A", false, "NXDOMAIN", ""},
		{"an unknown name over TCP is NXDOMAIN with an SOA of minimum 30", "nowhere.lab.test", "A", true, "NXDOMAIN", ""},
		{"another type for a known name is an empty answer with the SOA", "wan.lab.test", "AAAA", false, "NOERROR", ""},
	}
	wantTransport := map[string]int{}
	wantName := map[string]int{}
	for _, q := range queries {
		t.Run("dig from lan1: "+q.name, func(t *testing.T) {
			res := digIn(t, l.LAN1, lab.WANAddr, q.qname, q.qtype, q.tcp)
			if res.Status != q.wantRcode {
				t.Errorf("status %s, want %s:\n%s", res.Status, q.wantRcode, res.Output)
			}
			if q.wantA != "" {
				if len(res.Answer) != 1 {
					t.Fatalf("%d answers, want 1:\n%s", len(res.Answer), res.Output)
				}
				a, ok := res.Answer[0].(*dns.A)
				if !ok || a.A.String() != q.wantA || a.Hdr.Ttl != testDNSAnswerTTL {
					t.Errorf("answer %v, want %s A %s with TTL %d", res.Answer[0], q.qname, q.wantA, testDNSAnswerTTL)
				}
				return
			}
			if len(res.Answer) != 0 {
				t.Errorf("answers %v, want none", res.Answer)
			}
			if len(res.Authority) != 1 {
				t.Fatalf("authority section %v, want one SOA:\n%s", res.Authority, res.Output)
			}
			soa, ok := res.Authority[0].(*dns.SOA)
			if !ok || soa.Minttl != testDNSNegativeTTL || soa.Hdr.Ttl != testDNSNegativeTTL {
				t.Errorf("authority %v, want an SOA with TTL and minimum %d", res.Authority[0], testDNSNegativeTTL)
			}
		})
		if q.tcp {
			wantTransport["tcp"]++
		} else {
			wantTransport["udp"]++
		}
		wantName[q.qname]++
	}

	t.Run("the DNS server counts each query by transport and by name", func(t *testing.T) {
		for _, transport := range []string{"udp", "tcp"} {
			if got := names.Queries(transport); got != wantTransport[transport] {
				t.Errorf("Queries(%q) = %d, want %d", transport, got, wantTransport[transport])
			}
		}
		counts := []struct {
			name string
			want int
		}{
			{"wan.lab.test.", wantName["wan.lab.test"] + wantName["WAN.LAB.TEST"]},
			{"Status.lab.test", wantName["status.lab.test"]},
			{"nowhere.lab.test", wantName["nowhere.lab.test"]},
			{"never.asked.test", 0},
		}
		for _, c := range counts {
			if got := names.QueriesFor(c.name); got != c.want {
				t.Errorf("QueriesFor(%q) = %d, want %d", c.name, got, c.want)
			}
		}
	})
}

// Only the page's own host resolves in Chromium; a URL that cannot be
// turned into resolver rules is an error.
func TestChromiumResolverRulesLetOnlyThePageHostResolve(t *testing.T) {
	cases := []struct {
		name, url, want, wantErr string
	}{
		{"an address URL excludes that address", "http://192.0.2.53/", "MAP * ~NOTFOUND, EXCLUDE 192.0.2.53", ""},
		{"a port does not end up in the rule", "http://192.0.2.53:8080/api/v1/status", "MAP * ~NOTFOUND, EXCLUDE 192.0.2.53", ""},
		{"a host name is excluded as it is", "http://status.lab.test/", "MAP * ~NOTFOUND, EXCLUDE status.lab.test", ""},
		{"a URL without a host resolves nothing", "about:blank", "MAP * ~NOTFOUND", ""},
		{"an unparsable URL is an error", "http://[::1", "", "page URL"},
		{"a host with a comma is an error", "http://a,b/", "", "not usable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := chromiumResolverRules(c.url)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Errorf("chromiumResolverRules(%q) = %q, %v; want an error with %q", c.url, got, err, c.wantErr)
				}
				return
			}
			if err != nil || got != c.want {
				t.Errorf("chromiumResolverRules(%q) = %q, %v; want %q", c.url, got, err, c.want)
			}
		})
	}
}

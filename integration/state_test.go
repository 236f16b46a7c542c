package integration

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
	"github.com/vpnmasq/vpnmasq/internal/pptppeer"
)

// stateConfig is labConfig with the NAT state in file, written every
// 500 ms.
// VPNMASQ_TEST_STATE_OFF=1 turns the state off, to see the tests fail as
// they did before vpnmasq kept its state.
func stateConfig(file string) string {
	c := labConfig + fmt.Sprintf("\n[state]\nfile = %q\ninterval = \"500ms\"\n", file)
	if os.Getenv("VPNMASQ_TEST_STATE_OFF") != "" {
		c += "enabled = false\n"
	}
	// VPNMASQ_TEST_STATE_HOLD overrides [state] hold, to run the tests
	// against a stop that leaves no hold ("0s").
	if h := os.Getenv("VPNMASQ_TEST_STATE_HOLD"); h != "" {
		c += fmt.Sprintf("hold = %q\n", h)
	}
	return c
}

// restart ends r (SIGTERM, or SIGKILL when kill) and starts a new router
// on config, returning it and how long the router was away: from the
// signal to the new process's "router ready".
func restart(t *testing.T, l *lab.Lab, r *router, config string, kill bool) (*router, time.Duration) {
	t.Helper()
	start := time.Now()
	if kill {
		r.kill()
	} else {
		r.stop()
	}
	r2 := startRouter(t, l, config)
	away := time.Since(start)
	restored := r2.log.find("nat state restored")
	if len(restored) == 0 {
		t.Logf("new router restored no state:\n%s", r2.log)
	} else {
		t.Logf("restored: %s", restored[0].Raw)
	}
	t.Logf("router away %v (signal to \"router ready\"); new process ready %v after its start", away.Round(time.Millisecond), r2.ready.Fields["startup_ms"])
	return r2, away
}

// udpGapProbe sends a datagram every 5 ms from lan1 to an echo server on
// the WAN and records when answers arrive, to measure how long a restart
// stops forwarding.
type udpGapProbe struct {
	mu      sync.Mutex
	replies []time.Time
	stop    chan struct{}
	done    chan struct{}
}

func startUDPGapProbe(t *testing.T, l *lab.Lab) *udpGapProbe {
	t.Helper()
	echo, err := lab.ServeUDPEcho(l.WAN, "198.18.0.2:7007")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	c, err := l.LAN1.Dial("udp4", "198.18.0.2:7007", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p := &udpGapProbe{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
			p.mu.Lock()
			p.replies = append(p.replies, time.Now())
			p.mu.Unlock()
		}
	}()
	go func() {
		defer close(p.done)
		defer c.Close()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
				_, _ = c.Write([]byte("probe"))
			}
		}
	}()
	t.Cleanup(p.close)
	return p
}

func (p *udpGapProbe) close() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
		<-p.done
	}
}

// gap is the longest time without an answer between from and to.
func (p *udpGapProbe) gap(from, to time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	last, longest := from, time.Duration(0)
	for _, at := range p.replies {
		if at.Before(from) || at.After(to) {
			continue
		}
		longest = max(longest, at.Sub(last))
		last = at
	}
	return max(longest, to.Sub(last))
}

// pausedServer is a TCP server on the WAN host that sends half of a blob,
// waits until the test lets it go on, then sends the rest and reads the
// client's "BYE". After a restart it speaks first, so a lost mapping
// cannot hide behind the client re-creating it.
type pausedServer struct {
	ln     net.Listener
	resume chan struct{}
	bye    chan string
}

const pausedBlob = 4 << 20

func servePaused(t *testing.T, l *lab.Lab, addr string) *pausedServer {
	t.Helper()
	ln, err := l.WAN.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &pausedServer{ln: ln, resume: make(chan struct{}), bye: make(chan string, 1)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		if _, err := br.ReadString('\n'); err != nil {
			s.bye <- "no request: " + err.Error()
			return
		}
		blob := lab.Blob(pausedBlob)
		if _, err := io.CopyN(c, blob, pausedBlob/2); err != nil {
			s.bye <- "first half: " + err.Error()
			return
		}
		<-s.resume
		if _, err := io.Copy(c, blob); err != nil {
			s.bye <- "second half: " + err.Error()
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		line, err := br.ReadString('\n')
		if err != nil {
			s.bye <- "no BYE: " + err.Error()
			return
		}
		s.bye <- line
	}()
	return s
}

// TestStateTCPAcrossRestart: a TCP connection through the router while it
// restarts (SIGTERM, a new process), paused across the restart, the WAN
// server sending first after it, completes with the right SHA-256. A UDP
// probe measures how long forwarding stopped.
func TestStateTCPAcrossRestart(t *testing.T) {
	l := newLab(t, lab.Options{})
	cfg := stateConfig(filepath.Join(t.TempDir(), "state.bin"))
	r := startRouter(t, l, cfg)
	probe := startUDPGapProbe(t, l)

	// The paused connection.
	ps := servePaused(t, l, "198.18.0.2:9102")
	pc, err := l.LAN1.Dial("tcp4", "198.18.0.2:9102", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	fmt.Fprintf(pc, "GET\n")
	h := newSHA256Counter()
	_ = pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.CopyN(h, pc, pausedBlob/2); err != nil {
		t.Fatalf("first half: %v", err)
	}

	time.Sleep(time.Second) // a periodic snapshot passes
	before := time.Now()
	r, away := restart(t, l, r, cfg, false)
	_ = r
	time.Sleep(500 * time.Millisecond)
	t.Logf("UDP forwarding gap across the restart: %v", probe.gap(before, time.Now()).Round(time.Millisecond))
	t.Logf("router away for %v", away.Round(time.Millisecond))

	// The WAN server speaks first.
	close(ps.resume)
	_ = pc.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.CopyN(h, pc, pausedBlob/2); err != nil {
		t.Fatalf("second half, sent first by the WAN server after the restart: %v (%d bytes)", err, h.n)
	}
	if h.Sum() != lab.BlobSHA256(pausedBlob) {
		t.Fatal("paused connection: SHA-256 mismatch")
	}
	fmt.Fprintf(pc, "BYE\n")
	select {
	case line := <-ps.bye:
		if line != "BYE\n" {
			t.Fatalf("paused connection: server got %q", line)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("paused connection: no BYE at the server")
	}
}

// runningDownload downloads 24 MiB from a WAN server through lan1 at about
// 8 MiB/s, so that data is in flight all the time, and reports the outcome
// (length and SHA-256 checked) on the channel.
func runningDownload(t *testing.T, l *lab.Lab) <-chan error {
	t.Helper()
	srv, err := lab.ServeHTTP(l.WAN, "198.18.0.2:9101", "wan")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	const running = 24 << 20
	runDone := make(chan error, 1)
	go func() {
		c, err := l.LAN1.Dial("tcp4", "198.18.0.2:9101", 5*time.Second)
		if err != nil {
			runDone <- err
			return
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /blob?bytes=%d HTTP/1.1\r\nHost: wan\r\nConnection: close\r\n\r\n", running)
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				runDone <- err
				return
			}
			if line == "\r\n" {
				break
			}
		}
		h := newSHA256Counter()
		buf := make([]byte, 64<<10)
		var readErr error
		for h.n < running {
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := br.Read(buf)
			h.Write(buf[:n])
			if err != nil {
				readErr = err
				break
			}
			time.Sleep(8 * time.Millisecond) // 64 KiB per 8 ms
		}
		if h.n != running || h.Sum() != lab.BlobSHA256(running) {
			runDone <- fmt.Errorf("running download: %d of %d bytes, SHA-256 match %v: %v", h.n, running, h.Sum() == lab.BlobSHA256(running), readErr)
			return
		}
		runDone <- nil
	}()

	return runDone
}

// TestStateKill9: after kill -9, the connections the last periodic
// snapshot held survive; the WAN server speaks first after the restart.
func TestStateKill9(t *testing.T) {
	l := newLab(t, lab.Options{})
	cfg := stateConfig(filepath.Join(t.TempDir(), "state.bin"))
	r := startRouter(t, l, cfg)
	ps := servePaused(t, l, "198.18.0.2:9103")
	pc, err := l.LAN1.Dial("tcp4", "198.18.0.2:9103", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	fmt.Fprintf(pc, "GET\n")
	h := newSHA256Counter()
	_ = pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.CopyN(h, pc, pausedBlob/2); err != nil {
		t.Fatalf("first half: %v", err)
	}
	time.Sleep(1500 * time.Millisecond) // at least two snapshots
	r, _ = restart(t, l, r, cfg, true)
	close(ps.resume)
	_ = pc.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.CopyN(h, pc, pausedBlob/2); err != nil {
		t.Fatalf("second half after kill -9, sent first by the WAN server: %v (%d bytes)", err, h.n)
	}
	if h.Sum() != lab.BlobSHA256(pausedBlob) {
		t.Fatal("SHA-256 mismatch")
	}
	fmt.Fprintf(pc, "BYE\n")
	select {
	case line := <-ps.bye:
		if line != "BYE\n" {
			t.Fatalf("server got %q", line)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no BYE at the server")
	}
	if got := r.log.find("nat state restored"); len(got) == 0 {
		t.Fatal("nothing restored after kill -9")
	}
}

// TestStatePPTPAcrossRestart: a PPTP call's GRE flows again after a router
// restart without a new call, the server sending first.
func TestStatePPTPAcrossRestart(t *testing.T) {
	l := newLab(t, lab.Options{})
	file := filepath.Join(t.TempDir(), "state.bin")
	cfg := strings.Replace(stateConfig(file), labConfig, pptpConfig, 1)
	r := startRouter(t, l, cfg)
	srv, err := pptppeer.StartServer(l.WAN, lab.WANAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	pc := &pptpClient{name: "lan1", addr: lab.LAN1Addr}
	if pc.c, err = pptppeer.Dial(l.LAN1, pc.addr, lab.WANAddr, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.c.Abort() })
	call, err := pc.c.Call(1)
	if err != nil {
		t.Fatal(err)
	}
	pc.calls = []*pptppeer.Call{call}
	pc.exchangeGRE(t, 2)
	conns := srv.Conns()
	if len(conns) != 1 || len(conns[0].Calls) != 1 {
		t.Fatalf("server connections %+v", conns)
	}
	serverCall := conns[0].Calls[0].ID

	r, _ = restart(t, l, r, cfg, false)

	// The server's GRE first: it must reach the client's call.
	if err := srv.SendGRE(serverCall, []byte("server first after the restart")); err != nil {
		t.Fatal(err)
	}
	p, err := call.ReceiveGRE(time.Now().Add(5 * time.Second))
	if err != nil {
		t.Fatalf("GRE from the server after the restart: %v (router log:\n%s)", err, r.log)
	}
	if string(p.Payload) != "server first after the restart" || p.CallID != call.ID {
		t.Fatalf("client got %q keyed %d", p.Payload, p.CallID)
	}
	// Then both ways, and the control connection goes on (its stream
	// positions came back: an echo passes, a clear is translated).
	pc.exchangeGRE(t, 2)
	if err := pc.c.Echo(); err != nil {
		t.Fatalf("control connection after the restart: %v", err)
	}
	if conns := srv.Conns(); len(conns) != 1 || len(conns[0].Calls) != 1 {
		t.Fatalf("the server saw a new connection or call: %+v", conns)
	}
	lines := pptpCallLines(t, r)
	if len(lines) != 1 || lines[0].Str("state") != "established" {
		t.Fatalf("router's calls after the restart: %v", lines)
	}
	if err := call.Clear(); err != nil {
		t.Fatalf("clearing the call after the restart: %v", err)
	}
	if err := pc.c.Close(); err != nil {
		t.Fatalf("stopping the control connection: %v", err)
	}
}

// TestStateStrongSwanAcrossRestart: a strongSwan IKEv2 tunnel (NAT-T, ESP
// in UDP 4500) keeps answering pings across a router restart, with no
// rekey and a short gap; after the restart the gateway sends first.
func TestStateStrongSwanAcrossRestart(t *testing.T) {
	requireIPsecTools(t)
	l := newLab(t, lab.Options{})
	if err := lab.AddProtectedNet(l.WAN, "prot0", wanProtectedNet); err != nil {
		t.Fatal(err)
	}
	cfg := stateConfig(filepath.Join(t.TempDir(), "state.bin"))
	r := startRouter(t, l, cfg)
	startCharon(t, l.WAN, "wan", swanctlConf("vips", wanVIPPool, ikeConnection{
		Name: "rw", Version: 2, LocalAddrs: lab.WANAddr.String(),
		LocalID: "wan.ipsec.test", Pool: "vips", LocalTS: wanProtectedNet.Masked().String(),
	}))
	home := startCharon(t, l.LAN1, "lan1", swanctlConf("", netip.Prefix{}, ikeConnection{
		Name: "home", Version: 2, RemoteAddrs: lab.WANAddr.String(),
		LocalID: "lan1.ipsec.test", RemoteID: "wan.ipsec.test", WantVIP: true,
		RemoteTS: wanProtectedNet.Masked().String(),
	}))
	if err := home.initiate("home", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	sa, child, err := home.established()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("IKE_SA %s_i %s_r, CHILD_SA in %s out %s, virtual IP %s", sa.ISPI, sa.RSPI, child.SPIIn, child.SPIOut, sa.VIP)
	ping := func(ns *lab.NS, from, to netip.Addr, n int) {
		t.Helper()
		out, code := runIn(t, ns, 30*time.Second, "ping", "-n", "-I", from.String(), "-c", fmt.Sprint(n), "-i", "0.2", "-W", "2", to.String())
		if code != 0 || !strings.Contains(out, " 0% packet loss") {
			t.Fatalf("ping %s -> %s: exit %d, want every answer:\n%s", from, to, code, out)
		}
	}
	ping(l.LAN1, sa.VIP, wanProtectedAddr, 3)
	ping(l.WAN, wanProtectedAddr, sa.VIP, 3)

	// Pings through the tunnel every 20 ms while the router restarts,
	// from the gateway's side: the LAN host only answers, so it cannot
	// re-create a lost NAT-T mapping.
	type pingResult struct {
		out  string
		code int
	}
	across := make(chan pingResult, 1)
	go func() {
		out, code := runIn(t, l.WAN, 30*time.Second, "ping", "-n", "-I", wanProtectedAddr.String(), "-c", "150", "-i", "0.02", "-W", "1", sa.VIP.String())
		across <- pingResult{out, code}
	}()
	time.Sleep(time.Second)
	r, away := restart(t, l, r, cfg, false)
	_ = r
	res := <-across
	lines := strings.Split(strings.TrimSpace(res.out), "\n")
	t.Logf("pings across the restart (router away %v): %s", away.Round(time.Millisecond), lines[len(lines)-2])
	var sent, received int
	if _, err := fmt.Sscanf(lines[len(lines)-2], "%d packets transmitted, %d received", &sent, &received); err != nil || sent-received > 25 {
		t.Fatalf("more than 25 of 150 pings (0.5 s) lost across the restart:\n%s", res.out)
	}

	// The gateway speaks first after the restart, then the host.
	ping(l.WAN, wanProtectedAddr, sa.VIP, 3)
	ping(l.LAN1, sa.VIP, wanProtectedAddr, 3)

	sa2, child2, err := home.established()
	if err != nil {
		t.Fatal(err)
	}
	if sa2.ISPI != sa.ISPI || sa2.RSPI != sa.RSPI || child2.SPIIn != child.SPIIn || child2.SPIOut != child.SPIOut {
		t.Errorf("the tunnel was rebuilt or rekeyed: IKE_SA %s_i %s_r CHILD_SA in %s out %s, before %s_i %s_r in %s out %s",
			sa2.ISPI, sa2.RSPI, child2.SPIIn, child2.SPIOut, sa.ISPI, sa.RSPI, child.SPIIn, child.SPIOut)
	}
}

// TestStateTCPServerSendingDuringRestart: a download that runs on across
// the restart, data in flight all the time, completes. While no router
// runs, the hold keeps the router namespace's own stack from resetting the
// WAN's segments and from forwarding the LAN's ACKs unmasqueraded; without
// it (VPNMASQ_TEST_STATE_HOLD=0s) the connection was reset in 1 of 6 runs
// with forwarding off and 0 of 8 with it on: whether a segment meets the
// gap is chance, which is why TestStateHoldCoversTheGap checks the gap
// itself, deterministically.
func TestStateTCPServerSendingDuringRestart(t *testing.T) {
	l := newLab(t, lab.Options{})
	// Forwarding on before the start, as in the container: the gap's LAN
	// packets would otherwise be dropped by the host for a reason that
	// has nothing to do with the router.
	if out, code := runIn(t, l.Router, 10*time.Second, "sysctl", "-w", "net.ipv4.ip_forward=1"); code != 0 {
		t.Fatalf("sysctl: %s", out)
	}
	cfg := stateConfig(filepath.Join(t.TempDir(), "state.bin"))
	r := startRouter(t, l, cfg)
	done := runningDownload(t, l)
	time.Sleep(time.Second)
	restart(t, l, r, cfg, false)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("running download did not finish")
	}
}

// TestStateRawESPAcrossRestart: a LAN host's raw ESP (IP protocol 50)
// SPI pair survives a router restart; the gateway sends first after it.
func TestStateRawESPAcrossRestart(t *testing.T) {
	l := newLab(t, lab.Options{})
	cfg := stateConfig(filepath.Join(t.TempDir(), "state.bin"))
	r := startRouter(t, l, cfg)
	host, err := l.LAN1.ListenESP(netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	gw, err := l.WAN.ListenESP(netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	const out, in = 0x5a5a0001, 0xa5a50001
	receive := func(c *lab.ESPConn, spi uint32, what string) lab.ESPPacket {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for {
			p, err := c.Receive(deadline)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if p.SPI == spi {
				return p
			}
		}
	}
	if err := host.Send(lab.WANAddr, out, 1, []byte("host 1")); err != nil {
		t.Fatal(err)
	}
	if p := receive(gw, out, "host's first ESP at the gateway"); p.Peer != lab.RouterWANAddr {
		t.Fatalf("gateway got ESP from %s", p.Peer)
	}
	for seq := uint32(1); seq <= 2; seq++ { // the second confirms the binding
		if err := gw.Send(lab.RouterWANAddr, in, seq, []byte("gateway")); err != nil {
			t.Fatal(err)
		}
		receive(host, in, "gateway's ESP at the host before the restart")
	}
	r, _ = restart(t, l, r, cfg, false)
	if err := gw.Send(lab.RouterWANAddr, in, 3, []byte("gateway first after the restart")); err != nil {
		t.Fatal(err)
	}
	if p := receive(host, in, "gateway's ESP at the host, sent first after the restart"); string(p.Payload) != "gateway first after the restart" {
		t.Fatalf("host got %q", p.Payload)
	}
	if err := host.Send(lab.WANAddr, out, 2, []byte("host 2")); err != nil {
		t.Fatal(err)
	}
	receive(gw, out, "host's ESP at the gateway after the restart")
	if got := r.log.find("nat state restored"); len(got) == 0 || got[0].Str("esp") != "1" {
		t.Errorf("restored: %v", got)
	}
}

// TestStateHoldCoversTheGap: between a stop that leaves state and the next
// start, the hold table drops what the router would have handled, so the
// router namespace's own stack neither resets the WAN's segments for the
// NAT's ports nor forwards the LAN's packets unmasqueraded; the kernel ends
// the hold by itself after [state] hold, and the next start removes it.
// VPNMASQ_TEST_STATE_HOLD=0s runs the control: no hold, and the checks of
// the gap fail.
func TestStateHoldCoversTheGap(t *testing.T) {
	l := newLab(t, lab.Options{})
	hold := 3 * time.Second
	cfg := stateConfig(filepath.Join(t.TempDir(), "state.bin"))
	if os.Getenv("VPNMASQ_TEST_STATE_HOLD") == "" {
		cfg += fmt.Sprintf("hold = %q\n", hold)
	}
	// Forwarding on before the router starts, as in a container started
	// with --sysctl net.ipv4.ip_forward=1: the router then leaves it on,
	// and without a hold the host would forward the LAN in the gap.
	if out, code := runIn(t, l.Router, 10*time.Second, "sysctl", "-w", "net.ipv4.ip_forward=1"); code != 0 {
		t.Fatalf("sysctl: %s", out)
	}
	r := startRouter(t, l, cfg)

	// The WAN side's view of the LAN's datagrams: a leak shows a LAN
	// source address.
	sink, err := l.WAN.ListenPacket("udp4", "198.18.0.2:7009")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	lanSend, err := l.LAN1.Dial("udp4", "198.18.0.2:7009", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer lanSend.Close()

	r.stop()
	stopped := time.Now()
	if len(r.log.find("hold installed until the next start")) == 0 && os.Getenv("VPNMASQ_TEST_STATE_HOLD") == "" {
		t.Errorf("no \"hold installed\" in the log:\n%s", r.log)
	}

	t.Run("while the router is away, a WAN connection attempt to a NAT port is dropped, not refused", func(t *testing.T) {
		c, err := l.WAN.Dial("tcp4", "198.18.0.1:24001", 500*time.Millisecond)
		if err == nil {
			c.Close()
			t.Fatal("connected to the router namespace's own stack on a NAT port")
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("refused (the host answered with a RST): %v", err)
		}
	})
	t.Run("while the router is away, the LAN's datagrams do not leave unmasqueraded", func(t *testing.T) {
		if _, err := lanSend.Write([]byte("leak?")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		_ = sink.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if n, from, err := sink.ReadFrom(buf); err == nil {
			t.Fatalf("the WAN host received %q from %v", buf[:n], from)
		}
	})
	if time.Since(stopped) >= hold {
		t.Fatalf("the checks of the gap took %v, longer than the hold", time.Since(stopped))
	}

	t.Run("after [state] hold the kernel ends the hold by itself: the host refuses again", func(t *testing.T) {
		time.Sleep(time.Until(stopped.Add(hold + 500*time.Millisecond)))
		c, err := l.WAN.Dial("tcp4", "198.18.0.1:24001", 2*time.Second)
		if err == nil {
			c.Close()
			t.Fatal("connected to a NAT port with no router running")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("want connection refused once the hold ended, got %v", err)
		}
		left := vpnmasqLeftovers(t, l.Router)
		if !slices.Equal(left, []string{"nft: table ip vpnmasq_vpnmasq0_hold"}) {
			t.Errorf("left after the stop: %q, want the (now inert) hold table only", left)
		}
	})

	t.Run("the next start removes the hold once its guards are in", func(t *testing.T) {
		r2 := startRouter(t, l, cfg)
		if len(r2.log.find("hold of the previous stop released")) != 1 {
			t.Errorf("no \"hold of the previous stop released\" in the log:\n%s", r2.log)
		}
		for _, l := range vpnmasqLeftovers(t, l.Router) {
			if strings.Contains(l, "_hold") {
				t.Errorf("still there with the router running: %s", l)
			}
		}
		r2.stop()
	})
}

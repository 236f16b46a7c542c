package netstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// lanClient is a second gVisor stack playing a LAN host, wired back to back
// with the service stack: what it sends goes to Deliver, what the service
// stack outputs is injected into it.
type lanClient struct {
	stack *stack.Stack
	ep    *channel.Endpoint
}

// newLANClient starts a service stack with cfg and a client stack on
// lanHost connected to it; both are closed when the test ends.
func newLANClient(t *testing.T, cfg Config) (*Stack, *lanClient) {
	t.Helper()
	lc := &lanClient{
		stack: stack.New(stack.Options{
			NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
			TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
		}),
		ep: channel.New(512, 1500, ""),
	}
	if err := lc.stack.CreateNIC(1, lc.ep); err != nil {
		t.Fatalf("client NIC: %v", err)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: taddr(lanHost).WithPrefix()}
	if err := lc.stack.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
		t.Fatalf("client address: %v", err)
	}
	lc.stack.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})

	cfg.Address = serviceAddr
	cfg.Log = zerolog.Nop()
	cfg.Output = func(pkt []byte) {
		// The service stack's Output goroutine: into the client stack.
		p := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(append([]byte(nil), pkt...))})
		lc.ep.InjectInbound(ipv4.ProtocolNumber, p)
		p.DecRef()
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		// The client's packets: to the service stack, as the router would.
		defer wg.Done()
		for {
			p := lc.ep.ReadContext(ctx)
			if p == nil {
				return
			}
			v := p.ToView()
			p.DecRef()
			s.Deliver(v.AsSlice())
			v.Release()
		}
	}()
	t.Cleanup(func() {
		lc.stack.Close()
		s.Close()
		cancel()
		wg.Wait()
		lc.stack.Wait()
	})
	return s, lc
}

func (lc *lanClient) dial(ctx context.Context, port uint16) (net.Conn, error) {
	return gonet.DialContextTCP(ctx, lc.stack, tcpip.FullAddress{NIC: 1, Addr: taddr(serviceAddr), Port: port}, ipv4.ProtocolNumber)
}

func TestDNSOverTCP(t *testing.T) {
	up := startUpstream(t, answerA("198.18.7.7", 300))
	s, lc := newLANClient(t, Config{DNSUpstreams: []netip.AddrPort{up.addr}, DNSTimeout: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()

	conn, err := lc.dial(ctx, 53)
	if err != nil {
		t.Fatalf("connect to DNS over TCP: %v", err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(waitFor)); err != nil {
		t.Fatalf("deadline: %v", err)
	}
	dc := &dns.Conn{Conn: conn}

	ask := func(t *testing.T, id uint16, name string) *dns.Msg {
		t.Helper()
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		q.Id = id
		if err := dc.WriteMsg(q); err != nil {
			t.Fatalf("write query: %v", err)
		}
		r, err := dc.ReadMsg()
		if err != nil {
			t.Fatalf("read reply: %v", err)
		}
		if r.Id != id {
			t.Fatalf("reply ID %d, want %d", r.Id, id)
		}
		return r
	}

	t.Run("a query over TCP is answered and goes upstream over TCP", func(t *testing.T) {
		a := onlyA(t, ask(t, 100, "tcp.example."))
		if a.A.String() != "198.18.7.7" {
			t.Fatalf("answer %v, want 198.18.7.7", a)
		}
		if up.count("tcp") != 1 || up.count("udp") != 0 {
			t.Fatalf("upstream queries: %d TCP, %d UDP; want 1 and 0", up.count("tcp"), up.count("udp"))
		}
	})
	t.Run("a second query on the same connection is answered from the cache", func(t *testing.T) {
		onlyA(t, ask(t, 101, "tcp.example."))
		if up.total() != 1 {
			t.Fatalf("upstream got %d queries, want 1", up.total())
		}
		eventually(t, "2 answered", func() bool { return s.DNSStats().Answered == 2 })
		if st := s.DNSStats(); st.TCPQueries != 2 || st.CacheHits != 1 {
			t.Fatalf("stats %+v, want 2 TCP queries, 1 hit", st)
		}
	})
	t.Run("pipelined queries are all answered in order", func(t *testing.T) {
		for i := range 3 {
			q := new(dns.Msg)
			q.SetQuestion(fmt.Sprintf("p%d.example.", i), dns.TypeA)
			q.Id = uint16(200 + i)
			if err := dc.WriteMsg(q); err != nil {
				t.Fatalf("write query: %v", err)
			}
		}
		for i := range 3 {
			r, err := dc.ReadMsg()
			if err != nil {
				t.Fatalf("read reply: %v", err)
			}
			if r.Id != uint16(200+i) {
				t.Fatalf("reply ID %d, want %d", r.Id, 200+i)
			}
		}
	})
}

func TestDNSOverTCPFallsBackToUDPUpstream(t *testing.T) {
	// An upstream that only serves UDP (its TCP port refuses): a TCP client
	// is still answered.
	up := startUpstream(t, answerA("198.18.7.8", 300))
	udpOnly := startUDPOnlyUpstream(t, up)
	_, lc := newLANClient(t, Config{DNSUpstreams: []netip.AddrPort{udpOnly}, DNSTimeout: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	conn, err := lc.dial(ctx, 53)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(waitFor))
	dc := &dns.Conn{Conn: conn}
	q := new(dns.Msg)
	q.SetQuestion("udponly.example.", dns.TypeA)
	if err := dc.WriteMsg(q); err != nil {
		t.Fatalf("write: %v", err)
	}
	r, err := dc.ReadMsg()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if a := onlyA(t, r); a.A.String() != "198.18.7.8" {
		t.Fatalf("answer %v, want 198.18.7.8", a)
	}
}

// startUDPOnlyUpstream relays UDP queries on a fresh loopback port to up;
// nothing listens on that port's TCP side.
func startUDPOnlyUpstream(t *testing.T, up *upstream) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		r, err := dns.Exchange(q, up.addr.String())
		if err != nil {
			return
		}
		_ = w.WriteMsg(r)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	select {
	case <-started:
	case <-time.After(waitFor):
		t.Fatal("relay did not start")
	}
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestHTTPOverListenTCP(t *testing.T) {
	s, lc := newLANClient(t, Config{})
	l, err := s.ListenTCP(80)
	if err != nil {
		t.Fatalf("ListenTCP(80): %v", err)
	}
	body := strings.Repeat("vpnmasq admin ", 10000) // many segments, both ways acked
	var remote string
	var mu sync.Mutex
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			remote = r.RemoteAddr
			mu.Unlock()
			if r.URL.Path != "/healthz" {
				http.NotFound(w, r)
				return
			}
			_, _ = io.WriteString(w, body)
		}),
		ReadHeaderTimeout: waitFor,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	client := &http.Client{
		Timeout: waitFor,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return lc.dial(ctx, 80) },
		},
	}
	t.Run("a GET from a LAN host is served", func(t *testing.T) {
		resp, err := client.Get("http://192.0.2.53/healthz")
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		defer resp.Body.Close()
		got, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("read body: %v", err)
		}
		if resp.StatusCode != http.StatusOK || string(got) != body {
			t.Fatalf("status %d with %d bytes, want 200 with %d bytes", resp.StatusCode, len(got), len(body))
		}
		mu.Lock()
		defer mu.Unlock()
		if !strings.HasPrefix(remote, lanHost.String()+":") {
			t.Fatalf("server saw remote %q, want the LAN host", remote)
		}
	})
	t.Run("an unknown path gets 404 over a kept-alive connection", func(t *testing.T) {
		resp, err := client.Get("http://192.0.2.53/nothing")
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("status %d, want 404", resp.StatusCode)
		}
	})
	t.Run("a closed port is refused at once", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		conn, err := lc.dial(ctx, 81)
		if err == nil {
			conn.Close()
			t.Fatal("connected to a port nobody listens on")
		}
		if ctx.Err() != nil {
			t.Fatalf("dial timed out instead of being refused: %v", err)
		}
	})
	t.Run("Stack.Close ends Serve with net.ErrClosed", func(t *testing.T) {
		client.CloseIdleConnections()
		s.Close()
		select {
		case err := <-served:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Serve returned %v, want net.ErrClosed", err)
			}
		case <-time.After(waitFor):
			t.Fatal("Serve still running after Close")
		}
	})
}

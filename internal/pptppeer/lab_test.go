package pptppeer

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// newRoutedLab builds a lab whose router namespace forwards without any
// NAT, and whose WAN host routes the LAN back through it: the client in
// lan1 and the server on the WAN host then see each other's real
// addresses and Call IDs. The lab is removed when the test ends.
func newRoutedLab(t *testing.T) *lab.Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test builds network namespaces and must run as root")
	}
	l, err := lab.New(lab.Options{})
	if err != nil {
		t.Fatalf("building the lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("removing the lab: %v", err)
		}
	})
	// /proc/sys/net belongs to the namespace of the thread opening it.
	if err := l.Router.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	}); err != nil {
		t.Fatalf("enabling forwarding in %s: %v", l.Router.Name, err)
	}
	if err := l.WAN.AddRoute(lab.LANPrefix, lab.RouterWANAddr); err != nil {
		t.Fatal(err)
	}
	return l
}

func types(ms []Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name()
	}
	return out
}

const peerTimeout = 5 * time.Second

// exchangeGRE sends n packets on the call and checks each echo: keyed
// with the client's Call ID, from the server, payload echo:<sent>, the
// server's sequence numbers 1..n, acknowledging the packet just sent.
func exchangeGRE(t *testing.T, call *Call, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		payload := fmt.Sprintf("call %#04x packet %d", call.ID, i)
		if err := call.SendGRE([]byte(payload)); err != nil {
			t.Fatal(err)
		}
		p, err := call.ReceiveGRE(time.Now().Add(peerTimeout))
		if err != nil {
			t.Fatal(err)
		}
		if p.CallID != call.ID || p.From != lab.WANAddr || string(p.Payload) != EchoPrefix+payload ||
			!p.HasSeq || p.Seq != uint32(i) || !p.HasAck || p.Ack != uint32(i) {
			t.Errorf("echo of %q: %v; want key %#04x from %s, seq %d, ack %d", payload, p, call.ID, lab.WANAddr, i, i)
		}
	}
}

func TestClientAndServerTalkDirectly(t *testing.T) {
	l := newRoutedLab(t)
	modes := []struct {
		name       string
		clientOpts []Option
		serverOpts []Option
	}{
		{"with one write per message", nil, []Option{SendWANErrorNotify()}},
		{"with every message split into 3 writes on both sides",
			[]Option{SplitWrites(3, 5*time.Millisecond)}, []Option{SendWANErrorNotify(), SplitWrites(3, 5*time.Millisecond)}},
		{"with the call reply, SLI and WEN in one write", nil, []Option{SendWANErrorNotify(), CoalesceCallReply()}},
	}
	for _, mode := range modes {
		t.Run(mode.name+", two outgoing calls and an incoming one carry control messages and GRE both ways", func(t *testing.T) {
			srv, err := StartServer(l.WAN, lab.WANAddr, mode.serverOpts...)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := srv.Close(); err != nil {
					t.Errorf("closing the server: %v", err)
				}
			}()
			cl, err := Dial(l.LAN1, lab.LAN1Addr, lab.WANAddr, peerTimeout, mode.clientOpts...)
			if err != nil {
				t.Fatal(err)
			}
			if err := cl.Echo(); err != nil {
				t.Fatal(err)
			}

			// Two calls in one control connection, each with its server
			// Call ID, SLI and WEN.
			var calls []*Call
			for i, id := range []uint16{0x0101, 0x0202} {
				call, err := cl.Call(id)
				if err != nil {
					t.Fatal(err)
				}
				if want := uint16(DefaultFirstCallID + i); call.PeerID != want {
					t.Errorf("call %#04x: server Call ID %#04x, want %#04x", id, call.PeerID, want)
				}
				for _, typ := range []uint16{TypeSLI, TypeWEN} {
					if _, err := cl.WaitFor(fmt.Sprintf("%s for %#04x", TypeName(typ), id), func(m Message) bool {
						peer, _ := m.PeerCallID()
						return m.Type == typ && peer == id
					}); err != nil {
						t.Error(err)
					}
				}
				calls = append(calls, call)
			}
			for _, call := range calls {
				exchangeGRE(t, call, 3)
			}

			// An incoming call, placed by the server.
			var wg sync.WaitGroup
			var placed ServerCall
			var placeErr error
			wg.Add(1)
			go func() {
				defer wg.Done()
				placed, placeErr = srv.PlaceIncomingCall(0, peerTimeout)
			}()
			in, err := cl.AcceptIncoming(0x0303)
			wg.Wait()
			if err != nil || placeErr != nil {
				t.Fatalf("incoming call: client %v, server %v", err, placeErr)
			}
			if in.PeerID != placed.ID || placed.PeerID != 0x0303 || !placed.Incoming {
				t.Errorf("incoming call: client knows server ID %#04x, server has %+v; want the IDs crossed", in.PeerID, placed)
			}
			calls = append(calls, in)
			exchangeGRE(t, in, 1)

			// Several messages in one write, and one message in pieces.
			if err := cl.Send(NewEchoRequest(100), NewEchoRequest(101)); err != nil {
				t.Fatal(err)
			}
			if err := cl.SendSplit(NewEchoRequest(102), 4, 5*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			for _, id := range []uint32{100, 101, 102} {
				if _, err := cl.WaitFor(fmt.Sprintf("Echo-Reply %d", id), func(m Message) bool {
					ident, _ := m.Field("ident")
					return m.Type == TypeEchoRP && ident == id
				}); err != nil {
					t.Error(err)
				}
			}

			for _, call := range calls {
				if err := call.Clear(); err != nil {
					t.Fatal(err)
				}
				// No NAT in between: the CDN carries the server's own Call
				// ID, as RFC 2637 says.
				if id, _ := call.CDN().CallID(); id != call.PeerID {
					t.Errorf("CDN for call %#04x carries Call ID %#04x, want the server's %#04x", call.ID, id, call.PeerID)
				}
			}
			if err := cl.Close(); err != nil {
				t.Fatal(err)
			}

			// The server closes its end right after sending the StopCCRP,
			// which the client may have read before that.
			var conn ServerConn
			for deadline := time.Now().Add(peerTimeout); ; time.Sleep(5 * time.Millisecond) {
				conns := srv.Conns()
				if len(conns) != 1 {
					t.Fatalf("server has %d control connections, want 1", len(conns))
				}
				conn = conns[0]
				if conn.Ended || time.Now().After(deadline) {
					break
				}
			}
			greByKey := map[uint16][]GREPacket{}
			for _, p := range srv.GREReceived() {
				greByKey[p.CallID] = append(greByKey[p.CallID], p)
			}
			checks := []struct {
				name string
				got  any
				want any
			}{
				{"the server sees the client's own address", conn.Remote.Addr(), lab.LAN1Addr},
				{"the server receives the client's messages in order",
					strings.Join(types(conn.Received), " "),
					"SCCRQ EchoRQ OCRQ OCRQ ICRP EchoRQ EchoRQ EchoRQ CCRQ CCRQ CCRQ StopCCRQ"},
				{"the client receives the server's messages in order",
					strings.Join(types(cl.Received()), " "),
					"SCCRP EchoRP OCRP SLI WEN OCRP SLI WEN ICRQ ICCN EchoRP EchoRP EchoRP CDN CDN CDN StopCCRP"},
				{"the server's calls carry the client's Call IDs unchanged",
					fmt.Sprint(conn.Calls),
					fmt.Sprint([]ServerCall{{0x5000, 0x0101, false, true}, {0x5001, 0x0202, false, true}, {0x5002, 0x0303, true, true}})},
				{"the server gets 3 GRE packets on each outgoing call and 1 on the incoming one",
					[]int{len(greByKey[0x5000]), len(greByKey[0x5001]), len(greByKey[0x5002]), len(greByKey)}, []int{3, 3, 1, 3}},
				{"the server sends one echo per packet", len(srv.GRESent()), 7},
				{"the server reports no errors", fmt.Sprint(srv.Errors()), "[]"},
				{"the client sees no stray GRE", len(cl.Strays()), 0},
				{"the client sees no malformed GRE", fmt.Sprint(cl.GREErrors()), "[]"},
				{"the server has closed the connection after StopCCRP", conn.Ended, true},
			}
			for _, c := range checks {
				if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
					t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
				}
			}
			t.Run("GRE from the client reaches the server with sequence numbers 1-3 and acks of each echo", func(t *testing.T) {
				for _, key := range []uint16{0x5000, 0x5001} {
					var got []string
					for _, p := range greByKey[key] {
						got = append(got, fmt.Sprintf("from=%s seq=%d/%v ack=%d/%v", p.From, p.Seq, p.HasSeq, p.Ack, p.HasAck))
					}
					want := []string{
						fmt.Sprintf("from=%s seq=1/true ack=0/false", lab.LAN1Addr),
						fmt.Sprintf("from=%s seq=2/true ack=1/true", lab.LAN1Addr),
						fmt.Sprintf("from=%s seq=3/true ack=2/true", lab.LAN1Addr),
					}
					if !slices.Equal(got, want) {
						t.Errorf("key %#04x: %v, want %v", key, got, want)
					}
				}
			})
		})
	}
}

func TestClientWaitsFailWithAClearErrorWhenTheServerIsSilent(t *testing.T) {
	l := newRoutedLab(t)
	// A listener that accepts and never answers: Dial must give up on the
	// SCCRP at its timeout and say what it waited for.
	ln, err := l.WAN.Listen("tcp4", fmt.Sprintf("%s:%d", lab.WANAddr, Port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(2 * time.Second)
		}
	}()
	start := time.Now()
	cl, err := Dial(l.LAN1, lab.LAN1Addr, lab.WANAddr, 300*time.Millisecond)
	if err == nil {
		cl.Abort()
		t.Fatal("Dial succeeded against a server that never answers")
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("Dial gave up after %v, want about its 300ms timeout", elapsed)
	}
	if !strings.Contains(err.Error(), "no SCCRP") {
		t.Errorf("error %q does not say it waited for an SCCRP", err)
	}
}

package integration

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// Addresses of the gateway-behind-the-router setup: lan1 is an IPsec
// gateway for a network inside its own namespace.
var (
	lanProtectedNet  = netip.MustParsePrefix("10.98.0.1/24")
	lanProtectedAddr = netip.MustParseAddr("10.98.0.1")
	lanVIPPool       = netip.MustParsePrefix("10.67.0.0/24")
)

// ipsecServerConfig is the lab configuration with IKE, NAT-T and raw ESP
// forwarded to lan1.
const ipsecServerConfig = labConfig + `
[[forward]]
proto = "udp"
port = 500
to = "192.168.77.10:500"

[[forward]]
proto = "udp"
port = 4500
to = "192.168.77.10:4500"

[[forward]]
proto = "esp"
to = "192.168.77.10"
`

// swanKernelForwardRules is the reference for VPNMASQ_IPSEC_NAT=kernel:
// the same forwards and masquerade with the kernel's own NAT.
const swanKernelForwardRules = `table ip ipsec_lab_nat {
	chain pre {
		type nat hook prerouting priority dstnat;
		iifname "rtr-wan" udp dport { 500, 4500 } dnat to 192.168.77.10
		iifname "rtr-wan" ip protocol esp dnat to 192.168.77.10
	}
	chain post {
		type nat hook postrouting priority srcnat;
		oifname "rtr-wan" ip saddr 192.168.77.0/24 masquerade
	}
}
`

func TestStrongSwanServerBehindTheRouterIsReachedThroughPortForwards(t *testing.T) {
	requireIPsecTools(t)
	for _, v := range ikeVersions {
		t.Run(v.name, func(t *testing.T) { testIPsecServerBehindRouter(t, v.version) })
	}
}

func testIPsecServerBehindRouter(t *testing.T, version int) {
	l := newLab(t, lab.Options{})
	if err := lab.AddProtectedNet(l.LAN1, "prot0", lanProtectedNet); err != nil {
		t.Fatal(err)
	}
	web, err := lab.ServeHTTP(l.LAN1, netip.AddrPortFrom(lanProtectedAddr, 80).String(), "protected")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { web.Close() })

	wanCap := startPcapCapture(t, l.Router, lab.RouterWANIf, "rtr-wan")
	lanCap := startPcapCapture(t, l.Router, lab.RouterLANIf, "br-lan")
	rtr := startIPsecRouter(t, l, ipsecServerConfig, swanKernelForwardRules)
	// What the router decided, for the reader of a -v run.
	t.Cleanup(func() { rtr.logIPsecDecisions(t) })

	server := startCharon(t, l.LAN1, "lan1", swanctlConf("vips", lanVIPPool, ikeConnection{
		Name: "rw", Version: version, LocalAddrs: lab.LAN1Addr.String(),
		LocalID: "server.ipsec.test", Pool: "vips", LocalTS: lanProtectedNet.Masked().String(),
	}))
	client := startCharon(t, l.WAN, "wan", swanctlConf("", netip.Prefix{}, ikeConnection{
		Name: "office", Version: version, RemoteAddrs: lab.RouterWANAddr.String(),
		LocalID: "client.ipsec.test", RemoteID: "server.ipsec.test", WantVIP: true,
		RemoteTS: lanProtectedNet.Masked().String(),
	}))

	var vip netip.Addr
	if !t.Run("the WAN initiator brings up a tunnel to the gateway behind 198.18.0.1", func(t *testing.T) {
		if err := client.initiate("office", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		sa, ch, err := client.established()
		if err != nil {
			t.Fatal(err)
		}
		vip = sa.VIP
		t.Logf("client: IKEv%d SA %s_i %s_r, %s -> %s, virtual IP %s, CHILD_SA %s in %s out %s",
			sa.Version, sa.ISPI, sa.RSPI, sa.LocalHost, sa.RemoteHost, sa.VIP, ch.Mode, ch.SPIIn, ch.SPIOut)
		if sa.RemoteHost.Addr() != lab.RouterWANAddr {
			t.Errorf("client's IKE_SA is with %s, want the router's WAN address %s", sa.RemoteHost, lab.RouterWANAddr)
		}
		if !lanVIPPool.Contains(vip) {
			t.Errorf("client holds virtual IP %v, want one from %s", vip, lanVIPPool)
		}
		// A port forward rewrites only the destination: the gateway sees
		// the client's own address.
		ssa, _, err := server.established()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("gateway: IKE_SA with %s", ssa.RemoteHost)
		if ssa.RemoteHost.Addr() != lab.WANAddr {
			t.Errorf("gateway's IKE_SA is with %s, want the client's address %s", ssa.RemoteHost, lab.WANAddr)
		}
	}) {
		t.FailNow()
	}

	t.Run("traffic from the virtual IP reaches the network behind the gateway", func(t *testing.T) {
		out, code := runIn(t, l.WAN, 20*time.Second, "ping", "-n", "-I", vip.String(), "-c", "10", "-i", "0.2", "-W", "2", lanProtectedAddr.String())
		if code != 0 || !strings.Contains(out, " 0% packet loss") {
			t.Errorf("ping from %s to %s: exit %d, want every answer:\n%s", vip, lanProtectedAddr, code, out)
		}
		const size = 4 << 20
		msg, err := fetchBlob(l.WAN, fmt.Sprintf("http://%s/blob?bytes=%d", lanProtectedAddr, size), size, 60*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Log(msg)
		var seen []netip.Addr
		for _, p := range web.Peers() {
			seen = append(seen, p.Addr())
		}
		if !slices.Contains(seen, vip) {
			t.Errorf("the protected server saw no request from the client's virtual IP %s (saw %v)", vip, seen)
		}
	})

	wanPkts, lanPkts := stopAndReadCaptures(t, wanCap, lanCap)
	t.Run("every IKE and ESP-in-UDP packet of the gateway leaves from 198.18.0.1 with its own port", func(t *testing.T) {
		counts := map[string]int{}
		for _, p := range wanPkts {
			if p.Dst != lab.WANAddr || (!p.isIKE() && p.ESPSPI == "" && !p.NATKeepalive) {
				continue
			}
			kind := "IKE"
			switch {
			case p.ESPSPI != "":
				kind = "ESP-in-UDP"
			case p.NATKeepalive:
				kind = "keepalive"
			}
			counts[fmt.Sprintf("%s %s:%d->%d", kind, p.Src, p.SPort, p.DPort)]++
			want := 4500
			if p.isIKE() && !p.NonESPMarker {
				want = 500
			}
			if p.Src != lab.RouterWANAddr || p.SPort != want {
				t.Errorf("the gateway's %s left as %s:%d, want %s:%d: %s", kind, p.Src, p.SPort, lab.RouterWANAddr, want, p)
			}
		}
		var lines []string
		for k, n := range counts {
			lines = append(lines, fmt.Sprintf("%s: %d", k, n))
		}
		slices.Sort(lines)
		t.Logf("outbound IPsec on rtr-wan:\n%s", strings.Join(lines, "\n"))
		for _, want := range []string{"IKE 198.18.0.1:500->500", "IKE 198.18.0.1:4500->4500", "ESP-in-UDP 198.18.0.1:4500->4500"} {
			if counts[want] == 0 {
				t.Errorf("no %s from the gateway on the WAN side", want)
			}
		}
	})
	t.Run("every ESP-in-UDP byte crosses the router, per SPI and direction", func(t *testing.T) {
		checkESPBytesConserved(t, lab.WANAddr, wanPkts, lanPkts)
	})
	t.Run("no captured packet is malformed", func(t *testing.T) {
		checkNoBrokenPackets(t, wanCap.path, lanCap.path)
	})
}

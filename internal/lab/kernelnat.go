package lab

import (
	"fmt"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// KernelNATTable is the nftables table KernelMasquerade installs in the
// router namespace.
const KernelNATTable = "vpnmasq_kernel_masquerade"

// KernelMasquerade turns the router namespace into the router most Linux
// hosts are: IPv4 forwarding on and the kernel's own masquerade of the LAN
// prefix out of the WAN interface, as `nft` would install it:
//
//	table ip vpnmasq_kernel_masquerade {
//		chain post {
//			type nat hook postrouting priority srcnat;
//			oifname "rtr-wan" ip saddr 192.168.77.0/24 masquerade
//		}
//	}
//
// No conntrack helper is assigned (PPTP's GRE then has no Call ID
// translation). It is the reference `vpnmasq demo --compare` and the tests
// hold vpnmasq against; run it instead of the router, never beside it. The
// table and the setting go with the namespace.
func (l *Lab) KernelMasquerade() error {
	return l.Router.Do(func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0); err != nil {
			return fmt.Errorf("lab: enabling forwarding in %s: %w", l.Router.Name, err)
		}
		c, err := nftables.New()
		if err != nil {
			return fmt.Errorf("lab: nftables: %w", err)
		}
		t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: KernelNATTable})
		post := c.AddChain(&nftables.Chain{Name: "post", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
		ifname := make([]byte, 16)
		copy(ifname, RouterWANIf)
		prefix := LANPrefix.Masked().Addr().As4()
		mask := net4Mask(LANPrefix.Bits())
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, // saddr
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask[:], Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: prefix[:]},
			&expr.Masq{},
		}})
		if err := c.Flush(); err != nil {
			return fmt.Errorf("lab: installing the kernel masquerade in %s: %w", l.Router.Name, err)
		}
		return nil
	})
}

// net4Mask is the netmask of an IPv4 prefix length.
func net4Mask(bits int) [4]byte {
	m := ^uint32(0) << (32 - bits)
	return [4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// The comparison (demo --compare): once vpnmasq has stopped, the router
// namespace becomes a plain Linux router, forwarding with one nftables
// masquerade rule, and the same VPN checks run through it. Linux tracks
// ESP and GRE without a helper by address alone and gives a second LAN
// host's IKE another source port, which is what the checks show.

// compareKernel runs the VPN checks through the kernel's masquerade and prints
// them next to vpnmasq's results. The kernel's failures are the point, not
// the demo's: only what kept the comparison from running is returned.
func (d *demo) compareKernel(ctx context.Context, l *lab.Lab, lan3 *lab.NS) error {
	if err := l.KernelMasquerade(); err != nil {
		return err
	}
	d.printf("\nthe same VPN checks through the kernel's nftables masquerade (table ip %s in %s, forwarding on, no conntrack helpers):\n",
		lab.KernelNATTable, l.Router.Name)
	results, peers, failures := vpnChecks(ctx, l, lan3)
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VPN\tFROM\tVPNMASQ\tKERNEL\tKERNEL NOTE")
	for _, r := range results {
		kernel, note := "ok", r.note
		if r.err != nil {
			kernel, note = "FAIL", r.err.Error()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.what, r.from, d.vpnmasqResult(r), kernel, note)
	}
	tw.Flush()
	// Closing a peer whose traffic the kernel misrouted may fail too;
	// that is part of the kernel's result, not a failure of the demo.
	if err := peers.close(); err != nil {
		d.printf("(closing the peers after the kernel's run: %v)\n", err)
	}
	d.printf("\n")
	return errors.Join(failures...)
}

// vpnmasqResult is vpnmasq's result for the same check as r.
func (d *demo) vpnmasqResult(r vpnResult) string {
	for _, v := range d.vpnResults {
		if v.what == r.what && v.from == r.from {
			if v.err != nil {
				return "FAIL"
			}
			return "ok"
		}
	}
	return "-"
}

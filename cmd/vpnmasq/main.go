// Command vpnmasq is a userspace IPv4 masquerading router that lets VPN
// traffic through: LAN hosts point their default route at it, it captures
// their packets on a TUN device, masquerades them behind the WAN address and
// sends them out of the WAN interface as Ethernet frames (AF_PACKET), or
// through a raw socket where a frame cannot be addressed yet.
//
//	vpnmasq run [--config FILE]    run the router (embedded default without a file)
//	vpnmasq check --config FILE    validate a configuration and its ports on this host (exit 2 on errors)
//	vpnmasq status [--json|--health|--watch] print the running router's tables (admin socket)
//	vpnmasq reload                 make the running router re-read its file (like SIGHUP)
//	vpnmasq demo [--bytes N]       build a throwaway namespace lab and show it working
//	vpnmasq version
package main

import (
	"fmt"
	"os"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `usage: vpnmasq <command> [flags]

commands:
  run [--config FILE]   run the router (default file: /etc/vpnmasq/vpnmasq.toml when it
                        exists, else the embedded default); SIGINT or SIGTERM stop it,
                        SIGHUP re-reads the file (see reload)
  check --config FILE   validate a configuration file, its ports against the ephemeral
                        ports of this network namespace included; exit 2 on errors
  status [--json | --health | --watch [--interval DURATION]] [--socket PATH]
                        print the running router's mappings and VPN sessions through its
                        admin socket (default /run/vpnmasq/admin.sock; root); --health
                        only checks that it answers; --watch redraws the tables every
                        interval (default 2s) like top, until Ctrl-C
  reload [--socket PATH]
                        make the running router re-read its configuration file, as
                        SIGHUP does: timeouts, limits, forwards, no_nat, admin access,
                        DNS upstreams and log level apply live, keeping every mapping;
                        interfaces, addresses and the TUN need a restart; exit 1 when
                        the file has problems (they are printed, nothing changes)
  demo [--bytes N]      build a throwaway network-namespace lab, route HTTP, UDP and
                        ping through the real router, print the NAT table, clean up
  version               print the version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	switch cmd {
	case "run":
		os.Exit(cmdRun(args))
	case "check":
		os.Exit(cmdCheck(args))
	case "status":
		os.Exit(cmdStatus(args))
	case "reload":
		os.Exit(cmdReload(args))
	case "demo":
		os.Exit(cmdDemo(args))
	case "version", "--version":
		fmt.Println("vpnmasq", version)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "vpnmasq: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
}

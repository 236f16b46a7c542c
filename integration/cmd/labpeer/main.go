// Command labpeer is the traffic peer of the container integration test.
// It is built static (CGO_ENABLED=0) and copied into the test image, so the
// hosts on both sides of the router container run it without anything else
// installed:
//
//	labpeer http-server ADDR           GET / answers the client's address as seen here,
//	                                   GET /blob?bytes=N answers N bytes of lab.Blob,
//	                                   GET /blob?bytes=N&over=D the same spread over D (e.g. 4s)
//	labpeer udp-echo ADDR              sends every datagram back to its sender
//	labpeer udp-client SERVER MESSAGE  sends MESSAGE to SERVER (host:port), prints the echo
//	labpeer pptp-server ADDR           a PPTP server (PAC) on ADDR:1723 that echoes the
//	                                   GRE of its calls from a raw socket on ADDR; on
//	                                   SIGUSR1 it sends one GRE packet unasked on each call
//	labpeer pptp-client SERVER CALLID  one PPTP call to SERVER:1723 with Call ID CALLID:
//	                                   3 GRE packets each way, then call and connection cleared
//	labpeer pptp-hold SERVER CALLID    the same call, held after the 3 packets until the
//	                                   server's unasked GRE arrives (at most 2 minutes),
//	                                   then 3 more each way, then cleared
//
// Servers print one line when they listen and one per request with the
// client address they saw (the container's log is where the test reads
// them), and exit 0 on SIGTERM or SIGINT. Clients print one summary line and
// exit 0, or the reason and exit 1; pptp-hold also prints a line when it
// starts waiting and one when the server's GRE arrives. Usage errors exit
// 2.
//
// pptp-hold and pptp-server's SIGUSR1 let a test hold a call across a
// restart of the NAT between them and have the server speak first after
// it (`docker kill --signal USR1` reaches the server as the container's
// PID 1).
//
// The PPTP side uses pptppeer's codec (control messages, enhanced GRE) with
// sockets of its own: pptppeer's Client and Server open theirs in a lab
// namespace by setns(2), which a container does not allow without
// CAP_SYS_ADMIN.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: labpeer <command> [args]

  http-server ADDR           serve GET / (client address) and GET /blob?bytes=N[&over=D]
  udp-echo ADDR              echo UDP datagrams
  udp-client SERVER MESSAGE  send one datagram, print the echo
  pptp-server ADDR           PPTP server on ADDR:1723 echoing its calls' GRE;
                             SIGUSR1: one GRE packet unasked on each call
  pptp-client SERVER CALLID  one PPTP call with 3 GRE packets each way
  pptp-hold SERVER CALLID    the same, held until the server's GRE arrives unasked
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	want := map[string]int{
		"http-server": 1, "udp-echo": 1, "udp-client": 2, "pptp-server": 1, "pptp-client": 2, "pptp-hold": 2,
	}
	n, ok := want[cmd]
	if !ok {
		fmt.Fprintf(stderr, "labpeer: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if len(args) != n {
		fmt.Fprintf(stderr, "labpeer %s: want %d arguments, got %d\n\n%s", cmd, n, len(args), usage)
		return 2
	}
	var err error
	switch cmd {
	case "http-server":
		err = httpServer(ctx, args[0], stdout)
	case "udp-echo":
		err = udpEcho(ctx, args[0], stdout)
	case "udp-client":
		err = udpClient(args[0], args[1], stdout)
	case "pptp-server":
		err = pptpServer(ctx, args[0], stdout)
	case "pptp-client", "pptp-hold":
		var id uint16
		if id, err = parseCallID(args[1]); err == nil {
			err = pptpClient(args[0], id, cmd == "pptp-hold", stdout)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "labpeer %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/hostnet"
	"github.com/vpnmasq/vpnmasq/router"
)

// defaultConfigPath is read by `run` without --config when it exists (the
// container image mounts the configuration there).
const defaultConfigPath = "/etc/vpnmasq/vpnmasq.toml"

const runAbout = `Runs the router until SIGINT or SIGTERM, which tear down what it set up
on the host, but for the hold table: with [state] on, it drops the NAT's
traffic for [state] hold so the host resets nothing before the next start,
which deletes it. Without --config it reads ` + defaultConfigPath + ` when that
exists, else the embedded default. SIGHUP re-reads the file (see
` + "`vpnmasq reload`" + `); SIGUSR1 logs the NAT table. It needs root: it
creates a TUN device and changes routing and nftables.`

// cmdRun implements `vpnmasq run [--config FILE]`.
func cmdRun(args []string) int {
	flags := newFlags("run", "run [--config FILE]", runAbout, os.Stderr)
	path := flags.String("config", "", "configuration `FILE` (TOML)")
	if code, ok := parseFlags(flags, args); !ok {
		return code
	}
	cfg, host, code := loadRunConfig(*path)
	if cfg == nil {
		return code
	}
	log := newLogger(cfg.Log, os.Stderr)
	for _, w := range cfg.Warnings {
		log.Warn().Str("config", cfg.Source).Msg(w.Error())
	}
	router.Version = version
	r, err := router.New(cfg, host, log)
	if err != nil {
		log.Error().Err(err).Msg("configuration")
		return 2
	}
	log.Info().
		Str("config", cfg.Source).
		Str("wan", cfg.WAN.Interface).
		Stringer("wan_addr", cfg.WAN.Address).
		Int("wan_mtu", cfg.WAN.MTU).
		Strs("lan", cfg.LAN.Interfaces).
		Str("prefixes", joinStrings(cfg.LAN.Prefixes)).
		Str("no_nat", joinStrings(cfg.Routing.NoNAT)).
		Stringer("port_range", cfg.NAT.PortRange).
		Stringer("ephemeral_ports", host.Ephemeral). // the host's own sockets' (checked apart from port_range)
		Int("forwards", len(cfg.Forwards)).
		Stringer("service_addr", cfg.Services.Address).
		Msg("starting")
	return serve(r, cfg, log)
}

// loadRunConfig loads the configuration run uses (path, else
// defaultConfigPath when it exists, else the embedded default) and
// resolves it against the host's interfaces, which it reads; nothing on
// the host changes. On failure it has printed why and returns a nil
// configuration and the exit code: 2 for the configuration's problems, 1
// when the host cannot be read.
func loadRunConfig(path string) (*config.Config, *config.Host, int) {
	if path == "" {
		if _, err := os.Stat(defaultConfigPath); err == nil {
			path = defaultConfigPath
		}
	}
	cfg := config.Default()
	if path != "" {
		var err error
		if cfg, err = config.Load(path); err != nil {
			printConfigErrors(os.Stderr, err)
			return nil, nil, 2
		}
	}
	host, err := hostnet.ReadHost()
	if err != nil {
		fmt.Fprintf(os.Stderr, "vpnmasq: reading interfaces: %v\n", err)
		return nil, nil, 1
	}
	if err := cfg.Resolve(host); err != nil {
		printConfigErrors(os.Stderr, err)
		return nil, nil, 2
	}
	return cfg, host, 0
}

// serve starts the router and runs it until SIGINT or SIGTERM, logging the
// NAT table on SIGUSR1 and reloading the configuration on SIGHUP. It
// returns the exit code: 0 after a clean stop, 1 when the start or the
// router failed.
func serve(r *router.Router, cfg *config.Config, log zerolog.Logger) int {
	// Signals are caught before anything changes on the host: a SIGTERM
	// during start-up still ends in a clean teardown, never in Go's default
	// exit that would leave rules and tables behind.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP) // Go's default for SIGHUP is to exit without the teardown
	if err := r.Start(); err != nil {
		log.Error().Err(err).Msg("start failed; host left unchanged")
		return 1
	}
	log.Info().
		Str("tun", cfg.TUN.Name).
		Str("wan", cfg.WAN.Interface).
		Stringer("wan_addr", cfg.WAN.Address).
		Strs("lan", cfg.LAN.Interfaces).
		Str("prefixes", joinStrings(cfg.LAN.Prefixes)).
		Stringer("port_range", cfg.NAT.PortRange).
		Int64("startup_ms", router.SinceProcessStart().Milliseconds()). // a restart's gap, beyond the old process's stop
		Msg("router ready")

	go func() {
		for range usr1 {
			dumpTable(log, r)
		}
	}()
	go reloadOnSIGHUP(hup, r, log)
	if err := r.Run(ctx); err != nil {
		log.Error().Err(err).Msg("router failed")
		return 1
	}
	log.Info().Msg("router stopped")
	return 0
}

// dumpTable logs the NAT table, one line per mapping (SIGUSR1).
func dumpTable(log zerolog.Logger, r *router.Router) {
	ms := r.Engine().Mappings()
	for _, m := range ms {
		log.Info().
			Str("proto", m.Proto).
			Stringer("lan", m.LAN).
			Stringer("wan", m.WAN).
			Stringer("remote", m.Remote).
			Int("flows", m.Flows).
			Bool("static", m.Static).
			Str("age", m.Age.Round(time.Millisecond).String()).
			Str("idle", m.Idle.Round(time.Millisecond).String()).
			Msg("nat mapping")
	}
	calls := r.Engine().PPTPCalls()
	for _, c := range calls {
		log.Info().
			Stringer("client", c.Client).
			Stringer("server", c.Server).
			Uint16("call_id", c.CallID).
			Uint16("masq_call_id", c.MasqCallID).
			Uint16("peer_call_id", c.PeerCallID).
			Str("state", c.State).
			Str("connection", c.Connection).
			Uint64("gre_out", c.GREOut).
			Uint64("gre_in", c.GREIn).
			Str("age", c.Age.Round(time.Millisecond).String()).
			Msg("pptp call")
	}
	log.Info().Int("mappings", len(ms)).Int("pptp_calls", len(calls)).Msg("nat table")
}

// newLogger builds the zerolog logger the configuration asks for: console
// output on a terminal, JSON otherwise ("auto").
func newLogger(c config.Log, w *os.File) zerolog.Logger {
	level, err := zerolog.ParseLevel(c.Level)
	if err != nil || c.Level == "" {
		level = zerolog.InfoLevel
	}
	var out io.Writer = w
	switch c.Format {
	case "console":
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	case "json":
	default:
		if isatty.IsTerminal(w.Fd()) {
			out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
		}
	}
	// The level is the global one, so that a reload changes it for every
	// logger derived from this one (see router.Reload).
	zerolog.SetGlobalLevel(level)
	return zerolog.New(out).With().Timestamp().Logger()
}

// printConfigErrors prints each configuration problem on its own line.
func printConfigErrors(w io.Writer, err error) {
	var es *config.Errors
	if errors.As(err, &es) {
		for _, e := range *es {
			fmt.Fprintln(w, e.Error())
		}
		return
	}
	fmt.Fprintln(w, err)
}

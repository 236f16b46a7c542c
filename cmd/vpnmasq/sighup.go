package main

import (
	"os"

	"github.com/rs/zerolog"

	"github.com/vpnmasq/vpnmasq/router"
)

// reloadOnSIGHUP re-reads the configuration file on each SIGHUP, as
// `vpnmasq reload` does through the admin socket. The router logs what it
// applied, what needs a restart, or every problem of a refused file as
// "file:line: key: message"; a SIGHUP during a reload waits for it.
func reloadOnSIGHUP(hup <-chan os.Signal, r *router.Router, log zerolog.Logger) {
	for range hup {
		log.Info().Msg("SIGHUP: reloading the configuration")
		r.ReloadConfig()
	}
}

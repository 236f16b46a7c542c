// Package deploy holds the deployment files of vpnmasq and the tests that
// keep them true to the router: vpnmasq.service (a systemd unit), grafana-
// dashboard.json and prometheus.yml (monitoring), docker-compose.yml with
// vpnmasq.toml (the container setup of README.md). It has no code: the
// tests check the files against the binary, the metrics the admin package
// exports and the README's container commands.
package deploy

// Package hostnet is vpnmasq's host plumbing: the policy routing, nftables
// guards and sysctls around the TUN device, the cleanup of what a dead run
// left, and the reading of the host's interfaces and ephemeral ports that
// the configuration is resolved against.
package hostnet

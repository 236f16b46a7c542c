package nat

import "time"

// IPsecConfig holds the IKE and ESP lifetimes and limits ([ipsec] in the
// configuration). Zero values take the defaults below.
type IPsecConfig struct {
	// IKETimeout is how long an IKE session (and a NAT-T flow on 4500)
	// lives without traffic. It must outlast the peers' rekey interval, or
	// a rekey started by the remote finds no LAN host. Default 35 min.
	IKETimeout time.Duration
	// ESPTimeout is how long an established SPI pair lives without
	// traffic. Default 35 min.
	ESPTimeout time.Duration
	// ESPWait is how long at most a new outbound SPI holds its remote for
	// its inbound SPI, holding back other hosts' new SPIs, while its host
	// keeps its reply window open by retransmitting (see esp.go).
	// Default 2 min.
	ESPWait time.Duration
	// ESPRetries is how often the waiting host's retransmissions may
	// re-arm the wait before its SPI is squelched. Default 5.
	ESPRetries int
	// ESPSquelch is how long a squelched SPI is dropped. Default 30 s.
	ESPSquelch time.Duration
	// MaxESP bounds the SPI pairs, and separately the IKE sessions and
	// the NAT-T flows that keep WAN port 4500. Default 4096. The per-host
	// shares are in Limits (max_esp_per_host, max_ike_per_host,
	// max_remote_ike).
	MaxESP int
}

package nat

import "sync/atomic"

// DropReason says why a packet was not forwarded. Every drop in the router is
// counted under exactly one reason, so operators can tell a misconfigured LAN
// from an attack from a full table.
type DropReason uint8

const (
	DropNone               DropReason = iota
	DropMalformed                     // truncated or inconsistent headers
	DropNotIPv4                       // version nibble is not 4
	DropBadChecksum                   // IPv4 header checksum wrong
	DropBadICMPChecksum               // ICMP error with a bad ICMP or embedded IP checksum (RFC 5508 REQ-3)
	DropMartian                       // source or destination that must never be routed
	DropSpoofedLAN                    // LAN source address arriving from the WAN
	DropUnsolicited                   // inbound traffic that matches no mapping or forward
	DropUnsupported                   // an IP protocol the NAT cannot masquerade
	DropNoPorts                       // port range exhausted for this protocol
	DropTableFull                     // a global bound reached (max_flows, max_mappings, max_esp, max_calls, ...)
	DropFragment                      // fragment whose first fragment was dropped, or passed untracked (fragment table full)
	DropTTLExceeded                   // TTL would reach zero (ICMP Time Exceeded sent)
	DropTooBig                        // larger than the WAN MTU with DF set (Fragmentation Needed sent)
	DropICMPError                     // ICMP error that matches no mapping
	DropNoService                     // addressed to the service address, no service answers yet
	DropLANtoWANAddr                  // LAN host to the WAN address on a port the NAT does not own
	DropWriteFailed                   // the kernel refused to send it
	DropIKEMalformed                  // UDP 500/4500 payload that is not IKE, NAT-T ESP or a keepalive
	DropIKECollision                  // IKE initiator SPI live for another LAN host to the same remote
	DropESPZeroSPI                    // ESP with the reserved SPI 0
	DropESPHeldBack                   // new outbound SPI while another host's new SPI to the remote waits
	DropESPSquelched                  // outbound SPI that never got an answer, squelched for a while
	DropESPSpoofed                    // inbound ESP with an SPI bound to another remote address
	DropESPUnbound                    // inbound ESP whose SPI no LAN host can own yet
	DropAHNotMasqueradable            // AH would need masquerading, which its integrity check forbids
	DropWANOverflow                   // the kernel dropped it: the WAN capture socket's buffer was full
	DropPPTPMalformed                 // PPTP control data after a malformed message (bad magic, type or length)
	DropPPTPOutOfOrder                // PPTP control segment beyond a gap in the stream: the sender retransmits
	DropPPTPSplitCallID               // PPTP control segment holding only part of a Call ID: the sender retransmits
	DropPPTPFragmented                // fragmented PPTP control segment
	DropGREMalformed                  // GRE header truncated or inconsistent, or enhanced GRE without a key
	DropGREUnknownCall                // enhanced GRE whose Call ID names no masqueraded call
	DropGRERemoteBusy                 // non-PPTP GRE to a remote already bound to another LAN host
	DropTCPOutOfWindow                // TCP segment outside the connection's sequence window, or invalid in its state
	DropHostQuota                     // a LAN host holds its share of a table (limits.max_*_per_host)
	DropRateLimited                   // new flows faster than limits.host_flow_rate or forward_flow_rate
	DropFragmentBufferFull            // fragment before its first fragment, not held (or evicted): a bound of the fragment hold reached
	DropFragmentExpired               // fragment held for its first fragment, which did not come in time
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{
	DropNone:               "none",
	DropMalformed:          "malformed",
	DropNotIPv4:            "not_ipv4",
	DropBadChecksum:        "bad_checksum",
	DropBadICMPChecksum:    "bad_icmp_checksum",
	DropMartian:            "martian",
	DropSpoofedLAN:         "spoofed_lan_source",
	DropUnsolicited:        "unsolicited",
	DropUnsupported:        "unsupported_protocol",
	DropNoPorts:            "no_free_port",
	DropTableFull:          "table_full",
	DropFragment:           "unmatched_fragment",
	DropTTLExceeded:        "ttl_exceeded",
	DropTooBig:             "too_big",
	DropICMPError:          "icmp_error_unmatched",
	DropNoService:          "no_local_service",
	DropLANtoWANAddr:       "lan_to_wan_address",
	DropWriteFailed:        "write_failed",
	DropIKEMalformed:       "ike_malformed",
	DropIKECollision:       "ike_cookie_collision",
	DropESPZeroSPI:         "esp_zero_spi",
	DropESPHeldBack:        "esp_held_back",
	DropESPSquelched:       "esp_squelched",
	DropESPSpoofed:         "esp_spoofed",
	DropESPUnbound:         "esp_unbound",
	DropAHNotMasqueradable: "ah_not_masqueradable",
	DropWANOverflow:        "wan_rx_overflow",
	DropPPTPMalformed:      "pptp_malformed",
	DropPPTPOutOfOrder:     "pptp_out_of_order",
	DropPPTPSplitCallID:    "pptp_split_call_id",
	DropPPTPFragmented:     "pptp_fragmented",
	DropGREMalformed:       "gre_malformed",
	DropGREUnknownCall:     "gre_unknown_call",
	DropGRERemoteBusy:      "gre_remote_busy",
	DropTCPOutOfWindow:     "tcp_out_of_window",
	DropHostQuota:          "host_quota",
	DropRateLimited:        "rate_limited",
	DropFragmentBufferFull: "fragment_buffer_full",
	DropFragmentExpired:    "fragment_expired",
}

func (r DropReason) String() string {
	if r < numDropReasons {
		return dropReasonNames[r]
	}
	return "unknown"
}

// AllDropReasons lists every reason except DropNone, in order.
func AllDropReasons() []DropReason {
	rs := make([]DropReason, 0, numDropReasons-1)
	for r := DropReason(1); r < numDropReasons; r++ {
		rs = append(rs, r)
	}
	return rs
}

// DropCounters counts drops by reason. The zero value is ready; it is safe
// for concurrent use and never allocates.
type DropCounters struct {
	n [numDropReasons]atomic.Uint64
}

// Add counts one drop.
func (c *DropCounters) Add(r DropReason) {
	if r < numDropReasons {
		c.n[r].Add(1)
	}
}

// AddN counts n drops at once (counts gathered elsewhere, e.g. by the kernel).
func (c *DropCounters) AddN(r DropReason, n uint64) {
	if r < numDropReasons && n > 0 {
		c.n[r].Add(n)
	}
}

// Get returns the count for one reason.
func (c *DropCounters) Get(r DropReason) uint64 {
	if r < numDropReasons {
		return c.n[r].Load()
	}
	return 0
}

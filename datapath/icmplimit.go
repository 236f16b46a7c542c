package datapath

import "sync"

// ICMP errors the router builds (Time Exceeded, Fragmentation Needed,
// Communication Administratively Prohibited) are rate-limited the way
// Linux limits its own (net.ipv4.icmp_ratelimit per destination,
// icmp_msgs_per_sec overall): anyone who can make the router send errors —
// a WAN host forging sources with TTL 1, a LAN host sending big DF packets
// — must not turn it into a reflector or fill its queues.
//
// Each destination has a token bucket (limits.icmp_error_rate per second,
// limits.icmp_error_burst deep); all errors together share a global bucket
// of icmpGlobalRate per second. An error is sent only when both have a
// token; otherwise it is suppressed and counted (Stats.ICMPErrorsSuppressed).

const (
	// icmpGlobalRate and icmpGlobalBurst bound all ICMP errors together,
	// as Linux's net.ipv4.icmp_msgs_per_sec and icmp_msgs_burst do.
	icmpGlobalRate  = 1000
	icmpGlobalBurst = 50
	// icmpMaxDestinations bounds the per-destination buckets. A full table
	// is swept of buckets that have refilled (they carry no information) at
	// most once a second; a destination that finds no room gets no error,
	// so a flood of forged sources costs bounded memory and CPU.
	icmpMaxDestinations = 4096
)

// milli is the token unit: buckets count thousandths of a token, so rates
// of a few per second refill smoothly in integer arithmetic.
const milli = 1000

type tokenBucket struct {
	tokens int64 // thousandths of a token
	last   int64 // nanoseconds, the limiter's clock
}

// refill adds the tokens earned since b's last use, up to burst.
func (b *tokenBucket) refill(now int64, rate, burst int64) {
	if elapsed := now - b.last; elapsed > 0 {
		// elapsed*rate/1e6 is thousandths of a token; cap elapsed first so
		// the product cannot overflow after a long idle time.
		if full := burst * 1e9 / max(rate, 1); elapsed > full {
			elapsed = full
		}
		b.tokens = min(b.tokens+elapsed*rate/1e6, burst*milli)
	}
	b.last = now
}

// icmpLimiter decides whether the router may send one more ICMP error. Both
// packet loops use it; the lock is taken only when an error is about to be
// built, never for ordinary packets. It does not allocate once its table
// has grown.
type icmpLimiter struct {
	mu          sync.Mutex // guards everything below: both loops and a reload use the limiter
	rate, burst int64      // per destination
	globalRate  int64
	globalBurst int64
	global      tokenBucket
	dests       map[[4]byte]tokenBucket
	maxDests    int
	lastSweep   int64
}

func newICMPLimiter(rate, burst int) *icmpLimiter {
	if rate < 1 {
		rate = 1
	}
	if burst < 1 {
		burst = 1
	}
	return &icmpLimiter{
		rate: int64(rate), burst: int64(burst),
		globalRate: icmpGlobalRate, globalBurst: icmpGlobalBurst,
		global:    tokenBucket{tokens: icmpGlobalBurst * milli},
		dests:     make(map[[4]byte]tokenBucket, icmpMaxDestinations),
		maxDests:  icmpMaxDestinations,
		lastSweep: -1e18,
	}
}

// allow reports whether an error to dst may be sent at now (nanoseconds on
// any monotonic clock), taking a token from dst's bucket and the global one
// when it may.
func (l *icmpLimiter) allow(dst [4]byte, now int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.dests[dst]
	if !ok {
		if len(l.dests) >= l.maxDests && !l.sweep(now) {
			return false
		}
		b = tokenBucket{tokens: l.burst * milli, last: now}
	}
	b.refill(now, l.rate, l.burst)
	l.global.refill(now, l.globalRate, l.globalBurst)
	if b.tokens < milli || l.global.tokens < milli {
		l.dests[dst] = b
		return false
	}
	b.tokens -= milli
	l.global.tokens -= milli
	l.dests[dst] = b
	return true
}

// sweep forgets the destinations whose buckets have refilled, at most once
// a second, and reports whether there is room for one more.
func (l *icmpLimiter) sweep(now int64) bool {
	if now-l.lastSweep < 1e9 {
		return len(l.dests) < l.maxDests
	}
	l.forgetFull(now)
	return len(l.dests) < l.maxDests
}

// expire is the periodic sweep (the router's one-second ticker), so the
// table shrinks after a burst even when it never filled up.
func (l *icmpLimiter) expire(now int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forgetFull(now)
}

func (l *icmpLimiter) forgetFull(now int64) {
	l.lastSweep = now
	for dst, b := range l.dests {
		b.refill(now, l.rate, l.burst)
		if b.tokens >= l.burst*milli {
			delete(l.dests, dst)
		}
	}
}

// setRate changes the per-destination rate and burst of ICMP errors.
func (l *icmpLimiter) setRate(rate, burst int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rate, l.burst = int64(max(rate, 1)), int64(max(burst, 1))
}

package nat

import "time"

// Clock tells the engine the time. The router passes the system clock; tests
// pass a FakeClock and move it by hand, so every timer is tested without
// sleeping.
type Clock interface {
	Now() time.Time
}

// SystemClock is the real clock.
type SystemClock struct{}

func (SystemClock) Now() time.Time { return time.Now() }

// FakeClock is a manually advanced clock for tests and fuzzing.
type FakeClock struct{ T time.Time }

func (c *FakeClock) Now() time.Time { return c.T }

// Advance moves the clock forward by d.
func (c *FakeClock) Advance(d time.Duration) { c.T = c.T.Add(d) }

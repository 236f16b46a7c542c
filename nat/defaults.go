package nat

import "time"

// Defaults: what the engine takes for a setting its Config leaves zero.
// config.Default writes the same values for the keys a configuration file
// leaves out, and config/example.toml names them (a test compares the
// three), so that every default is written here once.
const (
	DefaultUDPTimeout            = 5 * time.Minute             // RFC 4787 REQ-5: at least 2 min, 5 recommended
	DefaultTCPEstablishedTimeout = 2*time.Hour + 4*time.Minute // RFC 5382 REQ-5
	DefaultTCPTransitoryTimeout  = 4 * time.Minute             // RFC 5382 REQ-5
	DefaultICMPTimeout           = 60 * time.Second            // RFC 5508 REQ-2
	DefaultMaxMappings           = 65536
)

// DefaultPorts is the mapping range of a Config without one. It stops
// below 32768, where Linux's ephemeral ports (net.ipv4.ip_local_port_range)
// begin, so that the host's own connections keep theirs.
var DefaultPorts = PortRange{First: 20000, Last: 32767}

// Defaults of Limits.
const (
	DefaultMaxFlows            = 131072 // like nf_conntrack_max
	DefaultMaxFlowsPerHost     = 8192
	DefaultMaxMappingsPerHost  = 4096
	DefaultMaxESPPerHost       = 64
	DefaultMaxIKEPerHost       = 64
	DefaultMaxRemoteIKE        = 4
	DefaultRemoteIKETimeout    = 30 * time.Second
	DefaultMaxCallsPerHost     = 64
	DefaultMaxFragmentsPerHost = 256
	DefaultHostFlowRate        = 1000
	DefaultHostFlowBurst       = 2000
	DefaultForwardFlowRate     = 50
	DefaultForwardFlowBurst    = 100
	DefaultUnrepliedTimeout    = 30 * time.Second
)

// Defaults of IPsecConfig.
const (
	DefaultIKETimeout = 35 * time.Minute // outlasts the usual rekey intervals
	DefaultESPTimeout = 35 * time.Minute
	DefaultESPWait    = 2 * time.Minute
	DefaultESPRetries = 5
	DefaultESPSquelch = 30 * time.Second
	DefaultMaxESP     = 4096
)

// Defaults of PPTPConfig.
const (
	DefaultCallSetupTimeout = 2 * time.Minute
	DefaultTeardownGrace    = 30 * time.Second
	DefaultGRETimeout       = 5 * time.Minute
	DefaultMaxCalls         = 4096
)

// withDefaults fills what a Config leaves zero, as New does.
func (cfg Config) withDefaults() Config {
	orDefault(&cfg.UDPTimeout, DefaultUDPTimeout)
	orDefault(&cfg.TCPEstablishedTimeout, DefaultTCPEstablishedTimeout)
	orDefault(&cfg.TCPTransitoryTimeout, DefaultTCPTransitoryTimeout)
	orDefault(&cfg.ICMPTimeout, DefaultICMPTimeout)
	orDefault(&cfg.MaxMappings, DefaultMaxMappings)
	cfg.Limits = cfg.Limits.withDefaults()
	cfg.IPsec = cfg.IPsec.withDefaults()
	cfg.PPTP = cfg.PPTP.withDefaults()
	return cfg
}

func (l Limits) withDefaults() Limits {
	orDefault(&l.MaxFlows, DefaultMaxFlows)
	orDefault(&l.MaxFlowsPerHost, DefaultMaxFlowsPerHost)
	orDefault(&l.MaxMappingsPerHost, DefaultMaxMappingsPerHost)
	orDefault(&l.MaxESPPerHost, DefaultMaxESPPerHost)
	orDefault(&l.MaxIKEPerHost, DefaultMaxIKEPerHost)
	orDefault(&l.MaxRemoteIKE, DefaultMaxRemoteIKE)
	orDefault(&l.MaxCallsPerHost, DefaultMaxCallsPerHost)
	orDefault(&l.MaxFragmentsPerHost, DefaultMaxFragmentsPerHost)
	orDefault(&l.HostFlowRate, DefaultHostFlowRate)
	orDefault(&l.HostFlowBurst, DefaultHostFlowBurst)
	orDefault(&l.ForwardFlowRate, DefaultForwardFlowRate)
	orDefault(&l.ForwardFlowBurst, DefaultForwardFlowBurst)
	orDefault(&l.RemoteIKETimeout, DefaultRemoteIKETimeout)
	orDefault(&l.UnrepliedTimeout, DefaultUnrepliedTimeout)
	return l
}

func (c IPsecConfig) withDefaults() IPsecConfig {
	orDefault(&c.IKETimeout, DefaultIKETimeout)
	orDefault(&c.ESPTimeout, DefaultESPTimeout)
	orDefault(&c.ESPWait, DefaultESPWait)
	orDefault(&c.ESPRetries, DefaultESPRetries)
	orDefault(&c.ESPSquelch, DefaultESPSquelch)
	orDefault(&c.MaxESP, DefaultMaxESP)
	return c
}

func (c PPTPConfig) withDefaults() PPTPConfig {
	orDefault(&c.CallSetupTimeout, DefaultCallSetupTimeout)
	orDefault(&c.TeardownGrace, DefaultTeardownGrace)
	orDefault(&c.GRETimeout, DefaultGRETimeout)
	orDefault(&c.MaxCalls, DefaultMaxCalls)
	return c
}

// orDefault sets *v to d when it is zero (or negative, which no setting
// means): a Config leaves zero what it wants the default of.
func orDefault[T ~int | ~int64 | ~float64](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

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
	if cfg.UDPTimeout <= 0 {
		cfg.UDPTimeout = DefaultUDPTimeout
	}
	if cfg.TCPEstablishedTimeout <= 0 {
		cfg.TCPEstablishedTimeout = DefaultTCPEstablishedTimeout
	}
	if cfg.TCPTransitoryTimeout <= 0 {
		cfg.TCPTransitoryTimeout = DefaultTCPTransitoryTimeout
	}
	if cfg.ICMPTimeout <= 0 {
		cfg.ICMPTimeout = DefaultICMPTimeout
	}
	if cfg.MaxMappings <= 0 {
		cfg.MaxMappings = DefaultMaxMappings
	}
	cfg.Limits = cfg.Limits.withDefaults()
	cfg.IPsec = cfg.IPsec.withDefaults()
	cfg.PPTP = cfg.PPTP.withDefaults()
	return cfg
}

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.MaxFlows, DefaultMaxFlows)
	def(&l.MaxFlowsPerHost, DefaultMaxFlowsPerHost)
	def(&l.MaxMappingsPerHost, DefaultMaxMappingsPerHost)
	def(&l.MaxESPPerHost, DefaultMaxESPPerHost)
	def(&l.MaxIKEPerHost, DefaultMaxIKEPerHost)
	def(&l.MaxRemoteIKE, DefaultMaxRemoteIKE)
	def(&l.MaxCallsPerHost, DefaultMaxCallsPerHost)
	def(&l.MaxFragmentsPerHost, DefaultMaxFragmentsPerHost)
	def(&l.HostFlowRate, DefaultHostFlowRate)
	def(&l.HostFlowBurst, DefaultHostFlowBurst)
	def(&l.ForwardFlowRate, DefaultForwardFlowRate)
	def(&l.ForwardFlowBurst, DefaultForwardFlowBurst)
	if l.RemoteIKETimeout <= 0 {
		l.RemoteIKETimeout = DefaultRemoteIKETimeout
	}
	if l.UnrepliedTimeout <= 0 {
		l.UnrepliedTimeout = DefaultUnrepliedTimeout
	}
	return l
}

func (c IPsecConfig) withDefaults() IPsecConfig {
	if c.IKETimeout <= 0 {
		c.IKETimeout = DefaultIKETimeout
	}
	if c.ESPTimeout <= 0 {
		c.ESPTimeout = DefaultESPTimeout
	}
	if c.ESPWait <= 0 {
		c.ESPWait = DefaultESPWait
	}
	if c.ESPRetries <= 0 {
		c.ESPRetries = DefaultESPRetries
	}
	if c.ESPSquelch <= 0 {
		c.ESPSquelch = DefaultESPSquelch
	}
	if c.MaxESP <= 0 {
		c.MaxESP = DefaultMaxESP
	}
	return c
}

func (c PPTPConfig) withDefaults() PPTPConfig {
	if c.CallSetupTimeout <= 0 {
		c.CallSetupTimeout = DefaultCallSetupTimeout
	}
	if c.TeardownGrace <= 0 {
		c.TeardownGrace = DefaultTeardownGrace
	}
	if c.GRETimeout <= 0 {
		c.GRETimeout = DefaultGRETimeout
	}
	if c.MaxCalls <= 0 {
		c.MaxCalls = DefaultMaxCalls
	}
	return c
}

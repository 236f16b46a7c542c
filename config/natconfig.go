package config

import (
	"fmt"

	"github.com/vpnmasq/vpnmasq/nat"
)

// NATConfig is the NAT engine's configuration for c: the WAN address,
// mapping range, timers, limits and forwards, with nothing left for the
// engine to default (Default already holds nat's defaults). The caller
// adds what only it knows, such as the clock and the logger.
func (c *Config) NATConfig() (nat.Config, error) {
	forwards := make([]nat.Forward, 0, len(c.Forwards))
	for _, f := range c.Forwards {
		proto, err := forwardProto(f.Proto)
		if err != nil {
			return nat.Config{}, err
		}
		forwards = append(forwards, nat.Forward{Proto: proto, To: f.To, ToPort: f.ToPort,
			Ports: nat.PortRange{First: f.Port.First, Last: f.Port.Last}})
	}
	filtering := nat.AddressDependentFiltering
	if c.NAT.UDPFiltering == UDPFilteringEndpointIndependent {
		filtering = nat.EndpointIndependentFiltering
	}
	l := c.Limits
	return nat.Config{
		WANAddr:               c.WAN.Address,
		Ports:                 nat.PortRange{First: c.NAT.PortRange.First, Last: c.NAT.PortRange.Last},
		UDPTimeout:            c.NAT.UDPTimeout,
		TCPEstablishedTimeout: c.NAT.TCPEstablishedTimeout,
		TCPTransitoryTimeout:  c.NAT.TCPTransitoryTimeout,
		ICMPTimeout:           c.NAT.ICMPTimeout,
		UDPFiltering:          filtering,
		MaxMappings:           c.NAT.MaxMappings,
		UDPInboundRefresh:     c.NAT.UDPInboundRefresh,
		Limits: nat.Limits{
			MaxFlows: l.MaxFlows, MaxFlowsPerHost: l.MaxFlowsPerHost, MaxMappingsPerHost: l.MaxMappingsPerHost,
			MaxESPPerHost: l.MaxESPPerHost, MaxIKEPerHost: l.MaxIKEPerHost, MaxRemoteIKE: l.MaxRemoteIKE,
			RemoteIKETimeout: l.RemoteIKETimeout, MaxCallsPerHost: l.MaxCallsPerHost,
			MaxFragmentsPerHost: l.MaxFragmentsPerHost, HostFlowRate: l.HostFlowRate, HostFlowBurst: l.HostFlowBurst,
			ForwardFlowRate: l.ForwardFlowRate, ForwardFlowBurst: l.ForwardFlowBurst, UnrepliedTimeout: l.UnrepliedTimeout,
		},
		Forwards: forwards,
		IPsec: nat.IPsecConfig{
			IKETimeout: c.IPsec.IKETimeout, ESPTimeout: c.IPsec.ESPTimeout, ESPWait: c.IPsec.ESPWait,
			ESPRetries: c.IPsec.ESPRetries, ESPSquelch: c.IPsec.ESPSquelch, MaxESP: c.IPsec.MaxESP,
		},
		PPTP: nat.PPTPConfig{
			CallSetupTimeout: c.PPTP.CallSetupTimeout, TeardownGrace: c.PPTP.TeardownGrace,
			GRETimeout: c.PPTP.GRETimeout, MaxCalls: c.PPTP.MaxCalls,
		},
	}, nil
}

// forwardProto is the IP protocol of a forward's proto key.
func forwardProto(proto string) (uint8, error) {
	switch proto {
	case "tcp":
		return nat.ProtoTCP, nil
	case "udp":
		return nat.ProtoUDP, nil
	case "gre":
		return nat.ProtoGRE, nil
	case "esp":
		return nat.ProtoESP, nil
	}
	return 0, fmt.Errorf("forward: unknown proto %q", proto)
}

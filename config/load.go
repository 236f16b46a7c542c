package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/vpnmasq/vpnmasq/nat"
)

// DefaultSource is Config.Source for the built-in configuration.
const DefaultSource = "<embedded default>"

// Default returns the built-in configuration: every setting at its default,
// interfaces and prefixes left for Resolve to take from the host.
func Default() *Config {
	return &Config{
		Source: DefaultSource,
		NAT: NAT{
			PortRange:             PortRange{First: nat.DefaultPorts.First, Last: nat.DefaultPorts.Last},
			UDPTimeout:            nat.DefaultUDPTimeout,
			TCPEstablishedTimeout: nat.DefaultTCPEstablishedTimeout,
			TCPTransitoryTimeout:  nat.DefaultTCPTransitoryTimeout,
			ICMPTimeout:           nat.DefaultICMPTimeout,
			UDPFiltering:          UDPFilteringAddressDependent,
			MaxMappings:           nat.DefaultMaxMappings,
		},
		Limits: Limits{
			MaxFlows:            nat.DefaultMaxFlows,
			MaxFlowsPerHost:     nat.DefaultMaxFlowsPerHost,
			MaxMappingsPerHost:  nat.DefaultMaxMappingsPerHost,
			MaxESPPerHost:       nat.DefaultMaxESPPerHost,
			MaxIKEPerHost:       nat.DefaultMaxIKEPerHost,
			MaxRemoteIKE:        nat.DefaultMaxRemoteIKE,
			RemoteIKETimeout:    nat.DefaultRemoteIKETimeout,
			MaxCallsPerHost:     nat.DefaultMaxCallsPerHost,
			MaxFragmentsPerHost: nat.DefaultMaxFragmentsPerHost,
			HostFlowRate:        nat.DefaultHostFlowRate,
			HostFlowBurst:       nat.DefaultHostFlowBurst,
			ForwardFlowRate:     nat.DefaultForwardFlowRate,
			ForwardFlowBurst:    nat.DefaultForwardFlowBurst,
			UnrepliedTimeout:    nat.DefaultUnrepliedTimeout,
			// Linux's net.ipv4.icmp_ratelimit (1 s) and icmp_msgs_burst.
			ICMPErrorRate:  1,
			ICMPErrorBurst: 6,
		},
		IPsec: IPsec{
			IKETimeout: nat.DefaultIKETimeout,
			ESPTimeout: nat.DefaultESPTimeout,
			ESPWait:    nat.DefaultESPWait,
			ESPRetries: nat.DefaultESPRetries,
			ESPSquelch: nat.DefaultESPSquelch,
			MaxESP:     nat.DefaultMaxESP,
		},
		PPTP: PPTP{
			CallSetupTimeout: nat.DefaultCallSetupTimeout,
			TeardownGrace:    nat.DefaultTeardownGrace,
			GRETimeout:       nat.DefaultGRETimeout,
			MaxCalls:         nat.DefaultMaxCalls,
		},
		Services: Services{
			Address:     netip.AddrFrom4([4]byte{192, 0, 2, 53}),
			AdminPort:   80,
			AdminSocket: "/run/vpnmasq/admin.sock",
		},
		TUN:   TUN{Name: "vpnmasq0", Table: 5353, RulePriority: 5353, UDPGRO: true},
		State: State{Enabled: true, File: "/var/lib/vpnmasq/state.bin", Interval: 5 * time.Second, MaxAge: 10 * time.Minute, Hold: 30 * time.Second},
		Log:   Log{Level: "info", Format: "auto"},
	}
}

// Values of NAT.UDPFiltering.
const (
	UDPFilteringAddressDependent    = "address-dependent"
	UDPFilteringEndpointIndependent = "endpoint-independent"
)

// Load reads the TOML file at path, applies defaults to everything it leaves
// out and validates the result. It touches nothing but the file; values that
// depend on the host stay empty until Resolve.
//
// On failure the error is an *Errors listing every problem with its line.
func Load(path string) (*Config, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		var pathErr *fs.PathError
		if errors.As(err, &pathErr) {
			err = pathErr.Err
		}
		var es Errors
		es.add(path, 0, "", "cannot read: %v", err)
		return nil, es.orNil()
	}
	return parse(path, string(text))
}

// parse decodes text (named source in messages) over the defaults and
// validates it.
func parse(source, text string) (*Config, error) {
	c := Default()
	c.Source = source
	var top map[string]toml.Primitive
	md, err := toml.Decode(text, &top)
	if err != nil {
		var es Errors
		var pe toml.ParseError
		if errors.As(err, &pe) {
			es.add(source, pe.Position.Line, pe.LastKey, "%s", pe.Message)
		} else {
			es.add(source, 0, "", "%v", err)
		}
		return nil, es.orNil()
	}
	d := &decoder{md: md, source: source, pos: scanPositions(text)}
	d.fields("", top, reflect.ValueOf(c).Elem())
	d.undecoded()
	// A key whose value could not be decoded keeps its default; checking
	// that default would only add a confusing second message for the key.
	failed := map[string]bool{}
	for _, e := range d.errs {
		failed[e.Key] = true
	}
	for _, e := range validate(c, d.pos) {
		if !failed[e.Key] {
			d.errs = append(d.errs, e)
		}
	}
	if err := d.errs.orNil(); err != nil {
		return nil, err
	}
	c.pos = d.pos
	return c, nil
}

// decoder copies TOML values into a Config one key at a time, so that one
// bad value does not hide the problems after it.
type decoder struct {
	md     toml.MetaData
	source string
	pos    *positions
	errs   Errors
}

func (d *decoder) errorf(key, format string, args ...any) {
	d.errs.add(d.source, d.pos.line(key), key, format, args...)
}

// fields decodes the keys of one table into the struct dst, matching TOML
// keys exactly (TOML keys are case-sensitive) against the field tags.
func (d *decoder) fields(path string, table map[string]toml.Primitive, dst reflect.Value) {
	for _, key := range d.inFileOrder(path, table) {
		keyPath := joinPath(path, key)
		field, ok := fieldByTag(dst.Type(), key)
		if !ok {
			d.errorf(keyPath, "unknown key%s", suggestKey(dst.Type(), key))
			continue
		}
		d.value(keyPath, table[key], dst.FieldByIndex(field.Index))
	}
}

// inFileOrder sorts the keys of table by their line, so that messages and
// decoding order follow the file.
func (d *decoder) inFileOrder(path string, table map[string]toml.Primitive) []string {
	keys := make([]string, 0, len(table))
	for k := range table {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		li, lj := d.pos.line(joinPath(path, keys[i])), d.pos.line(joinPath(path, keys[j]))
		if li != lj {
			return li < lj
		}
		return keys[i] < keys[j]
	})
	return keys
}

func fieldByTag(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		// An empty key ("" = 1 is valid TOML) must not find a field
		// without a tag, such as the unexported position table.
		if tag := strings.Split(f.Tag.Get("toml"), ",")[0]; tag == key && tag != "" && tag != "-" && f.IsExported() {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// tomlKeys lists the keys a struct accepts, in declaration order.
func tomlKeys(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		if tag := strings.Split(t.Field(i).Tag.Get("toml"), ",")[0]; tag != "" && tag != "-" {
			keys = append(keys, tag)
		}
	}
	if t == reflect.TypeFor[Forward]() {
		keys = append(keys, "to")
	}
	return keys
}

// suggestKey helps with the commonest mistakes: wrong case or a dash for an
// underscore.
func suggestKey(t reflect.Type, key string) string {
	want := strings.ReplaceAll(strings.ToLower(key), "-", "_")
	for _, k := range tomlKeys(t) {
		if k == want {
			return fmt.Sprintf(" (did you mean %q?)", k)
		}
	}
	return fmt.Sprintf(" (known keys: %s)", strings.Join(tomlKeys(t), ", "))
}

// primitive unpacks a value whose Go type is decided by the caller.
func (d *decoder) primitive(p toml.Primitive) any {
	var v any
	if err := d.md.PrimitiveDecode(p, &v); err != nil {
		return nil // decoding into an interface cannot fail; nil reads as "wrong type"
	}
	return v
}

// value decodes one TOML value into dst, choosing the conversion by the Go
// type: a single value (scalar), a list of them (list), the forwards, or a
// table of further keys (table). Every problem is reported with its key.
func (d *decoder) value(path string, p toml.Primitive, dst reflect.Value) {
	switch target := dst.Addr().Interface().(type) {
	case *string, *int, *bool, *uint16, *time.Duration, *PortRange, *netip.Addr:
		d.scalar(path, d.primitive(p), target)
	case *[]string, *[]netip.Prefix, *[]Upstream:
		d.list(path, p, target)
	case *[]Forward:
		d.forwards(path, p, target)
	default:
		d.table(path, p, dst)
	}
}

// scalar decodes the single value v into target, one of the pointer types
// value sends here.
func (d *decoder) scalar(path string, v any, target any) {
	switch target := target.(type) {
	case *string:
		if s, ok := v.(string); ok {
			*target = s
		} else {
			d.errorf(path, "must be a string, not %s", tomlTypeName(v))
		}
	case *int:
		if n, ok := v.(int64); ok && int64(int(n)) == n {
			*target = int(n)
		} else {
			d.errorf(path, "must be an integer, not %s", tomlTypeName(v))
		}
	case *bool:
		if b, ok := v.(bool); ok {
			*target = b
		} else {
			d.errorf(path, "must be true or false, not %s", tomlTypeName(v))
		}
	case *uint16:
		if n, ok := v.(int64); ok && n >= 0 && n <= 65535 {
			*target = uint16(n)
		} else if ok {
			d.errorf(path, "must be a port from 1 to 65535, not %d", n)
		} else {
			d.errorf(path, "must be an integer, not %s", tomlTypeName(v))
		}
	case *time.Duration:
		if dur, err := parseDuration(v); err != nil {
			d.errorf(path, "%v", err)
		} else {
			*target = dur
		}
	case *PortRange:
		if err := target.UnmarshalTOML(v); err != nil {
			d.errorf(path, "%v", err)
		}
	case *netip.Addr:
		if s, ok := v.(string); !ok {
			d.errorf(path, "must be an IPv4 address in a string, e.g. \"192.0.2.53\", not %s", tomlTypeName(v))
		} else if addr, err := parseIPv4(s); err != nil {
			d.errorf(path, "%v", err)
		} else {
			*target = addr
		}
	}
}

// list decodes an array into target, one of the slice types value sends
// here. A wrong element is reported with its index and left out; the rest
// are kept.
func (d *decoder) list(path string, p toml.Primitive, target any) {
	switch target := target.(type) {
	case *[]string:
		*target = nil
		for i, item := range d.array(path, p, "strings") {
			if s, ok := item.(string); ok {
				*target = append(*target, s)
			} else {
				d.errorf(indexPath(path, i), "must be a string, not %s", tomlTypeName(item))
			}
		}
	case *[]netip.Prefix:
		*target = nil
		for i, item := range d.array(path, p, "prefixes") {
			if s, ok := item.(string); !ok {
				d.errorf(indexPath(path, i), "must be an IPv4 prefix in a string, e.g. \"192.168.77.0/24\", not %s", tomlTypeName(item))
			} else if prefix, err := parseIPv4Prefix(s); err != nil {
				d.errorf(indexPath(path, i), "%v", err)
				if prefix.IsValid() {
					// Keep the masked form, so checks against this list
					// do not report follow-on problems.
					*target = append(*target, prefix)
				}
			} else {
				*target = append(*target, prefix)
			}
		}
	case *[]Upstream:
		*target = nil
		for i, item := range d.array(path, p, "addresses") {
			var u Upstream
			if s, ok := item.(string); !ok {
				d.errorf(indexPath(path, i), "must be an IPv4 address in a string, e.g. \"192.0.2.1\" or \"192.0.2.1:53\", not %s", tomlTypeName(item))
			} else if err := u.UnmarshalText([]byte(s)); err != nil {
				d.errorf(indexPath(path, i), "%v", err)
			} else {
				*target = append(*target, u)
			}
		}
	}
}

// table decodes a table of keys into the struct dst.
func (d *decoder) table(path string, p toml.Primitive, dst reflect.Value) {
	if dst.Kind() != reflect.Struct {
		// Every field type of Config is handled by value; this only guards
		// additions to types.go that forget a case there.
		d.errorf(path, "no decoding for values of type %s", dst.Type())
		return
	}
	// BurntSushi/toml decodes a scalar into a map as an empty map without
	// error, so the type is checked first.
	var table map[string]toml.Primitive
	if v, isTable := d.primitive(p).(map[string]any); !isTable {
		d.errorf(path, "must be a table ([%s]), not %s", path, tomlTypeName(v))
		return
	} else if err := d.md.PrimitiveDecode(p, &table); err != nil {
		d.errorf(path, "%v", err)
		return
	}
	d.fields(path, table, dst)
}

// array unpacks a TOML array; a wrong type is reported once for the key.
func (d *decoder) array(path string, p toml.Primitive, what string) []any {
	v := d.primitive(p)
	items, ok := v.([]any)
	if !ok {
		d.errorf(path, "must be an array of %s, not %s", what, tomlTypeName(v))
	}
	return items
}

// forwards decodes the [[forward]] tables; each element's "to" is split into
// To and ToPort here since it is not a plain struct field.
func (d *decoder) forwards(path string, p toml.Primitive, dst *[]Forward) {
	if !isArrayOfTables(d.primitive(p)) {
		d.errorf(path, "must be an array of tables: write each one as [[%s]]", path)
		return
	}
	var tables []map[string]toml.Primitive
	if err := d.md.PrimitiveDecode(p, &tables); err != nil {
		d.errorf(path, "%v", err)
		return
	}
	*dst = make([]Forward, len(tables))
	for i, table := range tables {
		elemPath := indexPath(path, i)
		f := &(*dst)[i]
		f.Line = d.pos.line(elemPath)
		if to, ok := table["to"]; ok {
			delete(table, "to")
			d.forwardTarget(joinPath(elemPath, "to"), d.primitive(to), f)
		}
		d.fields(elemPath, table, reflect.ValueOf(f).Elem())
	}
}

// isArrayOfTables accepts [[x]] tables and inline arrays of inline tables.
func isArrayOfTables(v any) bool {
	switch v := v.(type) {
	case []map[string]any:
		return true
	case []any:
		for _, item := range v {
			if _, ok := item.(map[string]any); !ok {
				return false
			}
		}
		return true
	}
	return false
}

func (d *decoder) forwardTarget(path string, v any, f *Forward) {
	s, ok := v.(string)
	if !ok {
		d.errorf(path, "must be a string such as \"192.168.77.10:80\" or \"192.168.77.10\", not %s", tomlTypeName(v))
		return
	}
	if addr, err := netip.ParseAddr(s); err == nil {
		if !addr.Is4() {
			d.errorf(path, "%q is not an IPv4 address", s)
			return
		}
		f.To = addr
		return
	}
	addrPort, err := netip.ParseAddrPort(s)
	if err != nil || !addrPort.Addr().Is4() {
		d.errorf(path, "%q is not an IPv4 address with optional port, e.g. \"192.168.77.10:80\"", s)
		return
	}
	if addrPort.Port() == 0 {
		d.errorf(path, "port 0 cannot be used")
		return
	}
	f.To, f.ToPort = addrPort.Addr(), addrPort.Port()
}

// undecoded reports keys the TOML library saw but nothing consumed. The
// walk above reports unknown keys itself, with their array index; this
// catches what it might miss, such as keys nested in a value of the wrong
// type, without repeating a problem already reported for an enclosing key.
func (d *decoder) undecoded() {
	reported := map[string]bool{}
	for _, e := range d.errs {
		reported[stripIndexes(e.Key)] = true
	}
	for _, key := range d.md.Undecoded() {
		covered := false
		for k := key; len(k) > 0; k = k[:len(k)-1] {
			if reported[strings.Join(k, ".")] {
				covered = true
				break
			}
		}
		if !covered {
			path := strings.Join(key, ".")
			reported[path] = true
			d.errorf(path, "unknown key")
		}
	}
}

// stripIndexes turns "forward[1].port" into "forward.port".
func stripIndexes(path string) string {
	var b strings.Builder
	inIndex := false
	for _, r := range path {
		switch {
		case r == '[':
			inIndex = true
		case r == ']':
			inIndex = false
		case !inIndex:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func parseDuration(v any) (time.Duration, error) {
	switch v := v.(type) {
	case string:
		dur, err := time.ParseDuration(v)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration (write e.g. \"90s\", \"5m\" or \"2h4m\")", v)
		}
		return dur, nil
	case int64:
		// A bare number would silently mean nanoseconds.
		return 0, fmt.Errorf("%d has no unit: write a duration string such as \"%ds\"", v, v)
	default:
		return 0, fmt.Errorf("must be a duration string such as \"5m\", not %s", tomlTypeName(v))
	}
}

func parseIPv4(s string) (netip.Addr, error) {
	addr, err := netip.ParseAddr(s)
	if err != nil || !addr.Is4() {
		return netip.Addr{}, fmt.Errorf("%q is not an IPv4 address", s)
	}
	return addr, nil
}

// parseIPv4Prefix parses a canonical IPv4 prefix. For one with host bits set
// it returns the masked prefix along with the error.
func parseIPv4Prefix(s string) (netip.Prefix, error) {
	prefix, err := netip.ParsePrefix(s)
	if err != nil || !prefix.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 prefix such as \"192.168.77.0/24\"", s)
	}
	if masked := prefix.Masked(); masked != prefix {
		return masked, fmt.Errorf("%q has host bits set: did you mean %q?", s, masked.String())
	}
	return prefix, nil
}

// tomlTypeName names the TOML type of a decoded value for messages.
func tomlTypeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date-time"
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	case nil:
		return "nothing"
	default:
		return fmt.Sprintf("a %T", v)
	}
}

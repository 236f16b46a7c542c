package config

import _ "embed"

// ExampleTOML is config/example.toml: every key, annotated, at the values
// of the README's example. The binary carries it so it can print it.
//
//go:embed example.toml
var ExampleTOML []byte

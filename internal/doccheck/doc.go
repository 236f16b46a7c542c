// Package doccheck holds tests that keep the documentation true to the
// repository: every relative link and #anchor in README.md and docs/*.md
// resolves to a file or heading that exists, every test function the docs
// cite by name exists, and the README's configuration examples load. The
// tests read files only: no privileges, no network.
package doccheck

//go:build !linux

package ldapauth

// idleOK: without a portable non-blocking peek, a stale idle connection is
// found on use, and the pool retries once on a fresh one.
func (b *wireConn) idleOK() bool { return !b.dead }

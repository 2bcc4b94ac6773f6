package daemon

import (
	"context"

	"github.com/mailauthd/mailauthd/auth"
)

// WithFields is the daemon as its helpers see it (the control socket:
// Dovecot checkpassword and Lua, PAM): every Accept carries the Dovecot
// fields mapped by the configuration that decided it, so the helpers hold
// no mapping of their own and cannot drift from the daemon.
type WithFields struct{ d *Daemon }

// WithFields returns the daemon with field mapping.
func (d *Daemon) WithFields() WithFields { return WithFields{d} }

// Authenticate is Daemon.Authenticate with the fields of an Accept.
func (w WithFields) Authenticate(ctx context.Context, req auth.Request) auth.Verdict {
	return w.d.door("control", ctx, req, func() auth.Verdict {
		g := w.d.cur.Load()
		return g.mapFields(req, g.front.Authenticate(ctx, req))
	})
}

// Lookup is Daemon.Lookup with the fields of an Accept.
func (w WithFields) Lookup(ctx context.Context, req auth.Request) auth.Verdict {
	return w.d.door("control-lookup", ctx, req, func() auth.Verdict {
		g := w.d.cur.Load()
		return g.mapFields(req, g.ldap.Lookup(ctx, req))
	})
}

// Flush empties the daemon's cache; false when none is configured.
func (w WithFields) Flush() bool { return w.d.Flush() }

// mapFields adds the Dovecot fields to an Accept. A directory value that
// cannot be carried (NUL, over-long) turns it into a TempFail: guessing
// (dropping a proxy host, say) could send the user to the wrong place.
func (g *generation) mapFields(req auth.Request, v auth.Verdict) auth.Verdict {
	if v.Outcome != auth.Accept {
		return v
	}
	// The entry's canonical name, so Dovecot opens the entry's mailbox
	// whatever case, spacing or realm the client typed.
	user := v.User
	if user == "" {
		req = req.SplitRealm()
		user = req.User
		if req.Realm != "" {
			user += "@" + req.Realm
		}
	}
	fields, err := g.fields.Map(user, v, g.reportMissing)
	if err != nil {
		out := auth.TempFailed(auth.CauseInternal, err.Error())
		out.DN = v.DN
		return out
	}
	v.Fields = fields
	return v
}

// reportMissing logs a mapped attribute an entry lacks, once per
// attribute and configuration: the field then falls back to its default or
// is left out, which is worth knowing once, not on every login.
func (g *generation) reportMissing(field, attr string) {
	if _, seen := g.missing.LoadOrStore(attr, struct{}{}); !seen {
		g.log.Debug("dovecot field: mapped attribute missing on an entry; default used or field left out",
			"field", field, "attribute", attr)
	}
}

package authhttp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// Backend is the daemon as this door sees it (daemon.AuthHTTP): the policy
// of the configuration in effect, and the decision, whose Accept carries
// the route (Policy.Route) as Fields.
type Backend interface {
	auth.Authenticator
	Policy() *Policy
}

// Defaults for the zero Handler settings.
const (
	DefaultRequestTimeout = 10 * time.Second
	DefaultMaxFieldSize   = 1024
)

// Handler answers nginx's auth_http requests. Register it on the path of
// Config.Path; the HTTP server around it (listeners, header limits,
// timeouts, connection cap) is the daemon's.
type Handler struct {
	Backend Backend
	Logger  *slog.Logger // nil: slog.Default()
	// RequestTimeout bounds the decision and the routing of one request;
	// when it passes the answer is a temporary failure.
	RequestTimeout time.Duration
	// MaxFieldSize bounds the decoded login and password.
	MaxFieldSize int
}

func (h *Handler) logger() *slog.Logger {
	if h.Logger != nil {
		return h.Logger
	}
	return slog.Default()
}

// decision is what one request logs.
type decision struct {
	req      auth.Request // never with the password
	proto    Protocol
	attempt  int
	outcome  string
	cause    auth.Cause
	reason   string
	backend  string
	panicked bool
}

// ServeHTTP answers one auth_http request: 200 with the Auth-* headers for
// every login nginx sent (accepted, refused or failed), 400 for a request
// that is not nginx's, 403 when the shared secret is missing or wrong,
// 405 for a method other than GET. nginx ignores the status line, so a
// 400/403 (no Auth-Status) makes it answer its client with an internal
// error: a temporary failure, never an accept.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	log := h.logger()
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "auth_http takes GET", http.StatusMethodNotAllowed)
		return
	}
	pol := h.Backend.Policy()
	if pol == nil {
		http.Error(w, "auth_http is not configured", http.StatusServiceUnavailable)
		return
	}
	if err := pol.CheckSecret(r.Header); err != nil {
		log.Warn("auth_http: request refused: shared secret header missing or wrong",
			"peer", r.RemoteAddr, "header", pol.cfg.SecretHeader, "reason", errorText(err))
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	max := h.MaxFieldSize
	if max <= 0 {
		max = DefaultMaxFieldSize
	}
	req, perr := ParseRequest(r.Header, max)
	if errors.Is(perr, ErrNotNginx) {
		log.Warn("auth_http: malformed request", "peer", r.RemoteAddr, "reason", errorText(perr))
		http.Error(w, "not an nginx auth_http request", http.StatusBadRequest)
		return
	}
	d := decision{proto: req.Protocol, attempt: req.Attempt}
	d.req = auth.Request{User: req.User, Service: pol.cfg.Service(req.Protocol), ClientAddr: clientAddr(req.ClientIP)}.SplitRealm()
	var resp Response
	switch {
	case perr != nil:
		d.outcome, d.cause, d.reason = auth.Reject.String(), auth.CauseInvalid, errorText(perr)
		resp = replyFor(req.Protocol, auth.Verdict{}, req.Attempt, pol.waitSeconds(), pol.cfg.WaitAttempts)
	case req.Method != MethodPlain:
		d.outcome, d.cause = auth.Reject.String(), auth.CauseInvalid
		d.reason = fmt.Sprintf("Auth-Method %q cannot be verified: only plain carries the password (nginx: imap_auth/pop3_auth/smtp_auth plain login)", truncate(req.Method, 20))
		resp = unsupportedResponse(req.Protocol)
	default:
		areq := d.req
		areq.Password = req.Password
		v, panicked := h.decide(r.Context(), areq)
		d.panicked = panicked
		d.outcome, d.cause, d.reason = v.Outcome.String(), v.Cause, v.Reason
		resp = replyFor(req.Protocol, v, req.Attempt, pol.waitSeconds(), pol.cfg.WaitAttempts)
		if v.Outcome == auth.Accept && resp.Status != "OK" {
			d.outcome, d.cause = auth.TempFail.String(), auth.CauseInternal
			d.reason = "accepted, but the route is unusable: " + routeText(v.Fields)
		}
	}
	if err := resp.Write(w.Header()); err != nil {
		// Only a route value can be unsafe, and okResponse checked those:
		// still, never send half a header set.
		for k := range w.Header() {
			w.Header().Del(k)
		}
		resp = tempResponse(req.Protocol)
		resp.Write(w.Header())
		d.outcome, d.cause, d.reason = auth.TempFail.String(), auth.CauseInternal, errorText(err)
	}
	if resp.Status == "OK" {
		d.backend = fmt.Sprintf("%s:%d", resp.Server, resp.Port)
	}
	w.WriteHeader(http.StatusOK)
	h.logDecision(log, r.RemoteAddr, &d, time.Since(start))
}

// decide asks the backend with the request timeout and a panic guard.
func (h *Handler) decide(parent context.Context, req auth.Request) (v auth.Verdict, panicked bool) {
	timeout := h.RequestTimeout
	if timeout <= 0 {
		timeout = DefaultRequestTimeout
	}
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	v, p := auth.Recover(req, func() auth.Verdict { return h.Backend.Authenticate(ctx, req) })
	if p != nil {
		h.logger().Error("auth_http: authenticator panicked", "user", req.User,
			"service", req.Service, "panic", p.Value, "stack", string(p.Stack))
		return v, true
	}
	if v.Outcome == auth.Accept && ctx.Err() != nil {
		// Decided, but too late to trust the route lookup it raced with.
		return auth.TempFailed(auth.CauseUnavailable, "request timed out"), false
	}
	return v, false
}

func (h *Handler) logDecision(log *slog.Logger, peer string, d *decision, took time.Duration) {
	level := slog.LevelInfo
	if d.outcome == auth.TempFail.String() || d.panicked {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.String("user", d.req.User),
		slog.String("realm", d.req.Realm),
		slog.String("service", d.req.Service),
		slog.String("client", d.req.ClientAddr),
		slog.String("outcome", d.outcome),
		slog.String("cause", d.cause.String()),
		slog.String("reason", d.reason),
		slog.String("protocol", string(d.proto)),
		slog.Int("attempt", d.attempt),
	}
	if d.backend != "" {
		attrs = append(attrs, slog.String("backend", d.backend))
	}
	attrs = append(attrs, slog.String("peer", peer), slog.Duration("duration", took))
	log.LogAttrs(context.Background(), level, "auth_http: decision", attrs...)
}

// clientAddr keeps Client-IP when it is an IP address (nginx sends its
// client's; a mail listener on a Unix socket gives "unix:"), so the
// decision log and the throttling never key on arbitrary text.
func clientAddr(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Zone() != "" {
		return ""
	}
	return a.Unmap().String()
}

func errorText(err error) string { return strings.TrimPrefix(err.Error(), "authhttp: ") }

func routeText(fields []auth.Field) string {
	var b strings.Builder
	for _, f := range fields {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%q", f.Key, truncate(f.Value, 64))
	}
	if b.Len() == 0 {
		return "no route"
	}
	return b.String()
}

package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// ErrNotRunning means no daemon listens on the socket: the path does not
// exist (ENOENT) or nothing accepts on it (ECONNREFUSED, a stale socket
// file). Only this error lets a caller decide on its own instead; any
// other failure (permission denied, a timeout, a broken reply) means a
// daemon is there and may already be deciding, so the caller must answer
// "temporary failure" rather than risk a different answer.
var ErrNotRunning = errors.New("control: daemon not running")

// DefaultClientTimeout bounds a whole exchange when neither Client.Timeout
// nor the context sets a shorter one.
const DefaultClientTimeout = 10 * time.Second

// Client asks a running daemon over its control socket. The zero value
// needs Path. It is safe for concurrent use; each call is one connection.
type Client struct {
	Path    string
	Timeout time.Duration // whole exchange: dial, request, decision, reply
}

// Authenticate asks the daemon to verify req's password.
func (c *Client) Authenticate(ctx context.Context, req auth.Request) (auth.Verdict, error) {
	_, v, err := c.do(ctx, OpAuth, req)
	return v, err
}

// Lookup asks the daemon for the user's entry without a password.
func (c *Client) Lookup(ctx context.Context, req auth.Request) (auth.Verdict, error) {
	req.Password = ""
	_, v, err := c.do(ctx, OpLookup, req)
	return v, err
}

// Flush asks the daemon to empty its cache.
func (c *Client) Flush(ctx context.Context) error {
	outcome, v, err := c.do(ctx, OpFlush, auth.Request{})
	if err != nil {
		return err
	}
	if outcome != "ok" {
		return fmt.Errorf("control: flush refused: %s", v.Reason)
	}
	return nil
}

// do runs one exchange. On error the verdict is a TempFail carrying the
// reason, so a caller that ignores the error still fails closed.
func (c *Client) do(ctx context.Context, op string, req auth.Request) (string, auth.Verdict, error) {
	fail := func(err error) (string, auth.Verdict, error) {
		return "", auth.TempFailed(auth.CauseUnavailable, "mailauthd daemon: "+err.Error()), err
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultClientTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	msg, err := appendRequest(make([]byte, 0, 128), op, req)
	if err != nil {
		return fail(err)
	}
	defer clear(msg)

	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Path)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fail(fmt.Errorf("%w: %v", ErrNotRunning, err))
		}
		return fail(err)
	}
	defer conn.Close()
	dl, _ := ctx.Deadline()
	conn.SetDeadline(dl)
	// Closing the connection when ctx is cancelled (not only at its
	// deadline) unblocks the read below.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := conn.Write(msg); err != nil {
		return fail(fmt.Errorf("control: sending request: %w", err))
	}
	outcome, v, err := readVerdict(io.LimitReader(conn, MaxReplySize))
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return fail(fmt.Errorf("control: reading reply: %w", err))
	}
	if (op == OpFlush) != (outcome == "ok" || outcome == "error") {
		return fail(fmt.Errorf("%w: outcome %q for op %s", ErrProtocol, outcome, op))
	}
	return outcome, v, nil
}

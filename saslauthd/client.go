package saslauthd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// DefaultClientTimeout bounds a Client round trip when neither Timeout nor
// the context sets a shorter deadline. It exceeds the server's default
// RequestTimeout so that the server, not the client, reports a slow backend.
const DefaultClientTimeout = 15 * time.Second

// Client asks a saslauthd-protocol server, as libsasl2 does, but with a
// deadline. It sends four fields, and the client address as a fifth when set.
type Client struct {
	Path    string        // socket path, e.g. /run/saslauthd/mux
	Timeout time.Duration // whole round trip; 0 means DefaultClientTimeout
}

// Authenticate sends req and returns the server's answer: ok for "OK", the
// text after "OK"/"NO", and err only when no valid answer came back.
func (c *Client) Authenticate(ctx context.Context, req auth.Request) (ok bool, text string, err error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultClientTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	msg, err := AppendRequest(nil, req)
	if err != nil {
		return false, "", err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Path)
	if err != nil {
		return false, "", fmt.Errorf("saslauthd: %w", err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	// Cancelling ctx must also interrupt a blocked read or write.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := conn.Write(msg); err != nil { // one write, as libsasl2 does
		return false, "", fmt.Errorf("saslauthd: send request: %w", ctxErr(ctx, err))
	}
	body, err := ReadCounted(conn, MaxReplySize)
	if err != nil {
		return false, "", fmt.Errorf("saslauthd: read reply: %w", ctxErr(ctx, err))
	}
	return ParseReply(body)
}

// ctxErr makes a deadline or cancellation recognisable with errors.Is,
// whichever of the conn deadline and the ctx timer fired first.
func ctxErr(ctx context.Context, err error) error {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("%w: %w", context.Canceled, err)
	}
	return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
}

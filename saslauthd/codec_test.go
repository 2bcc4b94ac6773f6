package saslauthd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// frame builds a request from raw fields.
func frame(fields ...string) []byte {
	var b []byte
	for _, f := range fields {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b
}

func TestReadRequest(t *testing.T) {
	long := strings.Repeat("p", DefaultMaxFieldSize)
	tests := []struct {
		name    string
		in      []byte
		opt     ReadOptions
		want    auth.Request
		wantErr error
	}{
		{"four fields", frame("alice", "s3cret", "smtp", "example.org"), ReadOptions{},
			auth.Request{User: "alice", Password: "s3cret", Service: "smtp", Realm: "example.org"}, nil},
		{"five fields", frame("alice", "s3cret", "imap", "", "192.0.2.7;51234"), ReadOptions{},
			auth.Request{User: "alice", Password: "s3cret", Service: "imap", ClientAddr: "192.0.2.7;51234"}, nil},
		{"empty service and realm", frame("bob", "pw", "", ""), ReadOptions{},
			auth.Request{User: "bob", Password: "pw"}, nil},
		{"field at the default limit", frame("carol", long, "smtp", ""), ReadOptions{},
			auth.Request{User: "carol", Password: long, Service: "smtp"}, nil},
		{"binary password kept exactly", frame("dave", "\xff\x01 é\t", "smtp", ""), ReadOptions{},
			auth.Request{User: "dave", Password: "\xff\x01 é\t", Service: "smtp"}, nil},
		{"trailing bytes after five fields ignored", append(frame("u", "p", "s", "r", "a"), 0, 9, 'x'), ReadOptions{},
			auth.Request{User: "u", Password: "p", Service: "s", Realm: "r", ClientAddr: "a"}, nil},
		{"larger configured limit", frame("erin", strings.Repeat("x", 3000), "smtp", ""), ReadOptions{MaxFieldSize: 4096},
			auth.Request{User: "erin", Password: strings.Repeat("x", 3000), Service: "smtp"}, nil},

		{"over-long field", frame("alice", long+"p", "smtp", ""), ReadOptions{}, auth.Request{}, ErrFieldTooLong},
		{"over-long login, body never sent", []byte{0xff, 0xff}, ReadOptions{}, auth.Request{}, ErrFieldTooLong},
		{"over the configured limit", frame("alice", "123456789", "smtp", ""), ReadOptions{MaxFieldSize: 8}, auth.Request{}, ErrFieldTooLong},
		{"over-long client address", frame("u", "p", "s", "r", long+"x"), ReadOptions{}, auth.Request{}, ErrFieldTooLong},
		{"nothing", nil, ReadOptions{}, auth.Request{}, ErrNoRequest},
		{"truncated length", []byte{0}, ReadOptions{}, auth.Request{}, ErrTruncated},
		{"truncated body", []byte{0, 5, 'a', 'b'}, ReadOptions{}, auth.Request{}, ErrTruncated},
		{"three fields", frame("u", "p", "s"), ReadOptions{}, auth.Request{}, ErrTruncated},
		{"truncated realm length", append(frame("u", "p", "s"), 0), ReadOptions{}, auth.Request{}, ErrTruncated},
		{"truncated fifth length", append(frame("u", "p", "s", "r"), 0), ReadOptions{}, auth.Request{}, ErrTruncated},
		{"truncated fifth body", append(frame("u", "p", "s", "r"), 0, 4, '1'), ReadOptions{}, auth.Request{}, ErrTruncated},
		{"NUL in login", frame("alice\x00x", "p", "s", "r"), ReadOptions{}, auth.Request{}, ErrNULByte},
		{"NUL in password", frame("alice", "p\x00", "s", "r"), ReadOptions{}, auth.Request{}, ErrNULByte},

		{"empty login", frame("", "pw", "smtp", "r"), ReadOptions{},
			auth.Request{Service: "smtp", Realm: "r"}, ErrEmptyLogin},
		{"empty password", frame("alice", "", "smtp", "r", "192.0.2.1;1"), ReadOptions{},
			auth.Request{User: "alice", Service: "smtp", Realm: "r", ClientAddr: "192.0.2.1;1"}, ErrEmptyPassword},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadRequest(bytes.NewReader(tt.in), tt.opt)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", redact(got), redact(tt.want))
			}
			// A byte at a time must parse the same (reads are not frames).
			if tt.wantErr == nil {
				got, err := ReadRequest(iotest.OneByteReader(bytes.NewReader(tt.in)), ReadOptions{MaxFieldSize: tt.opt.MaxFieldSize, ClientAddrWait: -1})
				if err != nil {
					t.Fatalf("one byte at a time: %v", err)
				}
				if tt.want.ClientAddr == "" && got != tt.want {
					t.Fatalf("one byte at a time: got %+v", redact(got))
				}
			}
		})
	}
}

// redact keeps passwords out of test output.
func redact(r auth.Request) auth.Request {
	if r.Password != "" {
		r.Password = "[" + string(rune('0'+len(r.Password)%10)) + "]"
	}
	return r
}

// TestReadRequestClientAddrTiming covers the optional fifth field over a
// real connection: absent (the client waits for its answer, as libsasl2 and
// testsaslauthd do), sent late but within the wait, and sent after it.
func TestReadRequestClientAddrTiming(t *testing.T) {
	four := frame("alice", "pw", "smtp", "example.org")
	fifth := frame("192.0.2.9;2525")
	tests := []struct {
		name     string
		delay    time.Duration // before the fifth field; <0: never sent
		wait     time.Duration
		wantAddr string
	}{
		{"absent, client keeps connection open", -1, 30 * time.Millisecond, ""},
		{"late but within the wait", 10 * time.Millisecond, 2 * time.Second, "192.0.2.9;2525"},
		{"after the wait", 300 * time.Millisecond, 20 * time.Millisecond, ""},
		{"absent, no wait at all", -1, -1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, cli := net.Pipe()
			defer srv.Close()
			defer cli.Close()
			go func() {
				cli.Write(four)
				if tt.delay >= 0 {
					time.Sleep(tt.delay)
					cli.Write(fifth)
				}
			}()
			deadline := time.Now().Add(5 * time.Second)
			srv.SetReadDeadline(deadline)
			start := time.Now()
			req, err := ReadRequest(srv, ReadOptions{ClientAddrWait: tt.wait, Deadline: deadline})
			if err != nil {
				t.Fatal(err)
			}
			if req.ClientAddr != tt.wantAddr || req.User != "alice" || req.Realm != "example.org" {
				t.Fatalf("got %+v", redact(req))
			}
			// Never blocks for the absent field beyond the deadline given: the
			// bound is generous because the machine is shared, but far below
			// the 5 s request deadline it would otherwise hit.
			if tt.wantAddr == "" && time.Since(start) > 2*time.Second {
				t.Fatalf("waited %v for an absent field", time.Since(start))
			}
		})
	}
}

func TestReadRequestClosesAfterFourFields(t *testing.T) {
	srv, cli := net.Pipe()
	go func() { cli.Write(frame("u", "p", "s", "r")); cli.Close() }()
	req, err := ReadRequest(srv, ReadOptions{ClientAddrWait: time.Minute})
	if err != nil || req.User != "u" || req.ClientAddr != "" {
		t.Fatalf("got %+v, %v", redact(req), err)
	}
}

func TestReadCounted(t *testing.T) {
	tests := []struct {
		in      []byte
		max     int
		want    string
		wantErr error
	}{
		{[]byte{0, 2, 'O', 'K'}, 10, "OK", nil},
		{[]byte{0, 0}, 10, "", nil},
		{nil, 10, "", io.EOF},
		{[]byte{0}, 10, "", ErrTruncated},
		{[]byte{0, 3, 'N', 'O'}, 10, "", ErrTruncated},
		{[]byte{0, 11}, 10, "", ErrFieldTooLong},
	}
	for _, tt := range tests {
		got, err := ReadCounted(bytes.NewReader(tt.in), tt.max)
		if got != tt.want || !errors.Is(err, tt.wantErr) {
			t.Errorf("ReadCounted(%q) = %q, %v; want %q, %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	reqs := []auth.Request{
		{User: "alice", Password: "pw", Service: "smtp", Realm: "example.org"},
		{User: "bob", Password: strings.Repeat("x", 1024), Service: "imap", ClientAddr: "[2001:db8::1];993"},
	}
	for _, r := range reqs {
		b, err := AppendRequest(nil, r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ReadRequest(bytes.NewReader(b), ReadOptions{})
		if err != nil || got != r {
			t.Fatalf("round trip %+v: got %+v, %v", redact(r), redact(got), err)
		}
	}
	if _, err := AppendRequest(nil, auth.Request{User: strings.Repeat("u", 70000)}); !errors.Is(err, ErrFieldTooLong) {
		t.Fatalf("70000-byte login: err = %v", err)
	}
	var w bytes.Buffer
	if err := WriteCounted(&w, "hello"); err != nil {
		t.Fatal(err)
	}
	if s, err := ReadCounted(&w, 5); s != "hello" || err != nil {
		t.Fatalf("WriteCounted/ReadCounted = %q, %v", s, err)
	}
}

func TestWriteReply(t *testing.T) {
	tests := []struct {
		ok   bool
		text string
		want string
	}{
		{true, "ignored", "OK"},
		{false, "", "NO"},
		{false, "user unknown", "NO user unknown"},
		{false, "line1\r\nline2\x00\x7fé", "NO line1??line2????"},
		{false, strings.Repeat("z", 5000), "NO " + strings.Repeat("z", MaxReplyText)},
	}
	for _, tt := range tests {
		var w bytes.Buffer
		if err := WriteReply(&w, tt.ok, tt.text); err != nil {
			t.Fatal(err)
		}
		got, err := ReadCounted(&w, MaxReplySize)
		if err != nil || got != tt.want || w.Len() != 0 {
			t.Errorf("WriteReply(%v, %q) = %q, %v (left %d)", tt.ok, tt.text, got, err, w.Len())
		}
		ok, _, err := ParseReply(got)
		if err != nil || ok != tt.ok {
			t.Errorf("ParseReply(%q) = %v, %v", got, ok, err)
		}
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		body    string
		ok      bool
		text    string
		wantErr bool
	}{
		{"OK", true, "", false},
		{"OK Success.", true, "Success.", false},
		{"NO", false, "", false},
		{"NO bad password", false, "bad password", false},
		{"N", false, "", true},
		{"", false, "", true},
		{"ok", false, "", true},
		{"YES", false, "", true},
	}
	for _, tt := range tests {
		ok, text, err := ParseReply(tt.body)
		if ok != tt.ok || text != tt.text || (err != nil) != tt.wantErr {
			t.Errorf("ParseReply(%q) = %v, %q, %v", tt.body, ok, text, err)
		}
	}
}

func FuzzReadRequest(f *testing.F) {
	f.Add(frame("alice", "pw", "smtp", "example.org"))
	f.Add(frame("alice", "pw", "smtp", "", "192.0.2.1;25"))
	f.Add(frame("", "pw", "smtp", ""))
	f.Add([]byte{0xff, 0xff, 1, 2})
	f.Add([]byte{0, 3, 'a'})
	f.Fuzz(func(t *testing.T, in []byte) {
		const max = 64
		req, err := ReadRequest(bytes.NewReader(in), ReadOptions{MaxFieldSize: max, ClientAddrWait: -1})
		for _, s := range []string{req.User, req.Password, req.Service, req.Realm, req.ClientAddr} {
			if len(s) > max || strings.IndexByte(s, 0) >= 0 {
				t.Fatalf("field of %d bytes or with NUL accepted", len(s))
			}
		}
		switch {
		case err == nil:
			if req.User == "" || req.Password == "" {
				t.Fatal("empty login or password accepted")
			}
			// What parsed must encode back to a prefix of the input.
			b, aerr := AppendRequest(nil, req)
			if aerr != nil || !bytes.HasPrefix(in, b) {
				t.Fatalf("re-encoding is not a prefix of the input (%v)", aerr)
			}
		case errors.Is(err, ErrEmptyLogin), errors.Is(err, ErrEmptyPassword):
			if req.Password != "" {
				t.Fatal("password returned with an empty-field error")
			}
		default:
			if req != (auth.Request{}) {
				t.Fatal("fields returned with an error")
			}
		}
	})
}

func FuzzReadCounted(f *testing.F) {
	f.Add([]byte{0, 2, 'O', 'K'}, 10)
	f.Add([]byte{0xff, 0xff}, 1023)
	f.Fuzz(func(t *testing.T, in []byte, max int) {
		if max < 0 || max > MaxFieldSizeLimit {
			return
		}
		s, err := ReadCounted(bytes.NewReader(in), max)
		if err != nil {
			return
		}
		if len(s) > max || len(in) < 2+len(s) || s != string(in[2:2+len(s)]) {
			t.Fatalf("ReadCounted(%q, %d) = %q", in, max, s)
		}
	})
}

func FuzzWriteReply(f *testing.F) {
	f.Add(false, "user unknown")
	f.Add(true, "")
	f.Add(false, "a\nb\x00")
	f.Fuzz(func(t *testing.T, ok bool, text string) {
		var w bytes.Buffer
		if err := WriteReply(&w, ok, text); err != nil {
			t.Fatal(err)
		}
		body, err := ReadCounted(&w, MaxReplySize)
		if err != nil || w.Len() != 0 {
			t.Fatalf("reply not one counted string: %v", err)
		}
		if len(body) > 3+MaxReplyText {
			t.Fatalf("reply of %d bytes", len(body))
		}
		for i := 0; i < len(body); i++ {
			if body[i] < 0x20 || body[i] > 0x7e {
				t.Fatalf("unsanitized byte %#x in reply", body[i])
			}
		}
		gotOK, _, err := ParseReply(body)
		if err != nil || gotOK != ok {
			t.Fatalf("ParseReply(%q) = %v, %v", body, gotOK, err)
		}
	})
}

func FuzzParseReply(f *testing.F) {
	f.Add("OK")
	f.Add("NO x")
	f.Fuzz(func(t *testing.T, body string) {
		ok, text, err := ParseReply(body)
		if err != nil {
			return
		}
		if ok != strings.HasPrefix(body, "OK") || len(text) > len(body) {
			t.Fatalf("ParseReply(%q) = %v, %q", body, ok, text)
		}
	})
}

func BenchmarkReadRequest(b *testing.B) {
	in := frame("alice", "correct horse battery staple", "smtp", "example.org")
	r := bytes.NewReader(in)
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		r.Reset(in)
		if _, err := ReadRequest(r, ReadOptions{ClientAddrWait: -1}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteReply(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if err := WriteReply(io.Discard, false, "authentication failed"); err != nil {
			b.Fatal(err)
		}
	}
}

package checkpassword

import (
	"errors"
	"fmt"
	"strings"

	"github.com/mailauthd/mailauthd/auth"
)

// AppendEscaped appends s with Dovecot's tab escaping (str_append_tabescaped
// in lib/strescape.c): 0x01 -> 01 '1', TAB -> 01 't', CR -> 01 'r',
// LF -> 01 'n'. Dovecot splits the reply on TAB and refuses a reply that
// holds a raw LF, so every directory value goes through here.
func AppendEscaped(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case 0x01:
			dst = append(dst, 0x01, '1')
		case '\t':
			dst = append(dst, 0x01, 't')
		case '\r':
			dst = append(dst, 0x01, 'r')
		case '\n':
			dst = append(dst, 0x01, 'n')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// Unescape reverses AppendEscaped, as Dovecot's t_strsplit_tabescaped does
// for each field. An escape it does not know is an error (Dovecot would
// keep the byte after 0x01; we are stricter because we only read our own
// output).
func Unescape(s string) (string, error) {
	if !strings.ContainsRune(s, 0x01) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != 0x01 {
			b.WriteByte(s[i])
			continue
		}
		if i+1 >= len(s) {
			return "", errors.New("checkpassword: reply ends inside an escape")
		}
		i++
		switch s[i] {
		case '1':
			b.WriteByte(0x01)
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case 'n':
			b.WriteByte('\n')
		default:
			return "", fmt.Errorf("checkpassword: unknown escape 0x01 %q", s[i])
		}
	}
	return b.String(), nil
}

// EncodeReply renders fields as Dovecot reads them from fd 4: key=value
// pairs separated by TAB, values escaped, no trailing LF (Dovecot rejects a
// reply containing LF).
func EncodeReply(fields []auth.Field) []byte {
	n := 0
	for _, f := range fields {
		n += len(f.Key) + len(f.Value) + 2
	}
	out := make([]byte, 0, n+8)
	for i, f := range fields {
		if i > 0 {
			out = append(out, '\t')
		}
		out = AppendEscaped(out, f.Key)
		out = append(out, '=')
		out = AppendEscaped(out, f.Value)
	}
	return out
}

// DecodeReply splits a reply the way Dovecot does (TAB, then unescape,
// then key at the first '='). Empty fields are skipped like Dovecot's
// passdb does. It exists for tests and for "mailauthd test"-style tools.
func DecodeReply(b []byte) ([]auth.Field, error) {
	if strings.IndexByte(string(b), '\n') >= 0 {
		return nil, errors.New("checkpassword: LF in reply")
	}
	var out []auth.Field
	for _, part := range strings.Split(string(b), "\t") {
		if part == "" {
			continue
		}
		s, err := Unescape(part)
		if err != nil {
			return nil, err
		}
		k, v, _ := strings.Cut(s, "=")
		out = append(out, auth.Field{Key: k, Value: v})
	}
	return out, nil
}

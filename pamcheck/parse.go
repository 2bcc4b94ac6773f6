// Package pamcheck watches the PAM service files mail services depend on and
// reports, after a package upgrade, the ways such a file silently stops working:
// removed (libpam falls back to "other"), moved, changed, a module or include
// target gone, package leftovers, or unsafe permissions.
package pamcheck

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// MaxFileSize bounds what we read from one pam.d file; real ones are a few KiB.
const MaxFileSize = 1 << 20

// libpamLineMax is libpam 1.5's assembly buffer (BUF_SIZE 1024): a logical line
// longer than this makes libpam 1.5 and older abort the whole service.
const libpamLineMax = 1023

// Module types as libpam names them.
const (
	TypeAuth     = "auth"
	TypeAccount  = "account"
	TypeSession  = "session"
	TypePassword = "password"
)

// Line is one logical pam.d line, parsed the way libpam's _pam_parse_conf_file
// parses a per-service file (no service field).
type Line struct {
	Num    int    `json:"line"`             // first physical line number
	Text   string `json:"text"`             // assembled text, comments removed
	Type   string `json:"type"`             // auth, account, session, password; "" when invalid
	Silent bool   `json:"silent,omitempty"` // leading '-': libpam does not log a missing module
	// Control is required, requisite, optional, sufficient, include, substack,
	// "@include" (Debian), or the content of a [value=action ...] bracket.
	Control  string   `json:"control"`
	Bracket  bool     `json:"bracket,omitempty"`
	Module   string   `json:"module,omitempty"`  // module path as written; include target for includes
	Args     []string `json:"args,omitempty"`    // module arguments ([...] kept as one argument)
	Problem  string   `json:"problem,omitempty"` // why libpam installs a must-fail handler for this line
	actions  actions
	parsedOK bool
}

// IsInclude reports whether the line pulls in another file.
func (l Line) IsInclude() bool {
	return l.Control == "include" || l.Control == "substack" || l.Control == "@include"
}

// ErrAbort marks a file libpam refuses as a whole (pam_start fails with
// PAM_ABORT for every user of the service).
var ErrAbort = errors.New("libpam aborts reading this file")

// ParseFile parses a pam.d service file. It returns the lines libpam would act on.
// An error wrapping ErrAbort means libpam 1.5 refuses the whole file.
func ParseFile(r io.Reader) ([]Line, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("file larger than %d bytes", MaxFileSize)
	}
	return parseBytes(data)
}

// parseBytes follows libpam 1.5's _pam_assemble_line: text from the first '#'
// is a comment; a line ending in '\' (trailing blanks ignored) continues on the
// next non-blank line, the backslash becoming a space; blank and comment-only
// lines are skipped, even inside a continuation. A file that ends inside a
// continuation is an incomplete read, which aborts the service.
func parseBytes(data []byte) ([]Line, error) {
	var (
		lines   []Line
		buf     strings.Builder
		startNo int
		inCont  bool
	)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), MaxFileSize+1)
	sc.Split(scanLinesKeepEOL)
	no := 0
	for sc.Scan() {
		no++
		phys := sc.Text()
		s := strings.TrimLeft(phys, " \n\t")
		if s == "" || s[0] == '#' {
			continue // nothing in this line; a continuation goes on past it
		}
		if !inCont {
			startNo = no
		}
		if i := strings.IndexByte(s, '#'); i >= 0 {
			buf.WriteString(s[:i])
			lines = append(lines, parseLine(startNo, buf.String()))
			buf.Reset()
			inCont = false
			continue
		}
		t := strings.TrimRight(s, " \t\n")
		if strings.HasSuffix(t, "\\") {
			buf.WriteString(t[:len(t)-1])
			buf.WriteByte(' ')
			inCont = true
			continue
		}
		buf.WriteString(s)
		lines = append(lines, parseLine(startNo, buf.String()))
		buf.Reset()
		inCont = false
	}
	if err := sc.Err(); err != nil {
		return lines, err
	}
	if inCont {
		return lines, fmt.Errorf("%w: line %d continues with '\\' past the end of the file", ErrAbort, startNo)
	}
	for _, l := range lines {
		if len(l.Text) > libpamLineMax {
			return lines, fmt.Errorf("%w: line %d is %d bytes, over libpam 1.5's %d-byte line buffer", ErrAbort, l.Num, len(l.Text), libpamLineMax)
		}
	}
	return lines, nil
}

func scanLinesKeepEOL(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, data[:i+1], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// strTok is libpam's _pam_StrTok with delimiters " \n\t": a token starting
// with '[' runs to the first ']' not written as "\]" and is returned without
// its brackets ("\]" becomes "]"); no closing ']' takes the rest of the line.
func strTok(s string) (tok, rest string, ok bool) {
	i := 0
	for i < len(s) && isDelim(s[i]) {
		i++
	}
	if i == len(s) {
		return "", "", false
	}
	s = s[i:]
	if s[0] == '[' {
		var b strings.Builder
		j := 1
		for j < len(s) && s[j] != ']' {
			if s[j] == '\\' && j+1 < len(s) && s[j+1] == ']' {
				j++
			}
			b.WriteByte(s[j])
			j++
		}
		if j < len(s) {
			j++ // the closing ']' is consumed as the terminator
		}
		return b.String(), s[j:], true
	}
	j := 0
	for j < len(s) && !isDelim(s[j]) {
		j++
	}
	if j == len(s) {
		return s, "", true
	}
	return s[:j], s[j+1:], true // libpam overwrites the delimiter with NUL
}

func isDelim(c byte) bool { return c == ' ' || c == '\n' || c == '\t' }

func parseLine(num int, text string) Line {
	l := Line{Num: num, Text: strings.TrimRight(text, " \t\n")}
	tok, rest, ok := strTok(text)
	if !ok {
		return l // cannot happen: blank lines never reach here
	}
	// Debian's @include pulls in every type of another file.
	if tok == "@include" {
		l.Control = "@include"
		l.Type = "*"
		if t, _, ok := strTok(rest); ok {
			l.Module = t
		} else {
			l.Problem = "@include without a file name"
		}
		l.parsedOK = l.Problem == ""
		return l
	}
	if strings.HasPrefix(tok, "-") {
		l.Silent = true
		tok = tok[1:]
	}
	switch t := strings.ToLower(tok); t {
	case TypeAuth, TypeAccount, TypeSession, TypePassword:
		l.Type = t
	default:
		l.Problem = fmt.Sprintf("illegal module type %q (libpam installs a must-fail auth handler)", tok)
	}
	ctl, rest2, ok := strTok(rest)
	if !ok {
		if l.Problem == "" {
			l.Problem = "no control flag"
		}
		return l
	}
	l.Bracket = strings.HasPrefix(strings.TrimLeft(rest, " \n\t"), "[")
	l.Control = ctl
	lc := strings.ToLower(ctl)
	switch lc {
	case "required", "requisite", "optional", "sufficient", "include", "substack":
		l.Control = lc
		l.actions = simpleActions(lc)
	default:
		a, err := parseControl(ctl)
		if err != nil && l.Problem == "" {
			l.Problem = "control " + err.Error() + " (libpam treats every result as failure)"
		}
		l.actions = a
	}
	mod, rest3, ok := strTok(rest2)
	if !ok {
		if l.Problem == "" {
			if l.IsInclude() {
				l.Problem = "include without a target"
			} else {
				l.Problem = "no module name"
			}
		}
		return l
	}
	l.Module = mod
	if !l.IsInclude() {
		for {
			a, r, ok := strTok(rest3)
			if !ok {
				break
			}
			l.Args = append(l.Args, a)
			rest3 = r
		}
	}
	l.parsedOK = l.Problem == ""
	return l
}

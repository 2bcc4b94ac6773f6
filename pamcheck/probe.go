package pamcheck

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"syscall"
	"unsafe"

	"github.com/msteinert/pam/v2"
)

// ProbeOptions describe one real PAM transaction.
type ProbeOptions struct {
	Service  string
	User     string
	Password string
	// ConfDir runs the transaction against this pam.d directory
	// (pam_start_confdir) instead of libpam's own lookup.
	ConfDir string
}

// ProbeResult says what libpam did and which files it read.
type ProbeResult struct {
	Service string `json:"service"`
	User    string `json:"user"`
	// Expected is the service file by our own libpam-order resolution ("" = other).
	Expected string `json:"expected"`
	// Opened lists the pam.d files libpam opened during pam_start, seen with inotify.
	Opened []string `json:"opened"`
	// Used is the service file libpam actually read; FellBack is true when
	// it read no file of the service's own and used other.
	Used     string   `json:"used"`
	FellBack bool     `json:"fell_back_to_other"`
	Agrees   bool     `json:"agrees"` // Used matches Expected
	Auth     string   `json:"authenticate"`
	Account  string   `json:"acct_mgmt"`
	OK       bool     `json:"ok"`
	Messages []string `json:"messages,omitempty"` // module text shown to the user
}

// Probe runs authenticate and account management for opt.User against the
// real libpam. Which file libpam used is proven, not guessed: an inotify watch
// on the pam.d directories records every file libpam opens in pam_start
// (libpam opens the service file if it exists, then always "other"). Another
// process opening the same file at the same moment would add noise; the
// result reports both our own resolution and what was observed.
func Probe(ctx context.Context, sys *System, opt ProbeOptions) (*ProbeResult, error) {
	if !validServiceName(opt.Service) {
		return nil, fmt.Errorf("invalid service name %q", opt.Service)
	}
	if opt.User == "" {
		return nil, errors.New("empty user name")
	}
	type out struct {
		r   *ProbeResult
		err error
	}
	ch := make(chan out, 1)
	go func() {
		r, err := probe(sys, opt)
		ch <- out{r, err}
	}()
	select {
	case o := <-ch:
		return o.r, o.err
	case <-ctx.Done():
		// A module may block forever (an unreachable LDAP server); the C
		// call cannot be interrupted, so we stop waiting and say so.
		return nil, fmt.Errorf("PAM transaction for %s did not finish: %w", opt.Service, ctx.Err())
	}
}

func probe(sys *System, opt ProbeOptions) (*ProbeResult, error) {
	r := &ProbeResult{Service: opt.Service, User: opt.User}
	var dirs []string // system paths we resolve in, in libpam order
	if opt.ConfDir != "" {
		dirs = []string{opt.ConfDir}
		if sys.exists(filepath.Join(opt.ConfDir, opt.Service)) {
			r.Expected = filepath.Join(opt.ConfDir, opt.Service)
		}
	} else {
		dirs = sys.ConfDirs
		r.Expected, _ = sys.ResolveService(opt.Service)
	}

	runtime.LockOSThread() // one PAM transaction stays on one OS thread
	defer runtime.UnlockOSThread()

	w, err := newOpenWatch(sys, append(append([]string{}, dirs...), sys.ConfDirs...))
	if err != nil {
		return nil, err
	}
	defer w.close()

	conv := pam.ConversationFunc(func(s pam.Style, msg string) (string, error) {
		switch s {
		case pam.PromptEchoOff:
			return opt.Password, nil
		case pam.PromptEchoOn:
			return opt.User, nil
		case pam.ErrorMsg, pam.TextInfo:
			if len(r.Messages) < 16 && len(msg) < 512 {
				r.Messages = append(r.Messages, msg)
			}
			return "", nil
		}
		return "", errors.New("unsupported conversation")
	})
	var tx *pam.Transaction
	if opt.ConfDir != "" {
		tx, err = pam.StartConfDir(opt.Service, opt.User, conv, sys.Real(opt.ConfDir))
	} else {
		tx, err = pam.Start(opt.Service, opt.User, conv)
	}
	opened, werr := w.read()
	if werr != nil {
		return nil, werr
	}
	r.Opened = opened
	if err != nil {
		return r, fmt.Errorf("pam_start %s: %w", opt.Service, err)
	}
	defer tx.End()

	for _, p := range opened {
		if filepath.Base(p) == opt.Service && contains(dirs, filepath.Dir(p)) {
			r.Used = p
			break
		}
	}
	if r.Used == "" {
		r.FellBack = true
		for _, p := range opened {
			if filepath.Base(p) == OtherService && contains(dirs, filepath.Dir(p)) {
				r.Used = p
				break
			}
		}
	}
	r.Agrees = (r.Expected == "" && r.FellBack) || (r.Expected != "" && r.Expected == r.Used)

	r.Auth, r.Account = "not run", "not run"
	aerr := tx.Authenticate(0)
	r.Auth = pamResult(aerr)
	if aerr == nil {
		merr := tx.AcctMgmt(0)
		r.Account = pamResult(merr)
		r.OK = merr == nil
	}
	return r, nil
}

func pamResult(err error) string {
	if err == nil {
		return "success"
	}
	return err.Error()
}

// openWatch records IN_OPEN events on a set of directories.
type openWatch struct {
	fd   int
	dirs map[int32]string // watch descriptor -> system path
}

func newOpenWatch(sys *System, dirs []string) (*openWatch, error) {
	fd, err := syscall.InotifyInit1(syscall.IN_NONBLOCK | syscall.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	w := &openWatch{fd: fd, dirs: map[int32]string{}}
	for _, d := range uniq(dirs) {
		wd, err := syscall.InotifyAddWatch(fd, sys.Real(d), syscall.IN_OPEN)
		if err != nil {
			continue // a directory that does not exist cannot be opened from
		}
		w.dirs[int32(wd)] = d
	}
	return w, nil
}

func (w *openWatch) read() ([]string, error) {
	var out []string
	buf := make([]byte, 64<<10)
	for {
		n, err := syscall.Read(w.fd, buf)
		if errors.Is(err, syscall.EAGAIN) || n == 0 {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("inotify read: %w", err)
		}
		for off := 0; off+syscall.SizeofInotifyEvent <= n; {
			ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
			start := off + syscall.SizeofInotifyEvent
			end := start + int(ev.Len)
			if end > n {
				break
			}
			name := string(buf[start:end])
			for len(name) > 0 && name[len(name)-1] == 0 {
				name = name[:len(name)-1]
			}
			if d, ok := w.dirs[ev.Wd]; ok && name != "" {
				out = append(out, filepath.Join(d, name))
			}
			off = end
		}
	}
}

func (w *openWatch) close() { syscall.Close(w.fd) }

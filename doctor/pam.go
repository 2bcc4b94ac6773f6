package doctor

import (
	"errors"
	"os"
	"strings"

	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/pamcheck"
)

// checkPAM includes pamcheck's findings: the PAM service files of the
// mail services, against the snapshot when there is one.
func (c *checker) checkPAM() {
	h := c.h
	var cfg pamcheck.Config
	f, err := loadConfig(h, c.opts.Config, "")
	switch {
	case errors.Is(err, os.ErrNotExist):
		// Not configured yet: pamcheck watches its defaults.
		cfg, err = config.Default().Pamcheck.WithDefaults(), nil
	case err == nil:
		cfg = f.Pamcheck
	}
	if err != nil {
		c.add(Finding{Severity: Critical, Area: AreaPAM, Code: "pamcheck-config", Path: c.opts.Config,
			Message: "configuration: " + err.Error(), Fix: "correct the configuration (mailauthd serve --check names the key and line)"})
		return
	}
	sys := pamcheck.NewSystem(h.root, cfg)
	snap, err := pamcheck.LoadSnapshot(sys.Real(cfg.StateDir))
	if err != nil && !errors.Is(err, pamcheck.ErrNoSnapshot) {
		c.add(Finding{Severity: Warning, Area: AreaPAM, Code: "pamcheck-snapshot", Path: cfg.StateDir,
			Message: "pamcheck snapshot unreadable: " + err.Error(), Fix: "mailauthd pamcheck snapshot"})
		snap = nil
	}
	fs := pamcheck.Check(sys, snap, cfg)
	for _, f := range fs {
		msg := f.Message
		if len(f.Services) > 0 {
			msg = "[" + strings.Join(f.Services, ",") + "] " + msg
		}
		c.add(Finding{Severity: f.Severity, Area: AreaPAM, Code: f.Code, Path: f.Path, Line: f.Line, Message: msg, Fix: f.Fix})
	}
	if snap == nil {
		c.add(Finding{Severity: Info, Area: AreaPAM, Code: "pamcheck-no-snapshot", Path: cfg.StateDir,
			Message: "no pamcheck snapshot: only the lint and the configured rules applied to the PAM files",
			Fix:     "mailauthd pamcheck snapshot  (once the PAM files are known-good)"})
	} else if len(fs) == 0 {
		c.add(Finding{Severity: Info, Area: AreaPAM, Code: "pam-ok", Path: cfg.StateDir, Message: "PAM service files match the snapshot"})
	}
}

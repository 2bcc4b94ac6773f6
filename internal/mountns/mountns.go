// Package mountns tells test harnesses how to get a mount namespace whose
// mounts never reach the caller's namespace, for a /proc or a bind mount
// that must disappear with the last process using it (`unshare --mount
// --propagation P ...`).
package mountns

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
)

var probe struct {
	once  sync.Once
	value string
	err   error
}

// Propagation is the value for unshare's --propagation: "private"
// normally. Inside a chroot (the test suite running in a Debian 13 root
// through scripts/in-trixie.sh) "/" is no mount point and unshare cannot
// make it private ("cannot change root filesystem propagation: Invalid
// argument"); every mount there is already private (in-trixie.sh's own
// namespace), so "unchanged" keeps them so. With a shared mount in sight a
// new mount could propagate back: that is an error.
func Propagation() (string, error) {
	probe.once.Do(func() {
		if exec.Command("unshare", "--mount", "--propagation", "private", "true").Run() == nil {
			probe.value = "private"
			return
		}
		info, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			probe.err = fmt.Errorf("mountns: no private mount namespace: %w", err)
			return
		}
		if hasShared(info) {
			probe.err = errors.New(`mountns: no private mount namespace: "/" is not a mount point and some mounts are shared`)
			return
		}
		probe.value = "unchanged"
	})
	return probe.value, probe.err
}

// hasShared reports whether a /proc/self/mountinfo lists a mount with
// shared propagation (an optional field "shared:N").
func hasShared(mountinfo []byte) bool {
	for _, line := range bytes.Split(mountinfo, []byte("\n")) {
		fields := bytes.Fields(line)
		// ID parent major:minor root mountpoint options [optional...] - type source superoptions
		for i := 6; i < len(fields) && string(fields[i]) != "-"; i++ {
			if bytes.HasPrefix(fields[i], []byte("shared:")) {
				return true
			}
		}
	}
	return false
}

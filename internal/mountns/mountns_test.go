package mountns

import (
	"testing"

	"github.com/mailauthd/mailauthd/internal/peertest"
)

func TestHasShared(t *testing.T) {
	for _, c := range []struct {
		name, info string
		want       bool
	}{
		{"private", "36 35 98:0 / /proc rw,nosuid - proc proc rw\n37 35 98:0 / /sys ro - sysfs sysfs ro\n", false},
		{"shared", "36 35 98:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n", true},
		{"slave only", "36 35 98:0 / /mnt rw master:1 - ext4 /dev/vda rw\n", false},
		{"shared among several", "36 35 98:0 / /a rw master:2 shared:7 - ext4 /dev/vda rw\n", true},
		{"the word in a path or option, not a field", "36 35 98:0 /shared:1 /b rw - ext4 shared:1 rw\n", false},
		{"empty", "", false},
	} {
		if got := hasShared([]byte(c.info)); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

func TestPropagation(t *testing.T) {
	p, err := Propagation()
	if err != nil {
		// Not root (unshare needs it), or a chroot with shared mounts.
		peertest.Missing(t, "%v", err)
	}
	if p != "private" && p != "unchanged" {
		t.Fatalf("Propagation() = %q", p)
	}
	t.Logf("unshare --propagation %s", p)
}

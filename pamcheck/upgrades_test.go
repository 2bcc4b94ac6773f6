package pamcheck

import "testing"

func TestConfigUpgrades(t *testing.T) {
	c, err := ParseConfig([]byte("pamcheck:\n  upgrades: refuse\n"))
	if err != nil || c.Upgrades != UpgradesRefuse {
		t.Fatalf("%+v %v", c.Upgrades, err)
	}
	c, err = ParseConfig([]byte("listen: {}\n"))
	if err != nil || c.Upgrades != UpgradesWarn {
		t.Fatalf("default %q %v, want warn", c.Upgrades, err)
	}
	if _, err := ParseConfig([]byte("pamcheck:\n  upgrades: block\n")); err == nil {
		t.Fatal("upgrades: block accepted")
	}
}

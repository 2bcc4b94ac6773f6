package sambatest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// CacheVersion names the layout of the provisioned cache; change it when
// the provisioning or the fixtures change, so stale caches are not used.
const CacheVersion = "1"

// Account is a fixture user in CN=Users. Samba accepts its DN, its UPN
// (sam@example.org) or EXAMPLE\sam as a simple-bind name.
type Account struct {
	SAM, DN, UPN, Password string
	// Data is the AD sub-error a bind with Password gets ("data NNN" in
	// the diagnostic; "" = the bind succeeds).
	Data  string
	State string
}

func account(sam, password, data, state string) Account {
	return Account{SAM: sam, DN: "CN=" + sam + "," + UsersDN, UPN: sam + "@" + DNSDomain,
		Password: password, Data: data, State: state}
}

// The fixture accounts.
var (
	// Alice is a normal user with host: mail.example.org (the schema was
	// extended so users may carry host, see provision) and
	// mail alice@example.org, member of MailUsersGroupDN and, through it,
	// of StaffGroupDN.
	Alice = account("alice", "Alice-Pass-1", "", "active")
	// Service is the search service account (a normal user).
	Service = account("svc-mailauthd", "Service-Pass-1", "", "active (search account)")
	// Disabled has ACCOUNTDISABLE in userAccountControl (samba-tool user disable).
	Disabled = account("disabled", "Disabled-Pass-1", "533", "disabled")
	// AccountExpired has accountExpires in 2009.
	AccountExpired = account("acctexpired", "Acctexp-Pass-1", "701", "account expired")
	// MustChange was created with --must-change-at-next-login (pwdLastSet 0).
	MustChange = account("mustchange", "Mustchange-Pass-1", "773", "must change password at next logon")
	// LockedOut is under LockoutPSO and was locked by LockoutThreshold
	// wrong passwords at start-up.
	LockedOut = account("lockedout", "Lockedout-Pass-1", "775", "locked out")
	// Lockable is under LockoutPSO too, not locked: a test may lock it
	// (once per server).
	Lockable = account("lockable", "Lockable-Pass-1", "", "under the lockout PSO, not locked")
	// PasswordExpired is under ExpiryPSO (maximum age 2 days) and set its
	// password, under faketime, three days before the cache was built.
	PasswordExpired = account("pwexpired", "Pwexpired-Pass-1", "532", "password expired")
	// NoLogonHours has logonHours all zero (may never log on).
	NoLogonHours = account("nohours", "Nohours-Pass-1", "530", "outside logon hours")
	// OtherWorkstation may log on only from workstation OTHERPC.
	OtherWorkstation = account("otherws", "Otherws-Pass-1", "531", "userWorkstations: OTHERPC")
)

// Accounts lists every fixture user.
var Accounts = []Account{Alice, Service, Disabled, AccountExpired, MustChange, LockedOut, Lockable,
	PasswordExpired, NoLogonHours, OtherWorkstation}

// Groups (global security groups): StaffGroupDN contains
// MailUsersGroupDN, which contains Alice. memberOf on Alice holds only the
// direct group; (memberOf:1.2.840.113556.1.4.1941:=StaffGroupDN) matches
// her through the chain.
const (
	MailUsersGroupDN = "CN=mail-users," + UsersDN
	StaffGroupDN     = "CN=staff," + UsersDN
)

// Password settings objects (fine-grained policies) applied to single
// accounts; the domain policy keeps Samba's defaults (no lockout).
const (
	psoContainerDN   = "CN=Password Settings Container,CN=System," + BaseDN
	LockoutPSO       = "CN=lockout," + psoContainerDN
	ExpiryPSO        = "CN=expiry," + psoContainerDN
	LockoutThreshold = 3
)

// Provisioned returns the directory of the provisioned domain with its
// fixtures, building it first if needed. The cache lives in
// $MAILAUTHD_SAMBA_CACHE, else the user cache directory
// (~/.cache/mailauthd/sambatest; the temporary directory without $HOME),
// in a subdirectory named after
// CacheVersion and the Samba version. Concurrent test binaries wait for
// one build (flock).
func Provisioned() (string, error) {
	v, err := exec.Command(SambaPath, "-V").Output()
	if err != nil {
		return "", fmt.Errorf("sambatest: samba -V: %w", err)
	}
	root := os.Getenv("MAILAUTHD_SAMBA_CACHE")
	if root == "" {
		d, err := os.UserCacheDir()
		if err != nil { // no $HOME: a shared temporary location will do
			d = os.TempDir()
		}
		root = filepath.Join(d, "mailauthd", "sambatest")
	}
	version := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '_'
	}, strings.TrimSpace(strings.TrimPrefix(string(v), "Version ")))
	dir := filepath.Join(root, "v"+CacheVersion+"-"+version)
	if _, err := os.Stat(filepath.Join(dir, "private", "sam.ldb")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(root, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(dir, "private", "sam.ldb")); err == nil {
		return dir, nil // built while we waited
	}
	tmp, err := os.MkdirTemp(root, "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := provision(tmp); err != nil {
		return "", err
	}
	// The build directory's own smb.conf names tmp; each instance writes
	// its own, so drop it rather than leave a wrong path in the cache.
	os.Remove(filepath.Join(tmp, "etc", "smb.conf"))
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	return dir, nil
}

// provision builds the domain and its offline fixtures in dir.
func provision(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "etc"), 0o755); err != nil {
		return err
	}
	conf := filepath.Join(dir, "etc", "smb.conf")
	args := []string{"domain", "provision", "--targetdir=" + dir,
		"--realm=" + Realm, "--domain=" + Domain, "--host-name=" + HostName,
		"--server-role=dc", "--use-rfc2307", "--dns-backend=NONE", "--adminpass=" + AdminPass,
		"--option=interfaces = lo", "--option=bind interfaces only = yes"}
	for _, line := range strings.Split(smbConf(dir, options{}, false), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " = ")
		if ok && !strings.HasPrefix(k, "#") && k != "server role" && k != "realm" && k != "workgroup" && k != "netbios name" {
			args = append(args, "--option="+k+" = "+v)
		}
	}
	for _, d := range []string{"run", "log", "usershares"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	if err := run(nil, SambaToolPath, args...); err != nil {
		return err
	}
	db := filepath.Join(dir, "private", "sam.ldb")
	tool := func(args ...string) error {
		return run(nil, SambaToolPath, append(args, "-s", conf, "-H", db)...)
	}
	ldbmodify := func(ldif string, extra ...string) error {
		return run([]byte(ldif), LdbmodifyPath, append([]string{"--configfile=" + conf, "-H", db}, extra...)...)
	}
	// Let users carry host: add it to posixAccount, an auxiliary class of
	// user, as a schema extension would.
	if err := ldbmodify(`dn: CN=PosixAccount,CN=Schema,`+ConfigDN+`
changetype: modify
add: mayContain
mayContain: host
`, "--option=dsdb:schema update allowed=true"); err != nil {
		return err
	}
	for _, a := range Accounts {
		args := []string{"user", "create", a.SAM, a.Password}
		if a == MustChange {
			args = append(args, "--must-change-at-next-login")
		}
		if a == Alice {
			args = append(args, "--mail-address=alice@example.org")
		}
		if err := tool(args...); err != nil {
			return err
		}
	}
	steps := [][]string{
		{"user", "disable", Disabled.SAM},
		{"group", "add", "mail-users"},
		{"group", "add", "staff"},
		{"group", "addmembers", "mail-users", Alice.SAM},
		{"group", "addmembers", "staff", "mail-users"},
		{"domain", "passwordsettings", "pso", "create", "lockout", "10",
			fmt.Sprintf("--account-lockout-threshold=%d", LockoutThreshold),
			"--account-lockout-duration=1440", "--reset-account-lockout-after=1440"},
		{"domain", "passwordsettings", "pso", "apply", "lockout", LockedOut.SAM},
		{"domain", "passwordsettings", "pso", "apply", "lockout", Lockable.SAM},
		{"domain", "passwordsettings", "pso", "create", "expiry", "20", "--max-pwd-age=2"},
		{"domain", "passwordsettings", "pso", "apply", "expiry", PasswordExpired.SAM},
	}
	for _, st := range steps {
		if err := tool(st...); err != nil {
			return err
		}
	}
	// pwdLastSet can only be set to 0 or -1 over LDAP; change the password
	// with the clock three days back instead, so the two-day maximum age
	// of the expiry PSO has passed.
	if err := run(nil, FaketimePath, append([]string{"-f", "-3d", SambaToolPath, "user", "setpassword",
		PasswordExpired.SAM, "--newpassword=" + PasswordExpired.Password}, "-s", conf, "-H", db)...); err != nil {
		return err
	}
	return ldbmodify(`dn: ` + Alice.DN + `
changetype: modify
add: host
host: mail.example.org

dn: ` + AccountExpired.DN + `
changetype: modify
replace: accountExpires
accountExpires: 129000000000000000

dn: ` + NoLogonHours.DN + `
changetype: modify
replace: logonHours
logonHours:: AAAAAAAAAAAAAAAAAAAAAAAAAAAA

dn: ` + OtherWorkstation.DN + `
changetype: modify
replace: userWorkstations
userWorkstations: OTHERPC
`)
}

func run(stdin []byte, path string, args ...string) error {
	cmd := exec.Command(path, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		// Arguments may hold fixture passwords; name the command only.
		return fmt.Errorf("sambatest: %s %s: %w\n%s", filepath.Base(path), strings.Join(args[:min(len(args), 3)], " "), err, out)
	}
	return nil
}

// runtimeFixtures puts the accounts into the states that need a running
// server: LockedOut is locked by wrong binds.
func (s *Server) runtimeFixtures() error {
	tc, err := s.TLSConfig()
	if err != nil {
		return err
	}
	c, err := ldap.DialURL(s.LDAPSURL(), ldap.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}), ldap.DialWithTLSConfig(tc))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetTimeout(10 * time.Second)
	for i := 0; i < LockoutThreshold; i++ {
		if err := c.Bind(LockedOut.DN, "Wrong-Pass-1"); !ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
			return fmt.Errorf("lock out %s: wrong password %d: %v", LockedOut.SAM, i+1, err)
		}
	}
	err = c.Bind(LockedOut.DN, LockedOut.Password)
	var le *ldap.Error
	if !errors.As(err, &le) || !strings.Contains(le.Err.Error(), "data 775") {
		return fmt.Errorf("lock out %s: right password afterwards: %v", LockedOut.SAM, err)
	}
	return nil
}

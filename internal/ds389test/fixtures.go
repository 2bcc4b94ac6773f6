package ds389test

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Account is a fixture user. Its password is Password unless its State
// says otherwise.
type Account struct {
	UID, DN, Password string
	// State is what a bind with Password meets (FINDINGS.md has the wire).
	State string
}

func person(uid, state string) Account {
	return Account{UID: uid, DN: "uid=" + uid + "," + PeopleDN, Password: uid + "pw", State: state}
}

// The fixture accounts, each under ou=people with objectClass inetOrgPerson.
var (
	// Alice is a normal user: host mail.example.org, mail
	// alice@example.org, member of MailUsersGroupDN (and so, nested, of
	// StaffGroupDN).
	Alice = person("alice", "active")
	// Inactivated carries nsAccountLock: TRUE (dsidm account lock).
	Inactivated = person("inactivated", "nsAccountLock: TRUE")
	// LockedOut is under LockoutPolicyDN and was locked by
	// LockoutMaxFailure wrong passwords at start-up.
	LockedOut = person("lockedout", "locked after failures (passwordLockout)")
	// Lockable is under LockoutPolicyDN too, not locked: a test may lock it
	// with LockoutMaxFailure wrong binds (once per server).
	Lockable = person("lockable", "under the lockout policy, not locked")
	// MustChange is under MustChangePolicyDN and had its password reset
	// by Directory Manager: it must change it.
	MustChange = person("mustchange", "must change password (reset by admin)")
	// Expired is under ExpirePolicyDN (no grace logins) with
	// passwordExpirationTime in the past.
	Expired = person("expired", "password expired, no grace login")
	// Expiring is under WarningPolicyDN: its password expires within the
	// warning period, so binds carry the expiring control.
	Expiring = person("expiring", "password expiring (inside passwordWarning)")
)

// Accounts lists every fixture user.
var Accounts = []Account{Alice, Inactivated, LockedOut, Lockable, MustChange, Expired, Expiring}

// Groups (groupOfNames). StaffGroupDN contains MailUsersGroupDN, which
// contains Alice; the memberOf plugin gives Alice both memberOf values.
const (
	MailUsersGroupDN = "cn=mailusers," + GroupsDN
	StaffGroupDN     = "cn=staff," + GroupsDN
)

// Password policies (local, per user through pwdpolicysubentry); the
// global policy in cn=config stays 389-ds's default (no lockout, no expiry).
const (
	policyContainerDN  = "cn=nsPwPolicyContainer," + PeopleDN
	LockoutPolicyDN    = "cn=lockout," + policyContainerDN
	MustChangePolicyDN = "cn=mustchange," + policyContainerDN
	ExpirePolicyDN     = "cn=expire," + policyContainerDN
	WarningPolicyDN    = "cn=warning," + policyContainerDN
	// LockoutMaxFailure is passwordMaxFailure of LockoutPolicyDN.
	LockoutMaxFailure = 3
)

// ReferralDN is the DN of the n-th WithReferrals entry (0-based).
func ReferralDN(n int) string { return "cn=referral" + strconv.Itoa(n) + "," + PeopleDN }

type entry struct {
	dn    string
	attrs map[string][]string
}

func fixtureEntries(o options) []entry {
	aci := []string{
		`(targetattr!="userPassword")(version 3.0; acl "mailauthd test: anyone reads"; allow (read, search, compare) userdn="ldap:///anyone";)`,
		`(targetattr="userPassword")(version 3.0; acl "mailauthd test: self writes password"; allow (write) userdn="ldap:///self";)`,
	}
	es := []entry{
		{Suffix, map[string][]string{"aci": aci}}, // modified, not added
		{PeopleDN, ou("people")},
		{GroupsDN, ou("groups")},
		{"ou=services," + Suffix, ou("services")},
		{ServiceDN, map[string][]string{
			"objectClass": {"top", "person"}, "cn": {"mailauthd"}, "sn": {"service"},
			"userPassword": {ServicePassword},
		}},
		{policyContainerDN, map[string][]string{"objectClass": {"top", "nsContainer"}, "cn": {"nsPwPolicyContainer"}}},
		policy(LockoutPolicyDN, map[string][]string{
			"passwordLockout": {"on"}, "passwordMaxFailure": {strconv.Itoa(LockoutMaxFailure)},
			"passwordLockoutDuration": {"86400"}, "passwordUnlock": {"on"},
			"passwordResetFailureCount": {"86400"},
		}),
		policy(MustChangePolicyDN, map[string][]string{"passwordMustChange": {"on"}}),
		policy(ExpirePolicyDN, map[string][]string{
			"passwordExp": {"on"}, "passwordMaxAge": {"86400"}, "passwordGraceLimit": {"0"},
			"passwordWarning": {"3600"},
		}),
		policy(WarningPolicyDN, map[string][]string{
			"passwordExp": {"on"}, "passwordMaxAge": {"864000"}, "passwordWarning": {"8640000"},
			"passwordGraceLimit": {"0"},
		}),
	}
	user := func(a Account, extra map[string][]string) entry {
		attrs := map[string][]string{
			"objectClass": {"top", "person", "organizationalPerson", "inetOrgPerson"},
			"uid":         {a.UID}, "cn": {a.UID}, "sn": {a.UID}, "userPassword": {a.Password},
		}
		for k, v := range extra {
			attrs[k] = v
		}
		return entry{a.DN, attrs}
	}
	es = append(es,
		user(Alice, map[string][]string{
			"objectClass": {"top", "person", "organizationalPerson", "inetOrgPerson", "hostObject"},
			"host":        {"mail.example.org"}, "mail": {"alice@example.org"},
		}),
		user(Inactivated, map[string][]string{"nsAccountLock": {"TRUE"}}),
		user(LockedOut, map[string][]string{"pwdpolicysubentry": {LockoutPolicyDN}}),
		user(Lockable, map[string][]string{"pwdpolicysubentry": {LockoutPolicyDN}}),
		user(MustChange, map[string][]string{"pwdpolicysubentry": {MustChangePolicyDN}}),
		user(Expired, map[string][]string{"pwdpolicysubentry": {ExpirePolicyDN}}),
		user(Expiring, map[string][]string{"pwdpolicysubentry": {WarningPolicyDN}}),
		entry{MailUsersGroupDN, map[string][]string{
			"objectClass": {"top", "groupOfNames"}, "cn": {"mailusers"}, "member": {Alice.DN},
		}},
		entry{StaffGroupDN, map[string][]string{
			"objectClass": {"top", "groupOfNames"}, "cn": {"staff"}, "member": {MailUsersGroupDN},
		}},
	)
	for i := 0; i < o.referrals; i++ {
		es = append(es, entry{ReferralDN(i), map[string][]string{
			"objectClass": {"top", "referral", "extensibleObject"},
			"cn":          {"referral" + strconv.Itoa(i)},
			"ref":         {"ldap://127.0.0.1:1/cn=referral" + strconv.Itoa(i) + ",dc=elsewhere,dc=example"},
		}})
	}
	return es
}

func ou(name string) map[string][]string {
	return map[string][]string{"objectClass": {"top", "organizationalUnit"}, "ou": {name}}
}

func policy(dn string, attrs map[string][]string) entry {
	a := map[string][]string{"objectClass": {"top", "ldapsubentry", "passwordpolicy"}}
	for k, v := range attrs {
		a[k] = v
	}
	return entry{dn, a}
}

// loadFixtures adds the fixture entries as Directory Manager and drives the
// accounts into their states.
func (s *Server) loadFixtures() error {
	c, err := s.Admin()
	if err != nil {
		return err
	}
	defer c.Close()
	for _, e := range fixtureEntries(s.opts) {
		if e.dn == Suffix {
			m := ldap.NewModifyRequest(e.dn, nil)
			m.Add("aci", e.attrs["aci"])
			if err := c.Modify(m); err != nil {
				return fmt.Errorf("aci on %s: %w", e.dn, err)
			}
			continue
		}
		a := ldap.NewAddRequest(e.dn, nil)
		for k, v := range e.attrs {
			a.Attribute(k, v)
		}
		req := a
		if len(e.attrs["ref"]) > 0 {
			// Without ManageDsaIT the server would refer the add itself.
			req.Controls = append(req.Controls, ldap.NewControlManageDsaIT(true))
		}
		if err := c.Add(req); err != nil {
			return fmt.Errorf("add %s: %w", e.dn, err)
		}
	}
	// Reset by an administrator: with passwordMustChange the password must
	// now be changed at the next bind.
	m := ldap.NewModifyRequest(MustChange.DN, nil)
	m.Replace("userPassword", []string{MustChange.Password})
	if err := c.Modify(m); err != nil {
		return fmt.Errorf("reset %s: %w", MustChange.UID, err)
	}
	m = ldap.NewModifyRequest(Expired.DN, nil)
	m.Replace("passwordExpirationTime", []string{"20200101000000Z"})
	if err := c.Modify(m); err != nil {
		return fmt.Errorf("expire %s: %w", Expired.UID, err)
	}
	// Due in a day: well inside the 100-day passwordWarning period.
	m = ldap.NewModifyRequest(Expiring.DN, nil)
	m.Replace("passwordExpirationTime", []string{time.Now().UTC().Add(24 * time.Hour).Format("20060102150405Z")})
	if err := c.Modify(m); err != nil {
		return fmt.Errorf("expiring %s: %w", Expiring.UID, err)
	}
	return s.lockOut(LockedOut)
}

// lockOut binds with a wrong password until the server refuses the right
// one with constraintViolation (passwordMaxFailure reached).
func (s *Server) lockOut(a Account) error {
	c, err := ldap.DialURL(s.URL(), ldap.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetTimeout(5 * time.Second)
	for i := 0; i < LockoutMaxFailure; i++ {
		if err := c.Bind(a.DN, "wrong-"+a.Password); !ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) &&
			!ldap.IsErrorWithCode(err, ldap.LDAPResultConstraintViolation) {
			return fmt.Errorf("lock out %s: wrong password %d: %v", a.UID, i+1, err)
		}
	}
	if err := c.Bind(a.DN, a.Password); !ldap.IsErrorWithCode(err, ldap.LDAPResultConstraintViolation) {
		return errors.New("lock out " + a.UID + ": right password after failures: " + fmt.Sprint(err))
	}
	return nil
}

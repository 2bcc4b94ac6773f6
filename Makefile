# mailauthd — the two commands users need are `make demo` and `make test`.
GO      ?= go
# A version that sorts (scripts/version.sh): X.Y.Z on a tag, else
# X.Y.Z+gitYYYYMMDDhhmm.<hash> or 0~gitYYYYMMDDhhmm.<hash>.
VERSION ?= $(shell scripts/version.sh 2>/dev/null || echo 0~unknown)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN     := bin/mailauthd
MANPAGES := bin/man/mailauthd.8 bin/man/mailauthd.yaml.5

.PHONY: all build man deps demo test unit bench bench-scale fuzz vet fmt install deb clean

all: build

# PIE: the binary uses cgo (PAM), so it is linked externally and gets the
# distribution's hardening (relro, bindnow via CGO_LDFLAGS in debian/rules).
build:
	$(GO) build -trimpath -buildmode=pie -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/mailauthd

# Man pages from the markdown in docs/man (Debian package go-md2man).
man: $(MANPAGES)
bin/man/%: docs/man/%.md
	@mkdir -p bin/man
	go-md2man -in $< -out $@

# Installs the real peers (slapd, sasl2-bin, postfix, dovecot, libpam) from Debian.
deps:
	bash scripts/install-deps.sh

demo: deps build
	bash scripts/demo.sh $(BIN)

# Every test, unit and integration, against real slapd/testsaslauthd/Postfix/Dovecot/PAM.
test: deps vet
	$(GO) test -race -count=1 -timeout 8m ./...

# Unit tests only: fast, need nothing installed.
unit:
	MAILAUTHD_UNIT_ONLY=1 $(GO) test -count=1 -short ./...

bench: deps build
	$(GO) test -run '^$$' -bench . -benchmem ./...
	bash bench/run.sh $(BIN)

# Opt-in: cost curves at 10k, 100k and 1M users (BENCH_SCALE_USERS), about
# 20 minutes and ~2 GB of temp disk at 1M (docs/benchmarks.md).
bench-scale: deps build
	bash bench/scale.sh $(BIN)

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

# Short fuzz runs of every parser (FUZZTIME each).
FUZZTIME ?= 20s
fuzz:
	@for pkg in $$(go list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

PREFIX  ?= /usr
DESTDIR ?=
UNITDIR ?= $(PREFIX)/lib/systemd/system
# The configuration is 0644: it holds no secret (the bind password has its
# own file, e.g. in /etc/mailauthd/private, root:mailauthd 0750), and
# "mailauthd checkpassword" runs as Dovecot's user and must read it.
install: build man
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/mailauthd
	install -D -m 0644 packaging/mailauthd.yaml $(DESTDIR)/etc/mailauthd/mailauthd.yaml
	install -d -m 0750 $(DESTDIR)/etc/mailauthd/private
	install -D -m 0644 -t $(DESTDIR)$(UNITDIR) packaging/systemd/mailauthd.service \
	  packaging/systemd/mailauthd.socket packaging/systemd/mailauthd-control.socket \
	  packaging/pamcheck/systemd/mailauthd-pamcheck.service \
	  packaging/pamcheck/systemd/mailauthd-pamcheck.path packaging/pamcheck/systemd/mailauthd-pamcheck.timer
	install -D -m 0644 packaging/dovecot/mailauthd.lua $(DESTDIR)$(PREFIX)/share/mailauthd/dovecot/mailauthd.lua
	install -D -m 0644 packaging/sysusers.d/mailauthd.conf $(DESTDIR)$(PREFIX)/lib/sysusers.d/mailauthd.conf
	install -D -m 0644 packaging/tmpfiles.d/mailauthd.conf $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/mailauthd.conf
	install -D -m 0644 packaging/pamcheck/apt/50mailauthd-pamcheck $(DESTDIR)/etc/apt/apt.conf.d/50mailauthd-pamcheck
	install -D -m 0644 packaging/doctor/apt/50mailauthd-doctor $(DESTDIR)/etc/apt/apt.conf.d/50mailauthd-doctor
	install -D -m 0644 bin/man/mailauthd.8 $(DESTDIR)$(PREFIX)/share/man/man8/mailauthd.8
	install -D -m 0644 bin/man/mailauthd.yaml.5 $(DESTDIR)$(PREFIX)/share/man/man5/mailauthd.yaml.5
	install -D -m 0644 packaging/bash-completion/mailauthd $(DESTDIR)$(PREFIX)/share/bash-completion/completions/mailauthd
	install -D -m 0644 packaging/fail2ban/filter.d/mailauthd.conf $(DESTDIR)/etc/fail2ban/filter.d/mailauthd.conf
	install -D -m 0644 packaging/fail2ban/jail.d/mailauthd.conf $(DESTDIR)/etc/fail2ban/jail.d/mailauthd.conf
	install -d -m 0700 $(DESTDIR)/var/lib/mailauthd/pamcheck
	@# On the live system, what the package's maintainer scripts do: the
	@# daemon's user, the state directory, the private directory's group.
	@if [ -z "$(DESTDIR)" ]; then \
	  systemd-sysusers mailauthd.conf && systemd-tmpfiles --create mailauthd.conf && \
	  chgrp mailauthd /etc/mailauthd/private; \
	fi
	install -D -m 0644 -t $(DESTDIR)$(PREFIX)/share/doc/mailauthd/pam.d packaging/pam.d/dovecot \
	  packaging/pam.d/smtp packaging/pam.d/mailauthd

# The Debian package: dpkg-buildpackage with debhelper (packaging/deb/debian),
# from the same "make install" tree; lintian when installed.
deb:
	bash packaging/deb/build.sh $(VERSION)

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin .demo

# mailauthd — the two commands users need are `make demo` and `make test`.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN     := bin/mailauthd

.PHONY: all build deps demo test unit bench fuzz vet fmt install deb clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/mailauthd

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
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/mailauthd
	install -D -m 0640 packaging/mailauthd.yaml $(DESTDIR)/etc/mailauthd/mailauthd.yaml
	install -D -m 0644 -t $(DESTDIR)$(UNITDIR) packaging/systemd/mailauthd.service \
	  packaging/systemd/mailauthd.socket packaging/systemd/mailauthd-control.socket \
	  packaging/pamcheck/systemd/mailauthd-pamcheck.service \
	  packaging/pamcheck/systemd/mailauthd-pamcheck.path packaging/pamcheck/systemd/mailauthd-pamcheck.timer
	install -D -m 0644 packaging/dovecot/mailauthd.lua $(DESTDIR)$(PREFIX)/share/mailauthd/dovecot/mailauthd.lua
	install -D -m 0644 packaging/sysusers.d/mailauthd.conf $(DESTDIR)$(PREFIX)/lib/sysusers.d/mailauthd.conf
	install -D -m 0644 packaging/tmpfiles.d/mailauthd.conf $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/mailauthd.conf
	install -D -m 0644 packaging/pamcheck/apt/50mailauthd-pamcheck $(DESTDIR)/etc/apt/apt.conf.d/50mailauthd-pamcheck
	install -d -m 0700 $(DESTDIR)/var/lib/mailauthd/pamcheck

# A Debian package built from the same install tree (dpkg-deb only).
deb: build
	bash packaging/deb/build.sh $(VERSION)

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin .demo

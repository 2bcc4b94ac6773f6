# mailauthd — the two commands users need are `make demo` and `make test`.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN     := bin/mailauthd

.PHONY: all build deps demo test unit integration bench fuzz vet fmt clean

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

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin .demo

# Postilion: `make run` starts a server from the checkout, `make test` runs every test.
CARGO ?= cargo

.PHONY: all build run test deps lint bench clean

all: build

build:
	$(CARGO) build --release

# Loopback, port 2525, spool ./spool, mailboxes ./mail: no config file. --allow-root: started
# as root, it stays root instead of switching to a user `postilion` (README, "Security model").
run:
	$(CARGO) run --release -- serve --allow-root

# What the tests need beyond the Rust toolchain: Python 3 for the smtplib client, openssl for
# s_client against the TLS listeners, testssl.sh (with dig and hexdump) to scan them.
deps:
	@missing=""; \
	command -v python3 >/dev/null 2>&1 || missing="$$missing python3"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v testssl >/dev/null 2>&1 || missing="$$missing testssl.sh"; \
	command -v dig >/dev/null 2>&1 || missing="$$missing dnsutils"; \
	command -v hexdump >/dev/null 2>&1 || missing="$$missing bsdextrautils"; \
	if [ -n "$$missing" ]; then apt-get update && apt-get install -y $$missing; fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

test: deps lint
	$(CARGO) test

# Load figures (messages/s, latency, RSS), against Postfix too where it is installed.
bench:
	$(CARGO) bench --bench load

clean:
	$(CARGO) clean

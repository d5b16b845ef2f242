# Postilion: `make run` starts a server from the checkout, `make test` runs every test,
# `make install` puts it on this machine (or under DESTDIR), `make static` builds one static
# binary.
CARGO ?= cargo
PREFIX ?= /usr/local
DESTDIR ?=
# What `make install` installs (`make static` makes $(STATIC)).
BINARY ?= target/release/postilion
# The target of `make static`: this machine's (x86_64-unknown-linux-gnu here) by default;
# README "Embedded" for ARM boards.
TARGET ?= $(shell rustc -vV | sed -n 's/^host: //p')
STATIC = target/$(TARGET)/release/postilion
SOURCES := Cargo.toml Cargo.lock $(shell find src -name '*.rs')

.PHONY: all build run test deps lint bench clean install uninstall static

all: build

# The touch: cargo leaves the binary alone when only files it does not link changed, and the
# install rule below compares times.
build:
	$(CARGO) build --release
	touch target/release/postilion

# For `make install`: built only when missing or older than the sources, so that
# `make build && sudo make install` does not run cargo as root.
target/release/postilion: $(SOURCES)
	@if [ "$$(id -u)" = 0 ] && [ -n "$$SUDO_USER" ]; then \
		echo "the release binary is missing or older than the sources: run 'make build' as $$SUDO_USER first"; \
		exit 1; \
	fi
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

# The binary, its sendmail links (Debian's places: $(PREFIX)/sbin/sendmail and
# $(PREFIX)/lib/sendmail) and $(PREFIX)/bin/mailq (a sendmail or mailq that is not our link is
# another MTA's: said, and left), the unit (its ExecStart under PREFIX), the example
# configuration unless there is one, the spool (0711, as the daemon makes it: sendmail's
# users pass through it to maildrop/, so installing again must not close it) and the
# mailboxes. As root with no DESTDIR: the `postilion` user too, and the two directories made
# its own.
install: $(BINARY)
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)/etc/systemd/system
	install -m 0755 $(BINARY) $(DESTDIR)$(PREFIX)/sbin/postilion
	@$(call link,postilion,$(DESTDIR)$(PREFIX)/sbin/sendmail)
	@$(call link,../sbin/postilion,$(DESTDIR)$(PREFIX)/lib/sendmail)
	@$(call link,../sbin/postilion,$(DESTDIR)$(PREFIX)/bin/mailq)
	sed 's|^ExecStart=/usr/local/sbin/postilion |ExecStart=$(PREFIX)/sbin/postilion |' \
		contrib/postilion.service > $(DESTDIR)/etc/systemd/system/postilion.service
	chmod 0644 $(DESTDIR)/etc/systemd/system/postilion.service
	@if [ -e $(DESTDIR)/etc/postilion.conf ]; then \
		echo "$(DESTDIR)/etc/postilion.conf exists: kept"; \
	else \
		echo "install -m 0644 contrib/postilion.conf.example $(DESTDIR)/etc/postilion.conf"; \
		install -m 0644 contrib/postilion.conf.example $(DESTDIR)/etc/postilion.conf; \
	fi
	install -d -m 0711 $(DESTDIR)/var/spool/postilion
	install -d -m 0700 $(DESTDIR)/var/mail/postilion
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then \
		if ! id -u postilion >/dev/null 2>&1; then \
			echo "useradd --system postilion"; \
			useradd --system --user-group --no-create-home --home-dir /nonexistent \
				--shell /usr/sbin/nologin postilion || exit 1; \
		fi; \
		echo "chown postilion:postilion /var/spool/postilion /var/mail/postilion"; \
		chown postilion:postilion /var/spool/postilion /var/mail/postilion || exit 1; \
	elif [ -z "$(DESTDIR)" ]; then \
		echo "not root: create the postilion user and give it the two directories yourself"; \
	fi

# Removes the binary, the links and the unit; keeps /etc/postilion.conf, the spool, the
# mailboxes and the postilion user: no make target deletes mail.
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/sbin/postilion $(DESTDIR)/etc/systemd/system/postilion.service
	@$(call unlink,postilion,$(DESTDIR)$(PREFIX)/sbin/sendmail)
	@$(call unlink,../sbin/postilion,$(DESTDIR)$(PREFIX)/lib/sendmail)
	@$(call unlink,../sbin/postilion,$(DESTDIR)$(PREFIX)/bin/mailq)
	@echo "kept: $(DESTDIR)/etc/postilion.conf, $(DESTDIR)/var/spool/postilion," \
		"$(DESTDIR)/var/mail/postilion and the postilion user"

# $(call unlink,TARGET,NAME) removes NAME if it is our link to TARGET, never another MTA's
# sendmail or mailq.
# $(call link,TARGET,NAME) makes NAME a symbolic link to TARGET unless it is one already;
# anything else at NAME (another MTA's sendmail or mailq) is left as it is, and said.
link = if [ "$$(readlink "$(2)")" = "$(1)" ]; then :; \
	elif [ -e "$(2)" ] || [ -L "$(2)" ]; then \
		echo "$(2) is not a link to postilion (another MTA's?): left as it is"; \
	else install -d "$$(dirname "$(2)")" && ln -s "$(1)" "$(2)" && echo "ln -s $(1) $(2)"; fi

unlink = if [ "$$(readlink "$(2)")" = "$(1)" ]; then rm -f "$(2)" && echo "rm -f $(2)"; fi

# One statically linked binary (no shared libraries, no NSS), stripped by the release profile.
static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --target $(TARGET)
	@echo "$(STATIC): $$(wc -c < $(STATIC)) bytes ($$(($$(wc -c < $(STATIC)) / 1024)) KiB), stripped"

clean:
	$(CARGO) clean

# mptcpctl: `make demo` shows the datapath on the netns lab; `make test` runs every test tier.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
MPTCPCTL := $(VENV)/bin/mptcpctl
KREL := $(shell uname -r)
APT_PKGS := python3-bpfcc python3-venv iproute2 ethtool nftables tcpdump tshark clang-format vagrant
DEMO_SECONDS ?= 20
PYTEST_ARGS ?=
BENCHES := datapath dsscsum handover cc lb load
OPT := /opt/mptcpctl

.PHONY: help deps deps-system demo test test-unit test-bpf test-lab lint bench fuzz fuzz-corpus clean install uninstall $(BENCHES)

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

deps: deps-system $(VENV)/.installed ## system packages, kernel headers, bpffs, the venv (idempotent)

# Debian packages, kernel headers for BCC and bpffs; quiet when everything is already there.
deps-system:
	@missing=""; for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	fi
	@if [ ! -e /lib/modules/$(KREL)/build/include/generated ]; then \
		if apt-cache show linux-headers-$(KREL) >/dev/null 2>&1; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-headers-$(KREL) >/dev/null || exit 1; \
		else \
			dpkg-query -W -f='$${Status}' linux-headers-amd64 2>/dev/null | grep -q "ok installed" || \
				DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-headers-amd64 >/dev/null || exit 1; \
			hdr=$$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -1); \
			common=$${hdr%-amd64}-common; \
			mkdir -p /lib/modules/$(KREL); \
			ln -sfn $$hdr /lib/modules/$(KREL)/build; ln -sfn $$common /lib/modules/$(KREL)/source; \
			echo "warning: no headers for kernel $(KREL); linked $$(basename $$hdr) (programs use UAPI only)"; \
		fi; \
	fi
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v 'is ignored' >&2; test $${PIPESTATUS[0]} -eq 0
	@touch $@

demo: deps ## the lab, mptcpctl up, a transfer through a handover, watched live (~20 s)
	@$(PY) -m cli.demo --seconds $(DEMO_SECONDS)

test: deps lint ## every test tier (unit, bpf test-run, lab); MPTCPCTL_REQUIRE_ALL=1 fails on skips
	@$(PY) -m pytest $(PYTEST_ARGS) tests

test-unit: deps ## unit tests only (no root)
	@$(PY) -m pytest $(PYTEST_ARGS) tests/unit

test-bpf: deps ## BPF test-run table tests
	@$(PY) -m pytest $(PYTEST_ARGS) tests/bpf

test-lab: deps ## netns lab tests
	@$(PY) -m pytest $(PYTEST_ARGS) tests/lab

lint: deps ## ruff on Python, clang-format check on bpf/
	@$(VENV)/bin/ruff check controller cli tests bench
	@clang-format --dry-run --Werror bpf/*.c bpf/include/*.h

bench: deps $(VENV)/.bench-installed ## all benchmarks, or some: `make bench cc` (datapath dsscsum handover cc lb load) -> bench/results/
	@status=0; for b in $(or $(filter $(BENCHES),$(MAKECMDGOALS)),$(BENCHES)); do \
		echo "== bench $$b"; $(PY) -m bench.$$b || { echo "== bench $$b: a goal was missed or it failed (above)"; status=1; }; \
	done; exit $$status

# `make bench cc` names a benchmark: the goal itself does nothing.
$(BENCHES):
	@:

$(VENV)/.bench-installed: $(VENV)/.installed
	@dpkg-query -W -f='$${Status}' mptcpd 2>/dev/null | grep -q "ok installed" || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mptcpd >/dev/null
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]' 2>&1 | grep -v 'is ignored' >&2; test $${PIPESTATUS[0]} -eq 0
	@touch $@

FUZZ_PACKETS ?= 1000000
FUZZ_SEED ?= 1
FUZZ_PROGRAM ?= all
fuzz: deps ## fuzz datapath XDP+tc, LB, DSS fix via test-run: 1M mutated/random packets each (~2.5 min)
	@$(PY) -m bench.fuzz --packets $(FUZZ_PACKETS) --seed $(FUZZ_SEED) --program $(FUZZ_PROGRAM)

fuzz-corpus: deps ## rewrite the fuzz seed corpus tests/data/fuzz/seeds.txt from tests/fuzz_corpus.py
	@$(PY) tests/fuzz_corpus.py

clean: ## remove the venv and caches
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

install: deps-system ## venv in /opt/mptcpctl, /usr/local/bin/mptcpctl, the systemd unit, the config example
	@test -x $(OPT)/bin/python || /usr/bin/python3 -m venv --system-site-packages $(OPT)
	@$(OPT)/bin/pip install -q --disable-pip-version-check --upgrade . 2>&1 | grep -v 'is ignored' >&2; test $${PIPESTATUS[0]} -eq 0
	@rm -rf build
	ln -sfn $(OPT)/bin/mptcpctl /usr/local/bin/mptcpctl
	install -D -m 0644 controller/data/mptcpctl.service /etc/systemd/system/mptcpctl.service
	install -D -m 0644 controller/data/mptcpctl.toml.example /etc/mptcpctl/mptcpctl.toml.example
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed; start it with: systemctl enable --now mptcpctl"

uninstall: ## remove exactly what `make install` added (keeps /etc/mptcpctl/mptcpctl.toml)
	-@if [ -d /run/systemd/system ]; then systemctl disable --now mptcpctl 2>/dev/null; fi
	rm -f /etc/systemd/system/mptcpctl.service /etc/mptcpctl/mptcpctl.toml.example
	@if [ -L /usr/local/bin/mptcpctl ] && [ "$$(readlink /usr/local/bin/mptcpctl)" = $(OPT)/bin/mptcpctl ]; then rm -f /usr/local/bin/mptcpctl; fi
	-rmdir /etc/mptcpctl 2>/dev/null
	rm -rf $(OPT)
	@if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

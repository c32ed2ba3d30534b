# mailfleet — one entry point for every chore. `make demo` and `make test` work on a fresh
# machine with Python 3.11 and pip: both install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test unit lint crds docs demo bench chart manifests images clean kube \
	sandbox-tools test-tools mutation

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install lint kube sandbox-tools test-tools
	$(PY) -m pytest -q

# The sandbox's real control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# etcd) built from the official Go modules into ~/.cache/mailfleet/kubernetes/<version>/
# (MAILFLEET_KUBE_CACHE overrides), reused when present. Without Go the sandbox keeps to its
# API emulator.
kube:
	@if command -v go >/dev/null 2>&1; then sandbox/kube-build/build.sh; \
	else echo "make kube: skipped, no Go toolchain here; the sandbox uses its API emulator"; fi

# Host tools the sandbox uses beyond Python: nft (Debian package nftables) for the egress
# gateway stand-in (mailfleet_sandbox.egress_gateway). Installed only when missing and we are
# root; otherwise a notice says what is missing (the sandbox then runs without the stand-in
# and its tests skip).
sandbox-tools:
	@if command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "make sandbox-tools: installing nftables (nft) for the egress gateway stand-in"; \
		(apt-get install -y --no-install-recommends nftables \
		 || (apt-get update && apt-get install -y --no-install-recommends nftables)) \
		 >/dev/null || echo "make sandbox-tools: apt-get could not install nftables"; \
	else echo "make sandbox-tools: nft is missing (Debian package nftables, install as root);" \
		"the sandbox runs without the egress gateway stand-in and its tests skip"; fi

# Host tools the tests need: strace (Debian package strace) for the durability test
# (tests/integration/sender/test_sender_durability_syscalls.py), which fails, not skips,
# without it. Installed with apt-get when missing (as root, or through password-less sudo).
test-tools:
	@if command -v strace >/dev/null 2>&1 || [ -x /usr/bin/strace ]; then :; \
	else \
		if [ "$$(id -u)" = 0 ]; then SUDO=; \
		elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=sudo; \
		else SUDO=none; fi; \
		if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then \
			echo "make test-tools: installing strace for the durability test"; \
			($$SUDO apt-get install -y --no-install-recommends strace \
			 || ($$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends \
			     strace)) >/dev/null || echo "make test-tools: apt-get could not install strace"; \
		else echo "make test-tools: strace is missing (Debian package strace, install as" \
			"root); the durability test will fail"; fi; \
	fi

unit: install
	$(PY) -m pytest -q tests/unit

# Mutation testing of the safety-critical modules (docs/mutation-testing.md): slow, so not part
# of `make test`. The last line printed is one JSON object with the score.
mutation: install
	nice -n 19 $(PY) bench/mutation.py

crds: install
	$(BIN)/mailfleet crds --output-dir crds

docs: install
	$(BIN)/mailfleet docs > docs/api-reference.md

demo: install sandbox-tools
	$(PY) -m mailfleet_sandbox.demo

bench: install
	$(PY) bench/apiserver.py
	$(PY) bench/sender_throughput.py

# The chart's generated files (CRD templates from crds/, RBAC rules from the operator's API
# table, Artifact Hub annotations, Grafana dashboard, Argo CD health checks): charts/generate.py.
chart: install
	$(PY) charts/generate.py chart

# deploy/mailfleet.yaml: the chart rendered with Helm's library, for `kubectl apply -f` users.
manifests: install
	$(PY) charts/generate.py manifests

# Container images of the operator and the sender, where a docker daemon is reachable.
IMAGE_VERSION ?= $(shell sed -n 's/^appVersion: *//p' charts/mailfleet/Chart.yaml)
images:
	@if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then \
		echo "make images: skipped, docker is not usable here (no docker CLI or no daemon)"; \
	else \
		set -e; \
		docker build -f operator/Dockerfile -t ghcr.io/mailfleet/operator:$(IMAGE_VERSION) \
			--build-arg VERSION=$(IMAGE_VERSION) \
			--build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) .; \
		if [ -f sender-image/Dockerfile ]; then \
			docker build -f sender-image/Dockerfile -t ghcr.io/mailfleet/sender:$(IMAGE_VERSION) \
				--build-arg VERSION=$(IMAGE_VERSION) .; \
		else echo "make images: sender-image/Dockerfile not found, sender image skipped"; fi; \
	fi

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .mutation

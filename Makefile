# kdumpkit — everything the project needs is installed from here.
# `make test` and `make demo` work on a bare Debian 12 machine (root or sudo).

PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
APT_PKGS  := qemu-system-x86 qemu-utils busybox-static kexec-tools makedumpfile crash cpio \
             liblzo2-dev zlib1g-dev libzstd-dev zstd kmod gcc python3-dev time openssh-server openssh-client \
             nfs-ganesha nfs-ganesha-vfs mmdebstrap fdisk
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# pytest exits 5 when a tier selects no test; that is not a failure here.
PYTEST     = $(BIN)/python -m pytest
define tier
	$(PYTEST) $(1); rc=$$?; if [ $$rc -eq 5 ]; then echo "(no tests in $(1))"; rc=0; fi; exit $$rc
endef

.PHONY: all bootstrap apt venv wheelhouse test test-unit test-interop test-e2e test-lab-full fuzz lint typecheck demo bench clean

all: test

bootstrap: apt venv

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# What an administrator installs from on a machine without network (README: "Installing it").
wheelhouse: bootstrap
	$(BIN)/python -m pip wheel -q -w dist/wheelhouse .

test: bootstrap
	@$(MAKE) --no-print-directory test-unit
	@$(MAKE) --no-print-directory test-interop
	@$(MAKE) --no-print-directory test-e2e

test-unit: bootstrap
	@$(call tier,tests/unit -q -p no:cacheprovider)

# The real-kernel interop tests need one reference crash per lab kernel
# (bullseye, bookworm, trixie): on a fresh machine the first run downloads the
# kernels and builds them (about a minute each with TCG), cached under
# $${KDUMPKIT_CACHE:-~/.cache/kdumpkit}/lab/reference; they are never skipped for
# want of a cache.  A failed build names its kept console log.
test-interop: bootstrap
	@$(call tier,tests/interop -q -p no:cacheprovider)

# The e2e tier boots real kernels in QEMU (bookworm by default; downloads are
# cached under $${KDUMPKIT_CACHE:-~/.cache/kdumpkit}).
test-e2e: bootstrap
	@$(call tier,tests/e2e -q -p no:cacheprovider)

test-lab-full: bootstrap
	KDUMPKIT_LAB_FULL=1 $(PYTEST) tests/e2e -q -p no:cacheprovider

fuzz: bootstrap
	KDUMPKIT_FUZZ_EXAMPLES=20000 $(PYTEST) tests/unit -q -k fuzz -p no:cacheprovider

lint: bootstrap
	$(BIN)/ruff check src tests

typecheck: bootstrap
	$(BIN)/mypy

demo: bootstrap
	$(BIN)/kdumpkit lab demo

bench: bootstrap
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

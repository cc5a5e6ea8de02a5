# Two entry points on a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Both install what they need: Debian packages (apt-get, only when missing) and a .venv.

VENV        ?= .venv
PY          := $(VENV)/bin/python
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base dnsmasq dnsmasq-utils \
                openssh-server openssh-client python3-libvirt libvirt-dev pkg-config gcc python3-venv \
                iproute2 util-linux busybox-static kmod e2fsprogs ovmf xorriso isolinux syslinux-common \
                shellcheck
PYTEST_ARGS ?=
# Every shell script of the repository (operations/scripts/*.sh, sandbox/*.sh, ...), for shellcheck.
SHELL_SCRIPTS = $(shell find . -path ./.venv -prune -o -path ./.git -prune -o -name '*.sh' -type f -print | sort)

.PHONY: demo test unit lint typecheck check-manifest starter bench system-packages venv sandbox-up sandbox-down clean

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:" $$missing; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The venv's requirements come from pyproject.toml (runtime + test extras), the single list of dependencies.
$(VENV)/.installed: pyproject.toml | system-packages
	python3 -m venv $(VENV)
	$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	  print("\n".join(p["dependencies"] + p["optional-dependencies"]["test"]))' > $(VENV)/requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check -r $(VENV)/requirements.txt
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest -m 'not integration' $(PYTEST_ARGS)

# ruff for Python; shellcheck for the shell scripts (sh programs rendered from Python are checked by
# tests/unit/test_bridge.py, which runs shellcheck on the rendered switch script).
lint: venv
	$(VENV)/bin/ruff check .
	shellcheck $(SHELL_SCRIPTS)

typecheck: venv
	$(VENV)/bin/mypy

# Validate a manifest without contacting any host: make check-manifest MANIFEST=path/to/manifest.json
MANIFEST ?= manifest.json
check-manifest: venv
	$(PY) -m inventories.manifest_model $(MANIFEST)

# Write a starter manifest to edit; refuses to overwrite anything: make starter MANIFEST=manifest.json
starter: venv
	$(PY) -m inventories.starter $(MANIFEST)

demo: venv
	$(PY) -m sandbox.demo

# make bench [BASELINE=<git ref>] [BENCH_SCENARIOS=full3,floor,small,linked,scale,ready] [BENCH_RUNS=3]
#            [BENCH_SCALE_HOSTS=1,4,16] [BENCH_VMS_PER_HOST=32]: with BASELINE, every scenario runs for HEAD
# and the ref alternately in one session and the table gives the ratio HEAD/baseline (sandbox/bench.py).
# These variables reach sandbox/bench.py through its environment, never through shell text.
BASELINE ?=
BENCH_SCENARIOS ?=
BENCH_RUNS ?=
BENCH_SCALE_HOSTS ?=
BENCH_VMS_PER_HOST ?=
export BASELINE BENCH_SCENARIOS BENCH_RUNS BENCH_SCALE_HOSTS BENCH_VMS_PER_HOST
bench: venv
	$(PY) -m sandbox.bench

sandbox-up: venv
	$(PY) -m sandbox up

sandbox-down: venv
	$(PY) -m sandbox down

clean:
	rm -rf $(VENV) .pytest_cache xml

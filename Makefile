# natpair build and test plumbing (GNU make). Never calls sudo: targets that
# need root say so and stop.
#
#   make deps        Debian packages a fresh Debian 12 lacks (as root), and .venv
#   make build       the cffi extension dataplane/_core*.so, in place
#   make test        pytest on tests/, then a short fuzz run (as root: netns tests too)
#   make fuzz        the libFuzzer target for FUZZ_SECONDS (default 300)
#   make bench       scripts/bench_core.py, then scripts/bench_bulk.py (bulk sync: C vs Python, two Pairs)
#   make bench-unit  fw-a vs kernel forwarding and kernel NAT, in its own lab (as root)
#   make bench-failover  power cuts of the active, natpair vs conntrackd+keepalived (as root)
#   make lab         the namespace lab: build, start the pair, traffic, kill the active, report
#                    and the continuity picture (a PNG; as root)
#   make kill-active power-cut the active unit of a running lab (as root)
#   make rejoin      bring the dead unit of a running lab back as standby (as root)
#   make lab-down    removes exactly what lab made (as root); LAB_PREFIX=np- for both
#   make clean       build products (not .venv); distclean also removes .venv

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp
REQUIREMENTS := requirements.txt requirements-dev.txt

# Only for `make bench-failover` (the incumbent it measures), not for `make test`.
BENCH_APT_PACKAGES := conntrackd keepalived conntrack

APT_PACKAGES := build-essential clang libclang-rt-14-dev libnetfilter-queue-dev libmnl-dev \
	iptables iproute2 iperf3 curl iputils-ping python3-venv

# The extension's file name, from the interpreter that builds it.
EXT_SUFFIX := $(shell $(if $(wildcard $(VPY)),$(VPY),$(PYTHON)) -c \
	'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
CORE_SO := dataplane/_core$(EXT_SUFFIX)
CORE_INPUTS := $(wildcard cext/*.c cext/*.h) cext/build_ffi.py

# Namespaces of the lab are <LAB_PREFIX><node> (scripts/lab/topology.py).
LAB_PREFIX ?= np-

FUZZ_SECONDS ?= 300
FUZZ_SHORT_SECONDS ?= 20
FUZZ_BIN := .build/fuzz_core
FUZZ_CORPUS := fuzz/corpus
FUZZ_CC := clang -g -O1 -fsanitize=fuzzer,address,undefined -Icext
# UBSan only prints by default; make its findings stop the run like ASan's.
FUZZ_ENV := UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

.PHONY: deps apt-deps bench-deps build test pytest fuzz fuzz-short bench bench-unit bench-failover lab \
	lab-down kill-active rejoin soak clean distclean

# ---- deps -------------------------------------------------------------------

deps: apt-deps $(STAMP)

# $(call apt_install,PACKAGES): install the Debian packages of the list that are missing
define apt_install
	@missing=""; \
	for p in $(1); do \
	  [ "$$(dpkg-query -W -f='$${db:Status-Status}' "$$p" 2>/dev/null)" = installed ] \
	    || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ]; then \
	  echo "natpair: missing Debian packages:$$missing" >&2; \
	  echo "natpair: run 'sudo make $@' to install them" >&2; \
	  exit 1; \
	fi; \
	echo "natpair: installing Debian packages:$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update; \
	apt-get install -y $$missing
endef

apt-deps:
	$(call apt_install,$(APT_PACKAGES))

bench-deps: apt-deps
	$(call apt_install,$(BENCH_APT_PACKAGES))

# Reinstalled only when a requirements file changes.
$(STAMP): $(REQUIREMENTS) | apt-deps
	[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --disable-pip-version-check -q $(addprefix -r ,$(REQUIREMENTS))
	touch $@

# ---- build ------------------------------------------------------------------

build: deps $(CORE_SO)

$(CORE_SO): $(CORE_INPUTS) $(STAMP)
	$(VPY) cext/build_ffi.py
	touch $@

# ---- test -------------------------------------------------------------------

test: pytest fuzz-short

pytest: build
	$(VPY) -m pytest tests/

# ---- fuzz -------------------------------------------------------------------

# the core only: np_feed.c (NFQUEUE, libnetfilter_queue + libmnl) is not fuzzed here
FUZZ_SOURCES := $(filter-out cext/np_feed.c,$(wildcard cext/np_*.c))

$(FUZZ_BIN): $(FUZZ_SOURCES) $(wildcard cext/*.h) fuzz/fuzz_core.c | apt-deps
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_SOURCES) fuzz/fuzz_core.c -o $@

fuzz: $(FUZZ_BIN)
	@mkdir -p $(FUZZ_CORPUS)
	$(FUZZ_ENV) $(FUZZ_BIN) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(FUZZ_CORPUS) fuzz/seeds

fuzz-short: $(FUZZ_BIN)
	@mkdir -p $(FUZZ_CORPUS)
	$(FUZZ_ENV) $(FUZZ_BIN) -max_total_time=$(FUZZ_SHORT_SECONDS) -print_final_stats=1 $(FUZZ_CORPUS) fuzz/seeds

# ---- bench, lab ---------------------------------------------------------------

bench: build
	$(VPY) scripts/bench_core.py
	$(VPY) scripts/bench_bulk.py

# BENCH_UNIT_ARGS: e.g. --rounds 3, --modes natpair-c,kernel-nat, --tests tcp1,udp64
bench-unit: build
	$(VPY) -m scripts.bench_unit $(BENCH_UNIT_ARGS)

# BENCH_FAILOVER_ARGS: e.g. --quick, --kills 5, --sizes 1k,100k, --systems natpair
BENCH_PREFIX ?= npf-
bench-failover: build bench-deps
	$(VPY) -m scripts.bench_failover --prefix '$(BENCH_PREFIX)' $(BENCH_FAILOVER_ARGS)

lab: build
	$(VPY) -m scripts.lab.run --prefix '$(LAB_PREFIX)'

lab-down: $(STAMP)
	$(VPY) -m scripts.lab.run --down --prefix '$(LAB_PREFIX)'

kill-active: build
	$(VPY) -m scripts.lab.run --kill-active --prefix '$(LAB_PREFIX)'

rejoin: build
	$(VPY) -m scripts.lab.run --rejoin --prefix '$(LAB_PREFIX)'

soak: build
	$(VPY) -m scripts.lab.soak --prefix '$(LAB_PREFIX)' $(SOAK_ARGS)

# ---- clean ------------------------------------------------------------------

clean:
	rm -rf .build build *.egg-info .pytest_cache
	rm -f dataplane/_core*.so dataplane/_core.c dataplane/*.o cext/*.o
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

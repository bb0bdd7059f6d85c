# stoker: two commands on a fresh machine.
#   make demo   installs everything, builds, and runs the demo
#   make test   installs everything, builds, lints, and runs every test suite
# Every download and build product stays inside the repository (.venv/,
# target/), so a second run rebuilds nothing heavy.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT := $(CURDIR)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
STAMPS := $(ROOT)/target/stamps

export PATH := $(VENV)/bin:$(PATH)
# tch links the libtorch that ships inside the pinned torch wheel.
export LIBTORCH_USE_PYTORCH := 1
export CARGO_HOME := $(ROOT)/target/cargo-home
export PIP_CACHE_DIR := $(ROOT)/target/pip-cache
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# pyspark's own directory (SPARK_HOME for local-cluster tests); read after the venv exists.
PYSPARK_HOME = $(shell $(PY) -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
MVN = mvn -B -ntp -Dmaven.repo.local=$(ROOT)/target/m2 -Dpyspark.home=$(PYSPARK_HOME) -f jvm-shim/pom.xml
CARGO := cargo
BIN := $(ROOT)/target/release/stoker
JNI_LIB := $(ROOT)/target/release/libstoker_jni.so

.PHONY: help setup venv native python-ext jvm build lint fmt test test-rust test-python test-jvm test-fuzz example-java demo demo-engine bench fuzz soak clean

help:
	@echo "make demo    install, build, run the demo (examples/)"
	@echo "make test    install, build, lint, run all tests"
	@echo "make build   install and build only"
	@echo "make fmt     format Rust, Java and Python sources"
	@echo "make fuzz    fuzz every input a client controls for FUZZ_SECONDS (default 600; native/fuzz)"
	@echo "make soak    16 inference streams and a training job on one server for SOAK_SECONDS (default 600)"

# --- installs -----------------------------------------------------------
$(STAMPS)/venv: python/requirements.txt
	@mkdir -p $(STAMPS)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r python/requirements.txt
	@touch $@

venv: $(STAMPS)/venv
setup: venv

# --- builds -------------------------------------------------------------
# cargo and maturin are incremental themselves; they run every time and
# finish in seconds when nothing changed.
native: venv
	$(CARGO) build --release --workspace --bins --lib

python-ext: native
	cd $(ROOT) && maturin develop --release -q

# Spark 4.3's jars come from pyspark, linked into the local Maven repository.
$(STAMPS)/pyspark-repo: $(STAMPS)/venv jvm-shim/build/pyspark_repo.py
	$(PY) jvm-shim/build/pyspark_repo.py $(ROOT)/target/m2
	@touch $@

jvm: native $(STAMPS)/pyspark-repo
	$(MVN) -q package -DskipTests

build: native python-ext jvm

# --- checks -------------------------------------------------------------
lint: venv
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	ruff check python tests examples bench
	ruff format --check python tests examples bench

fmt: venv
	$(CARGO) fmt --all
	ruff format python tests examples bench

test-rust: native
	$(CARGO) test --release --workspace

# The mutation fuzzer (native/fuzz) for a minute; a crash fails it, and
# its input is left in target/fuzz/crashes/ with how to replay it.
test-fuzz: native
	$(ROOT)/target/release/stoker-fuzz --seconds 60

test-python: python-ext
	STOKER_BIN=$(BIN) $(PY) -m pytest -q

# JUnit: unit suites (Surefire), then the Spark local-cluster suites (Failsafe, *IT).
test-jvm: jvm
	$(MVN) verify

# The Java example through spark-submit --jars, as a user runs it.
example-java: build
	MASTER='local-cluster[2,1,1024]' examples/java/run.sh

test: build lint test-rust test-python test-jvm example-java test-fuzz
	@echo "all test suites passed"

# --- demo and benchmarks ------------------------------------------------
demo: build
	STOKER_BIN=$(BIN) $(PY) examples/quickstart.py

# Benchmarks side by side with their peers (bench/, docs/benchmarks.md).
# BENCH_SCALE=quick (default, about 7 minutes here) or full; BENCH_ONLY=1,3 for some.
bench: build
	STOKER_BIN=$(BIN) $(PY) -m bench.run

# The engine alone through the CLI (no Spark).
demo-engine: build
	STOKER_BIN=$(BIN) $(PY) examples/engine_quickstart.py

# Fuzzing on stable Rust: every target round-robin for FUZZ_SECONDS.
fuzz: native
	$(ROOT)/target/release/stoker-fuzz --seconds $${FUZZ_SECONDS:-600}

# One server under 16 inference streams and a training job (bench/soak.py):
# errors, p50/p99 latency and RSS growth, for SOAK_SECONDS (default 600).
soak: build
	STOKER_BIN=$(BIN) $(PY) -m bench.soak --seconds $${SOAK_SECONDS:-600}

clean:
	rm -rf target/release target/stamps jvm-shim/target

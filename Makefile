# PLUM Stream. The two commands: `make demo` and `make test`. Everything else is setup.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
JVM_DIR := build/jvm
STAMP_PY := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)
STAMP_JVM := $(JVM_DIR)/.resolved-$(shell sha1sum deploy/jvm/pom.xml | cut -c1-12)
# The Flink job's JVM operator (Maven module): rebuilt when its pom or a source changes.
PTF_DIR := streams/flink/jvm
PTF_SRC := $(PTF_DIR)/pom.xml $(shell find $(PTF_DIR)/src -type f 2>/dev/null | sort)
STAMP_PTF := $(JVM_DIR)/.plum-flink-$(shell cat $(PTF_SRC) | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
# deploy/k8s validation (tests/integration/test_k8s_manifests.py): kubeconform built from
# the Go module proxy, Kubernetes' JSON schemas from the kubernetes-validate wheel (PyPI),
# the operators' CRDs from Maven Central; all pinned, under build/k8s/, rebuilt only when
# a pin or deploy/k8s/schemas.py changes.
K8S_DIR := build/k8s
KUBECONFORM_VERSION := v0.8.0
KUBERNETES_VERSION := 1.33.0
KUBERNETES_VALIDATE_VERSION := 1.37.0
STRIMZI_VERSION := 0.51.0
FLINK_OPERATOR_VERSION := 1.10.0
K8S_PINS := $(KUBECONFORM_VERSION) $(KUBERNETES_VERSION) $(KUBERNETES_VALIDATE_VERSION) $(STRIMZI_VERSION) $(FLINK_OPERATOR_VERSION)
STAMP_K8S := $(K8S_DIR)/.tools-$(shell { echo $(K8S_PINS); cat deploy/k8s/schemas.py; } | sha1sum | cut -c1-12)
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)

.PHONY: setup system-packages k8s-tools demo test test-jvm test-unit lint lock bench bench-tools clean-state check-tools

setup: $(STAMP_PY) $(STAMP_JVM) $(STAMP_PTF) system-packages k8s-tools

check-tools:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11 (python3, python3-venv)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || { echo "error: Python 3.11 is required (apache-flink 2.3 wheels); found $$($(PYTHON) --version)"; exit 1; }
	@command -v java >/dev/null || { echo "error: java not found: install a JDK 17 (apt-get install openjdk-17-jdk-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "error: mvn not found: install Maven (apt-get install maven)"; exit 1; }

# Debian packages the stack and its tests run: Prometheus (with promtool) for monitoring,
# Chromium and ChromeDriver for the dashboard's browser test, wrk for the serving
# saturation test and `plum bench serving`. Installed only when missing; apt needs root
# (CI runs as root), otherwise one line says what to install.
SYSTEM_TOOLS := prometheus:prometheus promtool:prometheus chromium:chromium chromedriver:chromium-driver wrk:wrk
system-packages:
	@missing=$$(for t in $(SYSTEM_TOOLS); do command -v $${t%%:*} >/dev/null || echo $${t##*:}; done | sort -u | tr '\n' ' '); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "warning: missing $$missing: run 'sudo apt-get install $$missing' (monitoring, dashboard and serving load tests need them)"; \
	  fi; \
	fi

# Go comes with the machine (/usr/local/go); Debian's golang-go (1.19) is too old for
# kubeconform (go 1.26), so a machine without Go gets a warning and the manifest test fails
# under CI=true.
k8s-tools:
	@if [ -f $(STAMP_K8S) ]; then :; \
	elif [ ! -x "$(GO)" ]; then echo "warning: go not found: install Go >= 1.26 (kubeconform for the deploy/k8s test)"; \
	else $(MAKE) --no-print-directory $(STAMP_K8S); fi

$(STAMP_K8S): | $(STAMP_PY) check-tools
	@rm -rf $(K8S_DIR)/dl && mkdir -p $(K8S_DIR)/bin $(K8S_DIR)/dl
	GOBIN=$(CURDIR)/$(K8S_DIR)/bin GOFLAGS=-mod=mod $(GO) install github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION)
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps -d $(K8S_DIR)/dl kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)
	mvn -q -B dependency:copy -Dartifact=io.strimzi:api:$(STRIMZI_VERSION):jar:tests -DoutputDirectory=$(CURDIR)/$(K8S_DIR)/dl
	mvn -q -B dependency:copy -Dartifact=org.apache.flink:flink-kubernetes-operator-api:$(FLINK_OPERATOR_VERSION) -DoutputDirectory=$(CURDIR)/$(K8S_DIR)/dl
	$(PY) -m deploy.k8s.schemas --out $(K8S_DIR)/schemas \
	  --kubernetes $(K8S_DIR)/dl/kubernetes_validate-$(KUBERNETES_VALIDATE_VERSION)-py3-none-any.whl --kubernetes-version $(KUBERNETES_VERSION) \
	  --crds $(K8S_DIR)/dl/api-$(STRIMZI_VERSION)-tests.jar $(K8S_DIR)/dl/flink-kubernetes-operator-api-$(FLINK_OPERATOR_VERSION).jar
	@rm -rf $(K8S_DIR)/dl; rm -f $(K8S_DIR)/.tools-*; touch $@

$(STAMP_PY): requirements.lock pyproject.toml | check-tools
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip==24.3.1
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*; touch $@

$(STAMP_JVM): deploy/jvm/pom.xml | check-tools
	@mkdir -p $(JVM_DIR)
	rm -rf $(JVM_DIR)/kafka $(JVM_DIR)/flink
	mvn -q -B -f deploy/jvm/pom.xml -Pkafka dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/$(JVM_DIR)/kafka
	mvn -q -B -f deploy/jvm/pom.xml -Pflink dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/$(JVM_DIR)/flink
	@rm -f $(JVM_DIR)/.resolved-*; touch $@

# Builds the jar; runs only the hand-written JUnit tests here (that also resolves what
# `make test`'s offline `mvn -o test` needs), the conformance vectors run in `make test`.
$(STAMP_PTF): $(PTF_SRC) | check-tools
	@mkdir -p $(JVM_DIR)
	mvn -q -B -f $(PTF_DIR)/pom.xml package -Dtest=HandWrittenTest -Dsurefire.failIfNoSpecifiedTests=false
	cp $(PTF_DIR)/target/plum-flink.jar $(JVM_DIR)/plum-flink.jar
	@rm -f $(JVM_DIR)/.plum-flink-*; touch $@

test-jvm: setup
	mvn -o -q -B -f $(PTF_DIR)/pom.xml test

demo: setup
	$(VENV)/bin/plum up $(if $(DATA),--data $(DATA))

test: setup test-jvm
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(VENV)/bin/plum bench kafka

# Load generator of `plum bench serving`: wrk, one of SYSTEM_TOOLS (the serving test needs it too).
bench-tools: system-packages

# Re-resolve requirements.in into requirements.lock in a scratch venv.
lock: | check-tools
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install --quiet -r requirements.in
	{ echo "# Every Python dependency, pinned (pip freeze of requirements.in resolved on Python 3.11)."; \
	  echo "# Regenerate: make lock"; build/lock-venv/bin/pip freeze; } > requirements.lock

clean-state:
	rm -rf state

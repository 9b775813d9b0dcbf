# packgate: the README's two commands are `make demo` and `make test`; everything they need is
# installed by the targets below (a virtualenv in .venv, Kubernetes binaries built once into
# ~/.cache/packgate and reused by every clone).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Keyed on what `pip install` builds from: a changed C source rebuilds the extension too.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml sidecar/packgate_sidecar/*.c sidecar/packgate_sidecar/detect/*.[ch] sidecar/packgate_sidecar/audit/*.c | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help demo test check lint format tools node-tools image browser crds bench bench-proxy clean

help:
	@echo "make demo   - the packgate story on real pods: local control plane, kubelet node, the chart (root)"
	@echo "make test   - lint, type-check and run every test (builds what it needs)"
	@echo "make check  - ruff and mypy only"
	@echo "make tools  - build or reuse etcd, kube-apiserver, kube-controller-manager, kubectl, helm"
	@echo "make node-tools - build or reuse runc, containerd, CNI plugins, kubelet, kube-proxy, kube-scheduler"
	@echo "make image  - build or reuse the packgate image for the local node (Dockerfile recipe)"
	@echo "make crds   - regenerate crds/ and the chart's copy from the models"
	@echo "make bench  - long performance measurements (not part of make test)"
	@echo "make bench-proxy - the proxy rows and their targets only (bare proxy vs seed chain, ~3 min)"

$(STAMP): pyproject.toml $(wildcard sidecar/packgate_sidecar/*.c sidecar/packgate_sidecar/detect/*.[ch] sidecar/packgate_sidecar/audit/*.c)
	@$(PYTHON) cluster/build-deps.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

tools:
	bash cluster/build-tools.sh >/dev/null

node-tools:
	bash cluster/build-node.sh >/dev/null

image: $(STAMP)
	$(BIN)/python cluster/image.py >/dev/null

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy sidecar/packgate_policy sidecar/packgate_sidecar sidecar/packgate_quality operator/packgate_operator cluster/*.py

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Headless Chromium + chromedriver (Debian packages) for the Events page test.
browser:
	bash scripts/install-browser.sh >/dev/null

test: $(STAMP) tools node-tools image browser check
	$(BIN)/pytest $(PYTEST_ARGS)

crds: $(STAMP)
	$(BIN)/packgate crd --output crds/policypacks.yaml --output helm/packgate/crds/policypacks.yaml

demo: $(STAMP) tools node-tools image
	$(BIN)/python demo/run.py

bench: $(STAMP) tools
	$(BIN)/python bench/run.py

bench-proxy: $(STAMP)
	$(BIN)/python bench/run.py --only proxy --setups floor,packgate-empty,packgate-seed --no-peers --no-profile --out bench/results/proxy.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

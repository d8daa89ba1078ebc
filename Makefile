# The two commands of the README: `make serve` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test venv bench clean serve proto bench-service

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall when the package metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP) deploy-tools
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/optimality.py
	$(PY) bench/solver_speed.py
	$(PY) bench/sharded.py
	$(PY) bench/solver_threads.py
	$(PY) bench/compaction.py
	$(PY) bench/lane_products.py

# The gRPC service on 127.0.0.1:50051, metrics on 127.0.0.1:9464 (flags: SERVE_ARGS='--port 6000').
serve: $(STAMP)
	$(PY) -m l1pca.client.cli serve $(SERVE_ARGS)

# Regenerate the committed gRPC / protobuf stubs after editing proto/l1pca/v1/l1pca.proto.
proto: $(STAMP)
	$(PY) proto/generate.py

# The server's own work per request (bench/results/request_path.*), then the loopback load test of
# the service (bench/results/service_load.*).
bench-service: $(STAMP)
	$(PY) bench/request_path.py
	$(PY) bench/service_load.py

clean:
	rm -rf $(VENV) build *.egg-info

# Every table and figure of the paper reproduction (bench/README.md); 15-20 minutes on 2 cores.
# `make bench-paper PAPER_ARGS='--quick --out /tmp/paper-quick'` runs tiny sizes in seconds.
.PHONY: bench-paper
bench-paper: $(STAMP)
	$(PY) bench/paper/run_all.py $(PAPER_ARGS)

# prometheus, promtool and kustomize for the deploy and monitoring tests, into deploy/.tools/bin
# (git-ignored), from Debian's and npm's registries; a no-op once there (deploy/tools/install-tools.sh).
.PHONY: deploy-tools
deploy-tools:
	bash deploy/tools/install-tools.sh

# The CPU image's Python environment built the way deploy/docker/Dockerfile.cpu builds it, and a
# server run from it; the CUDA image's lock resolved for its platform. About 3 minutes, ~700 MB in a
# temporary directory; CI runs it after `make test`.
.PHONY: test-image
test-image: $(STAMP)
	L1PCA_TEST_IMAGE=1 $(PY) -m pytest -q tests/test_deploy_image.py

# The two commands of the README: `make serve` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-fast venv bench clean serve proto bench-service

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall when the package metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

# Lint, then every test (what CI runs; about 12 minutes on 2 cores).
test: $(STAMP) deploy-tools
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# The quick tier: everything but the tests marked slow (over ~3 s each) and the image build; under
# 3 minutes on 2 cores.
test-fast: $(STAMP) deploy-tools
	$(PY) -m pytest -q -m "not slow and not image"

# The solver suite (docs/benchmarks.md): exact-hit rates, fit time beside scikit-learn and batched
# throughput, the sharded solver on 8 simulated devices; about 15 minutes on 2 cores. Each script
# rewrites its report, bench/results/{optimality,solver_speed,sharded}.md.
bench: $(STAMP)
	$(PY) bench/optimality.py
	$(PY) bench/solver_speed.py --preset session
	$(PY) bench/sharded.py

# The gRPC service on 127.0.0.1:50051, metrics on 127.0.0.1:9464 (flags: SERVE_ARGS='--port 6000').
serve: $(STAMP)
	$(PY) -m l1pca.client.cli serve $(SERVE_ARGS)

# Rewrite the generated parts of docs/ (the flags table of docs/service.md, from service/config.py);
# tests/service/test_config.py fails while they are stale.
.PHONY: docs
docs: $(STAMP)
	$(PY) -m l1pca.service.config docs/service.md

# Regenerate the committed gRPC / protobuf stubs after editing proto/l1pca/v1/l1pca.proto.
proto: $(STAMP)
	$(PY) proto/generate.py

# The service suite (docs/benchmarks.md): loopback load test, 3x overload and recovery, 10,000
# random bad inputs, then a 10-minute soak; 20-30 minutes on 2 cores. Reports in bench/results/
# (service_load.md, overload.json, fuzz_soak.json, soak.json); a lost request or a broken
# contract fails the target.
bench-service: $(STAMP)
	$(PY) bench/service_load.py
	$(PY) bench/overload.py
	$(PY) bench/fuzz_soak.py
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) build *.egg-info

# Every table and figure of the paper reproduction (docs/benchmarks.md); 15-20 minutes on 2 cores.
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
	L1PCA_TEST_IMAGE=1 $(PY) -m pytest -q tests/deploy/test_image.py

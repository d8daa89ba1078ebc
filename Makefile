# The two commands of the README: `make serve` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Two installs into the one .venv: `serve` needs the package and its runtime dependencies only
# (pip install -e .); the tests and benchmarks add the test and bench extras (cvxpy, pyod,
# matplotlib, ...: over 1 GB). The full install also stamps the serve one, so a venv made by
# `make test` never reinstalls for `make serve`.
STAMP  := $(VENV)/.installed
SERVE_STAMP := $(VENV)/.installed-serve

.PHONY: test test-fast venv bench clean serve proto bench-service

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall when the package metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP) $(SERVE_STAMP)

# The runtime only; nothing to do when the full install above is already up to date.
$(SERVE_STAMP): pyproject.toml | $(PY)
	if [ $(STAMP) -nt pyproject.toml ]; then :; else $(PY) -m pip install -q -e .; fi
	touch $(SERVE_STAMP)

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
# throughput, small fits, the sharded solver on 8 simulated devices; about 30 minutes on 2 cores. Each
# script rewrites its report, bench/results/{optimality,solver_speed,small_fits,sharded}.md.
bench: $(STAMP)
	$(PY) bench/optimality.py
	$(PY) bench/solver_speed.py --preset session
	$(PY) bench/small_fits.py
	$(PY) bench/sharded.py

# The gRPC service on 127.0.0.1:50051, metrics on 127.0.0.1:9464 (flags: SERVE_ARGS='--port 6000').
# Installs the runtime dependencies only (no test or bench extras).
serve: $(SERVE_STAMP)
	$(PY) -m l1pca.client.cli serve $(SERVE_ARGS)

# Rewrite the generated parts of docs/ (the flags table of docs/service.md, from service/config.py);
# tests/service/test_lifecycle.py fails while they are stale.
.PHONY: docs
docs: $(SERVE_STAMP)
	$(PY) -m l1pca.service.config docs/service.md

# Regenerate the committed gRPC / protobuf stubs after editing proto/l1pca/v1/l1pca.proto.
proto: $(STAMP)
	$(PY) proto/generate.py

# The service suite (docs/benchmarks.md): loopback load test, mixed shapes on a cold and a warm
# server, 3x overload and recovery, 10,000 random bad inputs, then a 10-minute soak; 35-45 minutes
# on 2 cores. Reports in bench/results/ (service_load.md, service_mixed.md, overload.json,
# fuzz_soak.json, soak.json); a lost request or a broken contract fails the target.
bench-service: $(STAMP)
	$(PY) bench/service_load.py
	-$(PY) bench/service_mixed.py  # exits 1 while its p99 target is missed (docs/benchmarks.md)
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

# Faulty-measurement detection beside ROBPCA and PcaGrid (R's rrcov, when Rscript is installed:
# apt-get install r-base-core r-cran-rrcov), robpy's DDC (its own venv, bench/.venv-robpy) and
# scikit-learn's and PyOD's detectors; about 3 minutes; bench/results/detection.md.
.PHONY: bench-detection
bench-detection: $(STAMP)
	$(PY) bench/detection.py

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

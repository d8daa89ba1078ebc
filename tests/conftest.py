"""Fixtures shared by every test folder (kernels/, service/, client/, proto/, deploy/, bench/).

Servers come from :mod:`l1pca.service.testing` (real servers on free loopback ports):

* ``server``: one :class:`~l1pca.service.testing.ServerThread` per test module, configured by the
  module's ``SERVER_OPTIONS`` dict (ServeConfig fields; none: the test defaults).
* ``serve_process(*flags, env=None, timeout_s=60)``: ``l1pca serve`` in a child process with the
  test defaults (NumPy, no warm-up shapes, no compile cache) and ``flags``, SERVING; stopped (SIGTERM,
  then SIGKILL) after the test if the test has not stopped it.

Markers (pyproject.toml): ``slow`` (more than ~3 s here; ``make test-fast`` leaves them out), ``gpu``
(skips without a CUDA GPU), ``image`` (builds the deploy image's environment; runs only with
``L1PCA_TEST_IMAGE=1``, ``make test-image``).
"""
from __future__ import annotations

import itertools
import os

import pytest


def pytest_collection_modifyitems(config, items):
    """``image`` tests are skipped unless ``L1PCA_TEST_IMAGE=1``."""
    if os.environ.get("L1PCA_TEST_IMAGE") == "1":
        return
    skip = pytest.mark.skip(reason="builds the image's Python environment (~700 MB, a few minutes): "
                                   "run `make test-image` (L1PCA_TEST_IMAGE=1)")
    for item in items:
        if item.get_closest_marker("image"):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def server(request):
    from l1pca.service.testing import ServerThread  # here: kernels/ tests need no service

    with ServerThread(**getattr(request.module, "SERVER_OPTIONS", {})) as srv:
        yield srv


@pytest.fixture
def serve_process(tmp_path):
    from l1pca.service.testing import TEST_FLAGS, ServeProcess

    started = []
    names = itertools.count()

    def start(*flags, env=None, timeout_s=60.0):
        srv = ServeProcess(*TEST_FLAGS, *flags, workdir=tmp_path, env=env,
                           name=f"l1pca-{next(names)}")
        started.append(srv)
        return srv.start(timeout_s)

    yield start
    for srv in reversed(started):
        srv.stop()

#!/bin/sh
# The Python environment of the images. Both Dockerfiles run this, and CI runs the same lines of the
# CPU Dockerfile with the same lock (tests/deploy/test_image.py), so what CI checks is what ships.
#
#   install.sh deps VENV REQUIREMENTS   a virtual environment holding exactly the pinned wheels of
#                                       REQUIREMENTS (--no-deps: a lock that misses a dependency
#                                       fails `pip check` below instead of resolving something new)
#   install.sh app VENV SRC             the l1pca package from the source tree SRC, without
#                                       dependencies; `pip check`; byte-compile (the root
#                                       filesystem is read-only at run time)
#
# PYTHON (default python3) is the interpreter the environment is made from.
set -eu
usage() { echo "usage: $0 deps VENV REQUIREMENTS | app VENV SRC" >&2; exit 2; }
[ $# -eq 3 ] || usage
venv=$2
case $1 in
deps)
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install --no-deps --only-binary=:all: --requirement "$3"
    ;;
app)
    "$venv/bin/python" -m pip install --no-deps "$3"
    "$venv/bin/python" -m pip check
    "$venv/bin/python" -m compileall -q -j 0 "$venv/lib" >/dev/null
    ;;
*)
    usage
    ;;
esac

#!/usr/bin/env bash
# Set up what is missing, then run the whole test suite. The tests start their
# own local stack (Tansu broker and Schema Registry on free ports) and stop it;
# see tests/conftest.py to point them at external services instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
exec .venv/bin/python -m pytest "$@"

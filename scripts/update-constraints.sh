#!/usr/bin/env bash
# Regenerate constraints.txt: resolve the newest versions pyproject.toml allows (all extras) in a
# scratch venv and pin them.  Run the test suite with the result (scripts/test.sh) before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install -q --disable-pip-version-check -e '.[test]'
{
  echo "# Exact versions the test suite passes with (CPython 3.11, Linux x86-64), written by"
  echo "# scripts/update-constraints.sh.  scripts/test.sh and the Dockerfile install with"
  echo "# --constraint constraints.txt, so two image builds a month apart get the same versions."
  "$scratch/venv/bin/pip" freeze --exclude-editable --disable-pip-version-check | LC_ALL=C sort -f
} > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins"

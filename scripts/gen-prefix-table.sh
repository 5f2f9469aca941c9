#!/usr/bin/env bash
# Regenerates tests/fixtures/prefix_strategies.tsv from the S3 connector for
# PyTorch's own prefix strategies (s3torchconnector 1.5.0): a venv under
# target/prefix-venv, the package without its dependencies (no torch: the
# generator stubs torch.distributed), then scripts/gen_prefix_table.py.
# Only for regeneration: the table is committed and the tests read it.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/prefix-venv
PIN="s3torchconnector==1.5.0"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$PIN" ]; then
  echo "== installing $PIN (--no-deps) into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --no-deps "$PIN"
  echo "$PIN" >"$VENV/.pins"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$VENV/bin/python" scripts/gen_prefix_table.py "$SITE" tests/fixtures/prefix_strategies.tsv

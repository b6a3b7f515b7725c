# Sourced by the scripts: make sure .venv exists and holds this version of the project.
# Reinstalls when pyproject.toml changes (a stamp file holds its hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv" >&2
  "$PY" -m venv .venv
fi
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have="$(cat .venv/.installed 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
  echo "installing the registry and its dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e '.[dev]' >&2
  echo "$want" > .venv/.installed
fi
# Every process of the registry (a server's writer, the verifier's workers) imports the package
# anew; with PYTHONDONTWRITEBYTECODE set, as on some machines, each would compile it again
# (0.39 s against 0.22 s for the verifier's imports). Compile it here; up to date, this is quick.
.venv/bin/python -m compileall -q registry >/dev/null

#!/usr/bin/env bash
# The test command of the README: set up, make sure the server binaries the test
# fixtures start (redis-server, postgres, rabbitmq-server; chromium for the console tests; Azurite from npm)
# exist, then run pytest.
# The fixtures start their own servers on free ports and stop them at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
need=()
command -v redis-server >/dev/null || need+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || need+=(postgresql)
command -v rabbitmq-server >/dev/null || need+=(rabbitmq-server)
command -v chromium >/dev/null || need+=(chromium)  # the console's browser tests (Playwright drives it)
command -v npm >/dev/null || need+=(npm)  # Azurite, the Azure Blob emulator of the object-store tests
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from the OS packages"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"; else sudo apt-get update -qq && sudo apt-get install -y -qq "${need[@]}"; fi
fi
command -v azurite-blob >/dev/null || npm install -g --silent azurite@3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
. .venv/bin/activate
ruff check labelq tests bench
lint-imports  # the layer contracts of pyproject.toml [tool.importlinter] (docs/design.md, "House and layers")
python scripts/import_graph.py --check  # docs/design.md's import graph is the code's (regenerate: --write)
# Two test processes (pytest-xdist), each running whole files: a file's module fixtures (workers, servers) stay in
# one process, and every process starts its own session servers on free ports. Most tests wait on a worker
# process of one thread, so two at once keep both cores busy. `-n 0` (or `-p no:xdist`) after the script runs one.
python -m pytest -n 2 --dist loadfile "$@"

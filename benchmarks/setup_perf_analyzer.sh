#!/usr/bin/env bash
# Install Triton's perf_analyzer into .venv-perf (ignored by git). It ships in the
# tritonclient 2.51.0 wheel (later wheels need a newer glibc or ship none), needs libb64 from
# Debian and the CUDA runtime library from PyPI even on CPU (see ../shared/notes/triton-protocol.md).
# Prints the line to export for `synthdetect bench serving`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv-perf/bin/python ] || "$PY" -m venv .venv-perf
.venv-perf/bin/pip install --quiet "tritonclient[all]==2.51.0" nvidia-cuda-runtime-cu12
if ! ldconfig -p | grep -q libb64.so.0d; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq libb64-0d >/dev/null; else
    echo "libb64-0d is missing: run 'sudo apt-get install libb64-0d'" >&2; exit 1; fi
fi
CUDA_LIB=$(.venv-perf/bin/python -c 'import nvidia.cuda_runtime, os; print(os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib"))')
cat > .venv-perf/perf_analyzer <<WRAP
#!/usr/bin/env bash
export LD_LIBRARY_PATH="$CUDA_LIB:\${LD_LIBRARY_PATH:-}"
exec "$(pwd)/.venv-perf/bin/perf_analyzer" "\$@"
WRAP
chmod +x .venv-perf/perf_analyzer
echo "export PERF_ANALYZER=$(pwd)/.venv-perf/perf_analyzer"

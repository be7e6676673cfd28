#!/bin/sh
# Installs torch with PIP, the build that fits this machine (README, "Install"):
#
#     sh tools/install_torch.sh PIP SPEC        e.g.  sh tools/install_torch.sh .venv/bin/pip torch==2.13.0
#
# - an NVIDIA GPU (nvidia-smi on the PATH, or /proc/driver/nvidia): the default index, whose Linux
#   x86_64 wheels are the CUDA builds;
# - macOS: the default index (its wheels have no CUDA in them);
# - otherwise: PyTorch's CPU index ($TORCH_CPU_INDEX), with a 5 s timeout and no retries, so that
#   where it cannot be reached pip gives up within seconds and the default index is used instead.
# TORCH_INDEX=URL skips the choice: torch comes from URL (a CUDA index of PyTorch's, say).
set -u
pip=$1
spec=$2
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

if [ -n "${TORCH_INDEX:-}" ]; then
    echo "torch: $spec from $TORCH_INDEX (TORCH_INDEX)"
    exec "$pip" install -q --index-url "$TORCH_INDEX" "$spec"
fi
if command -v nvidia-smi >/dev/null 2>&1 || [ -e /proc/driver/nvidia ]; then
    echo "torch: NVIDIA GPU found, $spec from the default index (the CUDA build)"
    exec "$pip" install -q "$spec"
fi
if [ "$(uname -s)" = Darwin ]; then
    echo "torch: macOS, $spec from the default index"
    exec "$pip" install -q "$spec"
fi
echo "torch: no NVIDIA GPU, $spec (the CPU build) from $cpu_index"
if "$pip" install -q --index-url "$cpu_index" --timeout 5 --retries 0 "$spec"; then
    exit 0
fi
echo "torch: $cpu_index did not provide $spec (unreachable?): from the default index instead"
exec "$pip" install -q "$spec"

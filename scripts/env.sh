# Sourced by the scripts: puts nvcc on PATH when CUDA is installed in the
# usual place but not on PATH, so the CUDA kernels build wherever they can.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

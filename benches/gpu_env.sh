# Sourced by the scripts run on a lent GPU machine: $OUT made, cuBLAS and NVRTC on the
# library path (they may live inside the Python wheels rather than on the system path),
# and LOG started with the GPU and driver.
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
for lib in libcublas.so.13 libnvrtc.so.13 libcublasLt.so.13; do
    d=$(find / -name "$lib*" -not -path '*/proc/*' 2>/dev/null | head -1 | xargs -r dirname)
    [ -n "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
LOG=$OUT/log.txt
{ nvidia-smi -L; nvidia-smi --query-gpu=driver_version --format=csv,noheader; date -u; } | tee "$LOG"

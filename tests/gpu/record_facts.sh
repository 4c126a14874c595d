#!/usr/bin/env bash
# Record, on a real GPU machine, the raw outputs devbox parses (kept as unit-test fixtures):
# the GPU query with UUIDs and compute capability, `nvidia-smi -q -x` while a torch process
# holds GPU memory (what `devbox top` reads), the memlock/shm limits, torch's arch list.
set -uo pipefail
OUT="${OUT:-/tmp/devbox-gpu-out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=index,uuid,name,driver_version,memory.total,compute_cap --format=csv,noheader,nounits >"$OUT/query-gpu.csv" 2>&1
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
python3 - >"$OUT/torch.txt" 2>&1 <<'PY' &
import time, torch
x = torch.empty(int(3 * 2**30) // 4, device="cuda")   # hold 3 GiB while nvidia-smi looks
print("torch", torch.__version__, "cuda", torch.version.cuda, "arch_list", torch.cuda.get_arch_list(),
      "capability", torch.cuda.get_device_capability(0), flush=True)
time.sleep(8)
PY
sleep 6
nvidia-smi -q -x >"$OUT/nvidia-smi-q.xml" 2>&1
nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits >"$OUT/compute-apps.csv" 2>&1
for p in $(nvidia-smi --query-compute-apps=pid --format=csv,noheader); do echo "== $p"; cat /proc/$p/cgroup; done >"$OUT/cgroup.txt" 2>&1
wait
{ echo "ulimit -Hl: $(ulimit -Hl)"; echo "ulimit -Sl: $(ulimit -Sl)"; df -Pk /dev/shm; grep MemTotal /proc/meminfo; nproc; } >"$OUT/limits.txt" 2>&1
python3 - >>"$OUT/limits.txt" 2>&1 <<'PY'
import subprocess, time
for argv in (["nvidia-smi", "-q", "-x"], ["nvidia-smi", "--query-gpu=index,uuid,name,driver_version,memory.total,compute_cap",
             "--format=csv,noheader,nounits"]):
    times = []
    for _ in range(5):
        t = time.perf_counter(); subprocess.run(argv, capture_output=True); times.append(time.perf_counter() - t)
    print(" ".join(argv[:2]), "seconds:", " ".join(f"{x:.3f}" for x in times))
PY
ls "$OUT"

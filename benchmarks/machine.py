"""The machine a benchmark ran on, as every result records it."""
import platform
import subprocess

# Hosts that lscpu names alike ("AMD EPYC") differ threefold in int8 speed with and without VNNI, so the
# instruction sets that onnxruntime's int8 kernels use go into every result.
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor() or "unknown"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", platform.processor() or "unknown").strip()
    present = set(fields.get("Flags", "").split())
    flags = [flag for flag in INT8_CPU_FLAGS if flag in present]
    return f"{name} ({', '.join(flags) or 'no AVX2'})"

"""GPU-memory estimate against llama.cpp, run by hand: the weights, KV cache and compute buffer that
`localai_operator.gguf.fit` estimates from a GGUF header, next to the buffer sizes llama.cpp itself logs when it
loads the same file with the same settings on the CPU.

llama.cpp is the one LocalAI v4.9.0 builds (its backend/cpp/llama-cpp/llama.cpp after the backend's make, or any
llama.cpp tree built with static libraries): the script compiles `llama_memory_probe.cpp` against it, which creates
the model and context the way LocalAI's grpc-server does and exits, and reads llama.cpp's log lines
`model buffer size`, `KV buffer size` and `compute buffer size`. Models: the packaged Gemma 3 270M Q4_K_M (its real
header; every file here is its header followed by a hole as long as its tensor data, so nothing large is read or
stored) and headers shaped like Llama 3 8B and Mistral 7B (Q4_K, written with llama.cpp's `gguf` package). The
weights are loaded as zeros: no token is computed, only the buffers are sized.

    python benchmarks/gguf_fit.py --llama-cpp /path/to/llama.cpp [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.unit.gguf_samples: the sample headers

from tests.unit.gguf_samples import LLAMA_3_8B, MISTRAL_7B, sparse_gemma, write_header  # noqa: E402

from localai_operator.api.llmmodel import KVCacheType  # noqa: E402
from localai_operator.gguf import fit  # noqa: E402
from localai_operator.gguf.facts import gguf_status  # noqa: E402
from localai_operator.gguf.header import read_header  # noqa: E402

PROBE = Path(__file__).with_name("llama_memory_probe.cpp")
MIB = 1024 * 1024
_BUFFER = re.compile(r"(model|KV|compute) buffer size =\s*([0-9.]+) MiB")


@dataclass(frozen=True)
class Case:
    model: str
    context: int
    slots: int = 1
    batch: int = 512
    kv_type: KVCacheType = "f16"
    flash: str = "auto"


CASES = [
    *(Case("gemma-3-270m", c) for c in (2048, 4096, 8192, 32768)),
    Case("gemma-3-270m", 8192, slots=4),
    Case("gemma-3-270m", 8192, slots=32),
    Case("gemma-3-270m", 8192, flash="off"),
    Case("gemma-3-270m", 8192, kv_type="q8_0"),
    Case("gemma-3-270m", 4096, batch=2048),
    *(Case("llama-3-8b", c) for c in (4096, 8192, 32768)),
    Case("llama-3-8b", 8192, slots=4),
    Case("llama-3-8b", 8192, slots=64),
    Case("llama-3-8b", 8192, flash="off"),
    Case("llama-3-8b", 8192, kv_type="q4_0"),
    Case("llama-3-8b", 8192, batch=2048),
    Case("mistral-7b", 32768),
    Case("mistral-7b", 8192, slots=4, kv_type="q8_0"),
]


def build_probe(llama_cpp: Path, work: Path) -> Path:
    build = llama_cpp / "build"
    libraries = [
        build / "src" / "libllama.a",
        build / "ggml" / "src" / "libggml.a",
        build / "ggml" / "src" / "libggml-cpu.a",
        build / "ggml" / "src" / "libggml-base.a",
    ]
    missing = [str(p) for p in libraries if not p.exists()]
    if missing:
        sys.exit(f"not a llama.cpp tree built with static libraries (missing {', '.join(missing)})")
    probe = work / "llama_memory_probe"
    subprocess.run(
        [
            "g++", "-O1", "-std=c++17", f"-I{llama_cpp / 'include'}", f"-I{llama_cpp / 'ggml' / 'include'}",
            str(PROBE), "-o", str(probe), "-Wl,--start-group", *map(str, libraries), "-Wl,--end-group",
            "-fopenmp", "-lpthread", "-ldl", "-lm",
        ],
        check=True,
    )  # fmt: skip
    return probe


def llama_cpp_buffers(probe: Path, model: Path, case: Case, repack: bool) -> dict[str, float]:
    """MiB per kind of buffer, summed over llama.cpp's log lines (CPU_Mapped + CPU_REPACK, SWA + full KV)."""
    argv = [
        str(probe),
        str(model),
        str(case.context),
        str(case.slots),
        str(case.batch),
        case.kv_type,
        case.flash,
    ]
    done = subprocess.run([*argv, "0", "1" if repack else "0"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    sizes = {"model": 0.0, "KV": 0.0, "compute": 0.0, "repack": 0.0}
    for line in done.stderr.splitlines():
        match = _BUFFER.search(line)
        if match and "~llama_context" not in line:
            sizes[match[1]] += float(match[2])
            if "REPACK" in line:
                sizes["repack"] += float(match[2])
    sizes["model"] -= sizes["repack"]
    return sizes


@dataclass(frozen=True)
class Row:
    case: Case
    llama_cpp: dict[str, float]
    estimate: dict[str, float]

    def error(self, kind: str) -> float:
        return self.estimate[kind] / self.llama_cpp[kind] - 1


def estimate(path: Path, case: Case) -> dict[str, float]:
    with path.open("rb") as f:
        header = read_header(f)
    status = gguf_status(header)
    settings = fit.Settings(
        context_size=case.context,
        gpu_layers=status.layers + 1,
        kv_cache_type=case.kv_type,
        slots=case.slots,
        batch=case.batch,
        flash_attention=case.flash != "off",
    )
    (gpu,) = fit.gpu_memory(fit.Model(case.model, status, settings), gpus=1)
    # On the CPU every tensor is loaded once: the header's tensor data (on a GPU the output layer may be a copy).
    weights = sum(t.n_bytes for t in header.tensors)
    return {"model": weights / MIB, "KV": gpu.kv_cache / MIB, "compute": gpu.compute / MIB}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--llama-cpp", type=Path, required=True, help="a llama.cpp tree built with static libraries"
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gguf-fit-") as tmp:
        work = Path(tmp)
        probe = build_probe(args.llama_cpp.resolve(), work)
        models = {
            "gemma-3-270m": (sparse_gemma(work), True),
            "llama-3-8b": (write_header(LLAMA_3_8B, work / "llama-3-8b.gguf", sparse_data=True), False),
            "mistral-7b": (write_header(MISTRAL_7B, work / "mistral-7b.gguf", sparse_data=True), False),
        }
        rows = []
        for case in CASES:
            path, repack = models[case.model]
            rows.append(Row(case, llama_cpp_buffers(probe, path, case, repack), estimate(path, case)))
    print(
        "| model | context | slots | batch | KV type | flash | llama.cpp model / KV / compute MiB "
        "| estimate model / KV / compute MiB | compute error | total error |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    worst_compute = worst_total = 0.0
    for row in rows:
        c, ll, es = row.case, row.llama_cpp, row.estimate
        total = (
            sum(es[k] for k in ("model", "KV", "compute")) / sum(ll[k] for k in ("model", "KV", "compute"))
            - 1
        )
        worst_compute = max(worst_compute, abs(row.error("compute")))
        worst_total = max(worst_total, abs(total))
        print(
            f"| {c.model} | {c.context} | {c.slots} | {c.batch} | {c.kv_type} | {c.flash} "
            f"| {ll['model']:.1f} / {ll['KV']:.1f} / {ll['compute']:.1f} "
            f"| {es['model']:.1f} / {es['KV']:.1f} / {es['compute']:.1f} | {row.error('compute'):+.1%} | {total:+.1%} |"
        )
    print(f"\nworst compute-buffer error {worst_compute:.1%}, worst total error {worst_total:.1%}")
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()

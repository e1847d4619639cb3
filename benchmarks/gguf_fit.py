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

With `--localai`, the same comparison through the real `local-ai` v4.9.0 binary instead (what a pool runs): for each
Gemma case, the model YAML the operator renders for a CPU pool (which adds swa_full:true) and for a GPU pool (the
sliding window kept; on this CPU-only build every layer stays on the CPU either way), one `local-ai` process each
with the model preloaded, the sizes read from its log (LocalAI relays its backend's stderr at debug level), against
the operator's estimate for the same rendered options (control/gpufit.py's settings).

    python benchmarks/gguf_fit.py --llama-cpp /path/to/llama.cpp [--json]
    python benchmarks/gguf_fit.py --localai PATH/local-ai --backends PATH/backends --gguf PATH/gemma-3-270m-q4_k_m.gguf
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

from localai_process import localai_processes  # noqa: E402
from tests.unit.gguf_samples import LLAMA_3_8B, MISTRAL_7B, sparse_gemma, write_header  # noqa: E402

from localai_operator.api.llmmodel import KVCacheType, LLMModel  # noqa: E402
from localai_operator.gguf import fit  # noqa: E402
from localai_operator.gguf.facts import gguf_status  # noqa: E402
from localai_operator.gguf.header import read_header  # noqa: E402
from localai_operator.render.model_config import model_config_yaml  # noqa: E402
from localai_operator.testing.llama_log import VERBOSE_OPTION, buffer_sizes, rendered_estimate  # noqa: E402

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
    through: str = "probe"  # what loaded the model: the probe, or local-ai with a CPU or a GPU pool's YAML

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


def rendered(case: Case, gguf: Path) -> LLMModel:
    """The LLMModel of `case` serving `gguf`, as a user would declare it, with the option that makes the backend
    log its buffer sizes."""
    spec = {
        "options": [VERBOSE_OPTION],
        "source": {"url": f"https://models.invalid/{gguf.name}", "sha256": "0" * 64},
        "contextSize": case.context,
        "parallel": case.slots,
        "batch": case.batch,
        "kvCacheType": case.kv_type,
        "flashAttention": case.flash,
    }
    return LLMModel.parse(
        {"kind": "LLMModel", "metadata": {"name": case.model, "namespace": "bench"}, "spec": spec}
    )


def localai_rows(binary: Path, backends: Path, gguf: Path, work: Path) -> list[Row]:
    """The Gemma cases through `local-ai`, one process at a time, with a CPU and a GPU pool's model YAML each."""
    rows = []
    for number, case in enumerate(c for c in CASES if c.model == "gemma-3-270m"):
        model = rendered(case, gguf)
        for gpu in (False, True):
            root = work / f"case-{number}-{'gpu' if gpu else 'cpu'}"
            text = model_config_yaml(model, gpu=gpu)
            with localai_processes(binary, backends, gguf, [root], model.name, text):
                log = (root / "localai.log").read_text(errors="replace")
            sizes = buffer_sizes(log)
            through = f"local-ai, {'GPU' if gpu else 'CPU'} pool's YAML"
            rows.append(Row(case, sizes, rendered_estimate(gguf, model, gpu=gpu), through))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llama-cpp", type=Path, help="a llama.cpp tree built with static libraries")
    parser.add_argument("--localai", type=Path, help="a local-ai binary: the Gemma cases through it instead")
    parser.add_argument(
        "--backends", type=Path, help="with --localai: the backends directory (llama-cpp/run.sh)"
    )
    parser.add_argument("--gguf", type=Path, help="with --localai: the model file (Gemma 3 270M Q4_K_M)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args()
    if args.localai is not None:
        if args.backends is None or args.gguf is None:
            parser.error("--localai needs --backends and --gguf")
        with tempfile.TemporaryDirectory(prefix="gguf-fit-") as tmp:
            report(localai_rows(args.localai, args.backends, args.gguf, Path(tmp)), args.json)
        return
    if args.llama_cpp is None:
        parser.error("give --llama-cpp or --localai")
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
    report(rows, args.json)


def report(rows: list[Row], as_json: bool) -> None:
    print(
        "| model | context | slots | batch | KV type | flash | through | llama.cpp model / KV / compute MiB "
        "| estimate model / KV / compute MiB | KV error | compute error | total error |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    worst_kv = worst_compute = worst_total = 0.0
    for row in rows:
        c, ll, es = row.case, row.llama_cpp, row.estimate
        total = (
            sum(es[k] for k in ("model", "KV", "compute")) / sum(ll[k] for k in ("model", "KV", "compute"))
            - 1
        )
        worst_kv = max(worst_kv, abs(row.error("KV")))
        worst_compute = max(worst_compute, abs(row.error("compute")))
        worst_total = max(worst_total, abs(total))
        print(
            f"| {c.model} | {c.context} | {c.slots} | {c.batch} | {c.kv_type} | {c.flash} | {row.through} "
            f"| {ll['model']:.1f} / {ll['KV']:.1f} / {ll['compute']:.1f} "
            f"| {es['model']:.1f} / {es['KV']:.1f} / {es['compute']:.1f} | {row.error('KV'):+.1%} "
            f"| {row.error('compute'):+.1%} | {total:+.1%} |"
        )
    print(
        f"\nworst KV error {worst_kv:.1%}, worst compute-buffer error {worst_compute:.1%}, "
        f"worst total error {worst_total:.1%}"
    )
    if as_json:
        print(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()

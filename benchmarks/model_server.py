"""Model-server benchmark, run by hand: tokens/s of the model-server image over HTTP (LocalAI's stream shape)
against llama.cpp called in-process in the same image, in one run.

Targets, both run from the image's root filesystem with `buildah run` (chroot isolation), sharing this machine's
cores, the same GGUF (Gemma 3 270M Q4_K_M), context 2048, 2 threads, greedy sampling, the same prompt:
  inproc   `llama_cpp.Llama.create_chat_completion(stream=True)` in one Python process (the peer: no HTTP)
  server   `model_server.py serve` (the stand-in the pods run), a streamed chat completion over loopback

Per round each target generates up to --max-tokens tokens; decode tokens/s = (tokens - 1) / (last - first token
time), end-to-end tokens/s = tokens / (request to last token), and the time to the first token. Rounds are interleaved, alternating which target goes first, so drift in background load hits both alike;
the figures are medians.

    python benchmarks/model_server.py [--rounds 5] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from localai_operator.devcluster import images

PROMPT = "Write a short paragraph about the history of bread."
MODEL = "gemma-3-270m"

INPROC = """
import json, sys, time
from llama_cpp import Llama
llama = Llama(model_path=sys.argv[1], n_ctx=2048, n_threads=2, n_threads_batch=2, verbose=False, chat_format="gemma")
for _ in range(int(sys.argv[2])):
    line = sys.stdin.readline()
    if not line:
        break
    started, stamps = time.monotonic(), []
    for chunk in llama.create_chat_completion(messages=[{"role": "user", "content": sys.argv[4]}], stream=True,
                                              max_tokens=int(sys.argv[3]), temperature=0, seed=1):
        if chunk["choices"][0]["delta"].get("content"):
            stamps.append(time.monotonic())
    total = time.monotonic() - started
    print(json.dumps({"first": stamps[0] - started, "tokens": len(stamps), "span": stamps[-1] - stamps[0],
                      "total": total}), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {url}")


def _stream(base: str, max_tokens: int) -> dict[str, float]:
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 1,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    request = urllib.request.Request(
        f"{base}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    started, stamps = time.monotonic(), []
    with urllib.request.urlopen(request, timeout=300) as response:
        for line in response:
            if line.startswith(b"data: {"):
                delta = json.loads(line[6:])["choices"][0].get("delta") or {}
                if delta.get("content"):
                    stamps.append(time.monotonic())
    total = time.monotonic() - started
    return {
        "first": stamps[0] - started,
        "tokens": len(stamps),
        "span": stamps[-1] - stamps[0],
        "total": total,
    }


def _rate(sample: dict[str, float]) -> float:
    return (sample["tokens"] - 1) / sample["span"] if sample["span"] else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    image = images.build("model-server")
    with tempfile.TemporaryDirectory(prefix="bench-model-server-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        copy = ["cp", f"{images.MIRROR_DIR}/{images.MODEL_FILE}", "/models/"]
        with images.Container(image, copy, volumes={models: "/models"}, log=Path(tmp) / "copy.log") as copier:
            copier.wait(120)
        (models / f"{MODEL}.yaml").write_text(
            f"name: {MODEL}\ncontext_size: 2048\nthreads: 2\nparameters:\n  model: {images.MODEL_FILE}\n"
        )
        port = _free_port()
        env = {"LOCALAI_ADDRESS": f"127.0.0.1:{port}", "LOCALAI_LOAD_TO_MEMORY": MODEL}
        argv = ["python", images.MODEL_SERVER_PROGRAM, "serve"]
        server = images.Container(
            image, argv, env=env, volumes={models: "/models"}, log=Path(tmp) / "server.log"
        )
        inproc_argv = [
            "python",
            "-c",
            INPROC,
            f"/models/{images.MODEL_FILE}",
            str(args.rounds + 1),
            str(args.max_tokens),
            PROMPT,
        ]
        with server:
            _wait(f"http://127.0.0.1:{port}/readyz", 120)
            buildah = images.buildah_argv()
            name = f"bench-inproc-{port}"
            subprocess.run(
                [*buildah, "from", "--pull=never", "--quiet", "--name", name, image.local_ref],
                check=True,
                capture_output=True,
            )
            peer = subprocess.Popen(
                [
                    *buildah,
                    "run",
                    "--isolation",
                    "chroot",
                    "-v",
                    f"{models}:/models",
                    name,
                    "--",
                    *inproc_argv,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert peer.stdin is not None and peer.stdout is not None
            results: dict[str, list[dict[str, float]]] = {"inproc": [], "server": []}
            try:
                for round_number in range(args.rounds + 1):  # round 0 warms both up
                    # Alternate which target goes first, so a burst of background load hits both alike.
                    order = ("inproc", "server") if round_number % 2 else ("server", "inproc")
                    sample: dict[str, dict[str, float]] = {}
                    for target in order:
                        if target == "inproc":
                            peer.stdin.write("go\n")
                            peer.stdin.flush()
                            sample[target] = json.loads(peer.stdout.readline())
                        else:
                            sample[target] = _stream(f"http://127.0.0.1:{port}", args.max_tokens)
                    if round_number:
                        for target, measured in sample.items():
                            results[target].append(measured)
            finally:
                peer.stdin.close()
                peer.wait(60)
                subprocess.run([*buildah, "rm", name], capture_output=True, check=False)
    print(f"model-server image {image.ref}, {args.rounds} rounds, up to {args.max_tokens} tokens, medians:")
    rates = {}
    for target, samples in results.items():
        rates[target] = statistics.median(_rate(s) for s in samples)
        first = statistics.median(s["first"] for s in samples) * 1000
        tokens = statistics.median(s["tokens"] for s in samples)
        overall = statistics.median(s["tokens"] / s["total"] for s in samples)
        print(
            f"  {target:7} {rates[target]:6.1f} tokens/s decode, {overall:6.1f} tokens/s end to end, "
            f"first token {first:6.0f} ms, {tokens:.0f} tokens"
        )
    print(f"  server/inproc decode ratio: {rates['server'] / rates['inproc']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One peer engine, loaded once, timed on request: run by benchmarks/vs_peers.py inside the
peers' own environment (llama-cpp-python, ctranslate2), never imported by the project.

    python peer_worker.py llama.cpp MODEL.gguf THREADS CONTEXT
    python peer_worker.py ctranslate2 MODEL_DIR THREADS COMPUTE_TYPE

Reads one JSON request per line, {"prompt": [ids], "new_tokens": n}, and answers
{"prefill_s": ..., "decode_ms_per_token": ...}: the time to encode the prompt (and
pick the first token), then the time per further greedy token.
"""

from __future__ import annotations

import json
import sys
import time


def llama_cpp_runner(path: str, threads: int, context: int):
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=context, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)

    def greedy() -> int:  # the last position's logits, straight from llama.cpp's context
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))))

    def measure(prompt: list[int], new_tokens: int) -> dict:
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        token = greedy()
        prefilled = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([token])
            token = greedy()
        done = time.perf_counter()
        return {"prefill_s": prefilled - start, "decode_ms_per_token": (done - prefilled) / new_tokens * 1000}

    return measure


def ctranslate2_runner(path: str, threads: int, compute_type: str):
    import ctranslate2

    generator = ctranslate2.Generator(path, device="cpu", compute_type=compute_type, intra_threads=threads, inter_threads=1)
    vocabulary = _vocabulary(path)

    def measure(prompt: list[int], new_tokens: int) -> dict:
        tokens = [vocabulary[i] for i in prompt]
        start = time.perf_counter()
        steps = generator.generate_tokens(tokens, max_length=new_tokens + 1, sampling_topk=1, end_token=[])
        next(steps)  # the prompt is encoded and the first token picked
        prefilled = time.perf_counter()
        count = sum(1 for _ in steps)
        done = time.perf_counter()
        return {"prefill_s": prefilled - start, "decode_ms_per_token": (done - prefilled) / max(count, 1) * 1000}

    return measure


def _vocabulary(path: str) -> list[str]:
    from pathlib import Path

    json_path = Path(path) / "vocabulary.json"
    if json_path.is_file():
        return json.loads(json_path.read_text())
    return (Path(path) / "vocabulary.txt").read_text(encoding="utf-8").split("\n")


def main() -> None:
    engine, path, threads, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if engine == "llama.cpp":
        measure = llama_cpp_runner(path, threads, int(extra))
    else:
        measure = ctranslate2_runner(path, threads, extra)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps(measure(request["prompt"], request["new_tokens"])), flush=True)


if __name__ == "__main__":
    main()

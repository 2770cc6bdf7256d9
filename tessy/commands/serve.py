"""`tessy serve`: serve a model with llama-server or vLLM for turn-taking requests."""

from __future__ import annotations

from tessy.commands.common import FAILED, OK, count, rich_console


def add_parser(sub) -> None:
    """The `serve` subparser of `sub`."""
    p = sub.add_parser("serve",
                       help="serve a model with llama.cpp's llama-server or vLLM, set up for turn-taking requests")
    p.add_argument("model", help="student or teacher (that role's model in --config, default: the embedded one), "
                   "an embedded model's name, or a .gguf file; with --engine vllm also a Hugging Face directory or "
                   "hub name")
    p.add_argument("--engine", choices=["llama.cpp", "vllm"], default="llama.cpp",
                   help="llama.cpp's llama-server for a GGUF (default), or vLLM's OpenAI server")
    p.add_argument("--config", help="the synth config whose role names the model")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8010, help="(default: 8010)")
    p.add_argument("--parallel", type=count, default=8,
                   help="requests batched at once: llama-server's slots, vLLM's --max-num-seqs (default: 8)")
    p.add_argument("--ctx-per-slot", type=count, default=4096,
                   help="the context of each slot, in tokens: prompt plus what it writes (default: 4096)")
    p.add_argument("--threads", type=count, help="CPU threads: llama-server's -t, vLLM's OMP_NUM_THREADS on a CPU "
                   "(default: the engine's, every core); give two servers on one machine their share each")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--weights", choices=["auto", "as-is", "f16"], default="auto",
                         help="llama.cpp: serve the GGUF as it is, or an F16 copy of a quantized one (the same "
                         "weights, dequantized once under TESSY_CACHE); auto (default) times both on this machine "
                         "once, for files under 1 GiB, and serves the faster (with --print-command it uses a kept "
                         "verdict and measures nothing)")
    weights.add_argument("--f16", action="store_true", help="the same as --weights f16")
    p.add_argument("--llama-server", help="the binary (default: $TESSY_LLAMA_SERVER, the one beside this Python, "
                   "then PATH)")
    p.add_argument("--python", help="vllm: the Python that has vLLM (default: $TESSY_VLLM_PYTHON, tessy's own, "
                   "then .venv-vllm/bin/python)")
    p.add_argument("--max-model-len", type=count, default=4096,
                   help="vllm: the longest sequence, prompt plus what it writes (default: 4096)")
    p.add_argument("--dtype", help="vllm: the weights' dtype (default: float32 on a CPU without bfloat16 "
                   "instructions, else vLLM's)")
    p.add_argument("--kv-cache-gib", type=count, default=2,
                   help="vllm on a CPU: the KV cache in GiB (VLLM_CPU_KVCACHE_SPACE; default: 2)")
    p.add_argument("--server-args", help="more arguments for the server, as one quoted string")
    p.add_argument("--print-command", action="store_true",
                   help="print the server's command line (with its environment) and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    import shlex

    from rich.console import Console
    from rich.markup import escape

    from tessy.serve import ServerError, ServerProcess

    console = rich_console()
    notes = Console(stderr=True) if args.print_command else console  # stdout carries the command line alone
    if args.engine == "vllm":
        from tessy.serve_vllm import find_vllm, model_for_vllm, vllm_command

        vllm = find_vllm(args.python)
        model, name = model_for_vllm(args.model, args.config)
        cmd, env = vllm_command(vllm, model, served_name=name, host=args.host, port=args.port,
                                parallel=args.parallel, max_model_len=args.max_model_len, dtype=args.dtype,
                                kv_cache_gib=args.kv_cache_gib, threads=args.threads,
                                extra=tuple(shlex.split(args.server_args or "")))
        what, slots = f"vLLM {vllm.version}" + (" (CPU build)" if vllm.cpu_build else ""), "sequences"
    else:
        from tessy.serve import f16_copy, find_llama_server, gguf_of, server_command
        from tessy.serve_weights import choose_weights

        gguf = gguf_of(args.model, args.config)
        binary = find_llama_server(args.llama_server)
        extra = tuple(shlex.split(args.server_args or ""))
        weights = "f16" if args.f16 else args.weights
        if weights == "auto":
            try:
                chosen = choose_weights(binary, gguf, threads=args.threads, parallel=args.parallel, extra=extra,
                                        measure=not args.print_command,
                                        say=lambda line: notes.print(line, soft_wrap=True))
            except Exception as e:  # noqa: BLE001  (a failed measurement serves the file as it is)
                why = e.reason if isinstance(e, ServerError) else str(e)  # one line: the server below echoes its output
                chosen = {"path": gguf, "why": f"[yellow]the measurement failed ({escape(why)}); --weights "
                                               "chooses[/]"}
            notes.print(f"weights: {chosen['path'].name} ({chosen['why']})", soft_wrap=True)
            gguf = chosen["path"]
        elif weights == "f16":
            notes.print(f"the F16 copy of {gguf.name} (written once) ...", soft_wrap=True)
            gguf = f16_copy(gguf)
        cmd = server_command(binary, gguf, host=args.host, port=args.port, parallel=args.parallel,
                             ctx_per_slot=args.ctx_per_slot, threads=args.threads, extra=extra)
        env, name, what, slots = {}, gguf.name, "llama-server", "slots"
    line = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(cmd)])
    if args.print_command:
        print(line)
        return OK
    console.print(f"[bold]{line}", soft_wrap=True)
    root = f"http://{args.host}:{args.port}"
    server = ServerProcess(cmd, root, env={**os.environ, **env} if env else None, name=what)
    code = server.serve(lambda: console.print(
        f"[green]serving {name} at {root}/v1[/] ({what}, {args.parallel} {slots}); give it to `tessy synth` as "
        f"--student-url or --teacher-url {root}/v1; Ctrl-C stops it", soft_wrap=True))
    if code is None:  # Ctrl-C or SIGTERM
        console.print(f"{what} stopped")
        return OK
    if code:
        console.print(f"[red]{what} exited with code {code}: {server.failure()}", soft_wrap=True)
        return FAILED
    console.print(f"{what} exited")
    return OK

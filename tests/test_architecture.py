"""The shape of the package: modules in pipeline order, each importing only modules before it.

`PIPELINE` is the order of README's "Where things are". Every import of a tessy module counts, at
module level or inside a function, with one exception: a package's `__init__` may import its own
modules lazily in its factory (`make_backend`, `load_predictor`), as long as none of them imports the
`__init__` back.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "tessy"

PIPELINE = [
    "tessy", "tessy.engine", "tessy.dataset", "tessy.roles", "tessy.typed", "tessy.engine.seeds",
    "tessy.engine.records", "tessy.predictors.segments", "tessy.prompts", "tessy.models", "tessy.profiles",
    "tessy.backends.protocol", "tessy.backends.limit", "tessy.backends.openai.pool", "tessy.backends.openai.dialects",
    "tessy.backends.openai.backend", "tessy.backends.openai.chat", "tessy.backends.openai", "tessy.backends.hf",
    "tessy.backends.vllm", "tessy.backends",
    "tessy.predictors.eq5", "tessy.predictors.lexicon", "tessy.predictors.scoring", "tessy.predictors.learned",
    "tessy.predictors", "tessy.config", "tessy.serve", "tessy.serve_weights", "tessy.serve_vllm",
    "tessy.engine.transcript", "tessy.engine.loop", "tessy.engine.methods", "tessy.engine.streaming",
    "tessy.engine.scheduler", "tessy.engine.meter", "tessy.engine.shards", "tessy.engine.variety", "tessy.engine.synth",
    "tessy.dataset.card", "tessy.dataset.export", "tessy.dataset.show", "tessy.predictors.annotate",
    "tessy.dataset.plots", "tessy.dataset.analysis",
    "tessy.eval.verdicts", "tessy.eval.sandbox", "tessy.eval.checkers", "tessy.eval.livecodebench",
    "tessy.eval.mathcheck", "tessy.eval.evaluate", "tessy.eval",
    "tessy.sft", "tessy.dataset.filter",
    "tessy.commands.common", "tessy.commands.synth", "tessy.commands.serve", "tessy.commands.merge",
    "tessy.commands.export", "tessy.commands.filter", "tessy.commands.analyze", "tessy.commands.config",
    "tessy.commands.show", "tessy.commands.annotate", "tessy.commands.predictor", "tessy.commands.sft",
    "tessy.commands.eval", "tessy.commands.plot_loss", "tessy.commands", "tessy.cli",
]


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path, known: dict) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tessy":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tessy"}
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def is_factory_edge(importer: str, imported: str, edges: dict) -> bool:
    """A package `__init__` importing its own module, which does not import the `__init__` back."""
    return (ROOT / Path(*importer.split(".")[1:]) / "__init__.py").is_file() and imported.startswith(importer + ".") \
        and importer not in edges[imported]


def test_every_module_has_its_place_in_the_pipeline():
    missing = sorted(set(modules()) - set(PIPELINE))
    assert not missing, f"add these to PIPELINE (and README's 'Where things are'): {missing}"


def test_no_module_imports_one_that_stands_above_it():
    edges = graph()
    place = {name: i for i, name in enumerate(PIPELINE)}
    upward = sorted((a, b) for a, targets in edges.items() for b in targets
                    if place[b] > place[a] and not is_factory_edge(a, b, edges))
    assert not upward, f"imports of modules that come later in the pipeline: {upward}"


def test_no_circle_of_imports():
    edges = graph()
    lazy = {a: {b for b in targets if not is_factory_edge(a, b, edges)} for a, targets in edges.items()}
    seen, on_path = set(), []

    def visit(name):
        if name in on_path:
            raise AssertionError(f"a circle of imports: {' -> '.join(on_path[on_path.index(name):] + [name])}")
        if name in seen:
            return
        seen.add(name)
        on_path.append(name)
        for nxt in sorted(lazy[name]):
            visit(nxt)
        on_path.pop()

    for name in sorted(lazy):
        visit(name)


def test_readme_lists_the_modules_in_pipeline_order():
    readme = (ROOT.parent / "README.md").read_text()
    section = readme[readme.index("## Where things are"):]
    section = section[:section.index("\n## ", 1)]
    listed = [line.split()[0] for line in section.splitlines() if line.startswith("tessy/")]
    names = [f.removesuffix(".py").removesuffix("/").replace("/", ".") for f in listed]
    present = [n for n in PIPELINE if n in modules() and n != "tessy"]
    assert names == present

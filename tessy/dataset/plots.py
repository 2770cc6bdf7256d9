"""The figures and the HTML page of `tessy analyze`, drawn from its result dict (tessy/dataset/analysis.py)."""

from __future__ import annotations

import html
import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _heatmap(ax, values, rows, cols, fmt="{:.2f}", cmap="viridis"):
    im = ax.imshow(values, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    top = max((v for row in values for v in row), default=0) or 1
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8,
                    color="white" if v < 0.6 * top else "black")
    return im


def draw(result: dict, out: Path) -> dict[str, str]:
    """Write every figure as a PNG under `out`; returns {figure name: file name}."""
    plt = _pyplot()
    names = result["similarity"]["names"]
    per = result["per_dataset"]
    files = {}

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        files[name] = f"{name}.png"

    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(names), 1.2 + 0.9 * len(names)))
    im = _heatmap(ax, result["similarity"]["matrix"], names, names, "{:.3f}")
    fig.colorbar(im, ax=ax)
    ax.set_title("TF-IDF cosine, same prompt (Fig. 14's method)")
    save(fig, "similarity")

    fig, ax = plt.subplots(figsize=(6, 5))
    for name in names:
        pts = [p for p in result["pca"]["points"] if p["dataset"] == name]
        ax.scatter([p["x"] for p in pts], [p["y"] for p in pts], label=name, s=18, alpha=0.75)
    ev = result["pca"]["explained_variance_ratio"]
    ax.set_xlabel(f"PC1 ({ev[0]:.1%})" if ev else "PC1")
    ax.set_ylabel(f"PC2 ({ev[1]:.1%})" if len(ev) > 1 else "PC2")
    ax.set_title("PCA of TF-IDF responses (Fig. 8)")
    ax.legend(fontsize=8)
    save(fig, "pca")

    words = result["top_words"]["words"]
    if words:
        values = [[result["top_words"]["per_1000"][n][i] for n in names] for i in range(len(words))]
        fig, ax = plt.subplots(figsize=(2 + 1.1 * len(names), 1 + 0.28 * len(words)))
        im = _heatmap(ax, values, words, names, "{:.0f}", cmap="magma")
        fig.colorbar(im, ax=ax, label="per 1000 words")
        ax.set_title("Top words (Fig. 16)")
        save(fig, "top_words")

    fig, axes = plt.subplots(1, 3, figsize=(4 + 2.2 * len(names), 3.6))
    x = range(len(names))
    axes[0].bar([i - 0.2 for i in x], [per[n]["mean_tokens"] for n in names], 0.4, label="mean")
    axes[0].bar([i + 0.2 for i in x], [per[n]["median_tokens"] for n in names], 0.4, label="median")
    axes[0].set_title("response tokens (student tokenizer, Fig. 12)")
    axes[0].legend(fontsize=8)
    axes[1].bar(x, [per[n]["teacher_share"] for n in names], color="tab:orange")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("teacher-token share (Fig. 17)")
    axes[2].bar(x, [per[n]["switches_per_sample"] for n in names], color="tab:green")
    axes[2].set_title("switches per sample")
    for ax in axes:
        ax.set_xticks(list(x), names, rotation=30, ha="right")
    save(fig, "lengths_share")

    if "nll" in result:
        fig, ax = plt.subplots(figsize=(2 + 1.4 * len(names), 3.8))
        for k, (key, color) in enumerate((("style", "tab:blue"), ("capability", "tab:red"), ("all", "tab:gray"))):
            vals = [result["nll"][n][key]["nll"] or 0.0 for n in names]
            ax.bar([i + (k - 1) * 0.27 for i in x], vals, 0.27, label=key, color=color)
        ax.set_xticks(list(x), names, rotation=30, ha="right")
        ax.set_ylabel("student NLL per token (nats)")
        ax.set_title("The student's own loss on each dataset (Eq. 2)")
        ax.legend(fontsize=8)
        save(fig, "student_nll")
    return files


def page(result: dict, files: dict[str, str]) -> str:
    """One HTML page with the table and every figure (the PNGs sit beside it)."""
    names = result["similarity"]["names"]
    per = result["per_dataset"]
    nll = result.get("nll", {})
    head = ["dataset", "samples", "mean tokens", "median tokens", "teacher share", "switches / sample",
            "NLL style", "NLL capability", "NLL all", "thinking closed by"]
    rows = []
    for n in names:
        d = per[n]

        def f(v, digits=3):
            return "-" if v is None else f"{v:.{digits}f}"

        rows.append([n, d["samples"], f(d["mean_tokens"], 1), f(d["median_tokens"], 1), f(d["teacher_share"]),
                     f(d["switches_per_sample"], 2), f(nll.get(n, {}).get("style", {}).get("nll")),
                     f(nll.get(n, {}).get("capability", {}).get("nll")), f(nll.get(n, {}).get("all", {}).get("nll")),
                     ", ".join(f"{k}: {v}" for k, v in sorted(d["close_reasons"].items()))])
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    table += ("".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
              + "</table>")
    sim = "<table><tr><th></th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
    for n, row in zip(names, result["similarity"]["matrix"]):
        sim += f"<tr><th>{html.escape(n)}</th>" + "".join(f"<td>{v:.3f}</td>" for v in row) + "</tr>"
    sim += "</table>"
    figures = "".join(f'<figure><img src="{html.escape(f)}" alt="{html.escape(k)}">'
                      f"<figcaption>{html.escape(k)}</figcaption></figure>"
                      for k, f in files.items())
    said = {"shared_prompts": "{} shared prompts", "student": "student model {}", "predictor": "predictor {}"}
    meta = html.escape(", ".join(text.format(result[k]) for k, text in said.items() if k in result))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tessy analyze</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}figure{{display:inline-block;margin:1em}}
img{{max-width:560px}}</style></head><body>
<h1>tessy analyze</h1><p>{meta}</p>
<h2>Per dataset</h2>{table}
<h2>TF-IDF cosine similarity on the same prompt</h2>{sim}
<h2>Figures</h2>{figures}
<p>Every number is in analysis.json.</p></body></html>"""


def write_report(result: dict, out: str | Path) -> dict[str, str]:
    """analysis.json, the PNGs and index.html under `out`; returns {what: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps(result, indent=2))
    files = draw(result, out)
    (out / "index.html").write_text(page(result, files))
    return {"json": str(out / "analysis.json"), "html": str(out / "index.html"),
            **{k: str(out / v) for k, v in files.items()}}

"""`tessy show`: a record with student spans and teacher spans in two colours (paper, Figure 1 and
Table 4: the student's parts in purple)."""

from __future__ import annotations

import html

COLOURS = {"student": ("magenta", "#e9d5ff"), "teacher": ("cyan", "#cffafe")}


def print_record(record: dict, console) -> None:
    from rich.panel import Panel
    from rich.text import Text

    body = Text()
    for part in ("think", "answer"):
        body.append(f"[{'thinking' if part == 'think' else 'answer'}]\n", style="bold")
        for seg in record["segments"]:
            if seg.get("part", "think") == part:
                body.append(seg["text"], style=COLOURS[seg["source"]][0])
        body.append("\n\n")
    s = record["stats"]
    legend = Text.assemble(("student", "magenta"), " / ", ("teacher", "cyan"),
                           f"   teacher share {s['teacher_token_share']:.2f}, switches {s['switches']}, "
                           f"stop: {s['stop_reason']}")
    console.print(Panel(Text(record["prompt"]), title=f"prompt {record['id']}"))
    console.print(Panel(body, title=f"{record['method']} response", subtitle=legend))


def record_html(records: list[dict]) -> str:
    """One self-contained page showing the records' spans coloured by source."""
    parts = ["<!doctype html><meta charset='utf-8'><title>tessy records</title><style>",
             "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;line-height:1.5}",
             "pre{white-space:pre-wrap;font-family:ui-monospace,monospace;border:1px solid #ddd;padding:1rem}",
             f".student{{background:{COLOURS['student'][1]}}}.teacher{{background:{COLOURS['teacher'][1]}}}",
             "</style><h1>tessy records</h1><p><span class=student>student</span> "
             "<span class=teacher>teacher</span></p>"]
    for r in records:
        s = r["stats"]
        parts.append(f"<h2>{html.escape(str(r['id']))} <small>({html.escape(r['method'])})</small></h2>")
        parts.append(f"<p><b>Prompt.</b> {html.escape(r['prompt'])}</p>")
        parts.append(f"<p>teacher share {s['teacher_token_share']:.2f} · switches {s['switches']} · "
                     f"stop {html.escape(str(s['stop_reason']))}</p>")
        for part, title in (("think", "Thinking"), ("answer", "Answer")):
            spans = "".join(f"<span class={seg['source']} title='{seg['source']}, {seg['n_tokens']} tokens'>"
                            f"{html.escape(seg['text'])}</span>"
                            for seg in r["segments"] if seg.get("part", "think") == part)
            parts.append(f"<h3>{title}</h3><pre>{spans}</pre>")
    return "\n".join(parts)

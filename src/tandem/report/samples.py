"""Sample completions of a step, for people to read: `log.samples_every` steps apart, the first
`log.samples` items of each source the step trained on, decoded. They go to RUN_DIR/samples.jsonl
(one line per completion), to TensorBoard's text tab (`samples/<source>`) and to Weights & Biases
as a table, next to the numbers: a reward curve that rises for the wrong reason (a format trick,
a length exploit) shows here first.
"""

from __future__ import annotations

from typing import Any

from tandem.experience import TRAINED_ROLES, Item


def sample_rows(items: list[Item], tokenizer: Any, per_source: int) -> list[dict[str, Any]]:
    """Up to `per_source` decoded items of each source: source, prompt, completion, the role of
    the trained text (sampled, demo, prefix), reward (None: not scored), finished (False: cut at
    max_new_tokens), and chosen for a preference pair's sides."""
    seen: dict[str, int] = {}
    rows = []
    for it in items:
        if seen.get(it.source, 0) >= per_source:
            continue
        seen[it.source] = seen.get(it.source, 0) + 1
        prompt = [t for s in it.spans if s.role == "prompt" for t in s.ids]
        done = [s for s in it.spans if s.role != "prompt"]
        rows.append(
            {
                "source": it.source,
                "prompt": tokenizer.decode(prompt, skip_special_tokens=False),
                "completion": tokenizer.decode(
                    [t for s in done for t in s.ids], skip_special_tokens=False
                ),
                "role": next((s.role for s in done if s.role in TRAINED_ROLES), "-"),
                "reward": it.reward,
                "finished": it.finished,
                **({"chosen": it.chosen} if it.chosen is not None else {}),
            }
        )
    return rows


def as_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows of one source as TensorBoard text (markdown; code blocks keep whitespace)."""
    out = []
    for i, r in enumerate(rows):
        head = f"**{i + 1}** role {r['role']}"
        if r["reward"] is not None:
            head += f" | reward {r['reward']:.3g}"
        if "chosen" in r:
            head += " | chosen" if r["chosen"] else " | rejected"
        if not r["finished"]:
            head += " | cut at max_new_tokens"
        out.append(f"{head}\n\n```\n{r['prompt']}\n```\n\n```\n{r['completion']}\n```")
    return "\n\n---\n\n".join(out)


__all__ = ["as_markdown", "sample_rows"]

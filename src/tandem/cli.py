"""The `tandem` command line.

tandem train RECIPE [key.sub=value ...]     train from a recipe file or a bundled recipe name
tandem train --resume RUN_DIR [key=value]   continue a run from its latest checkpoint
tandem quickstart [--output-dir DIR]        SmolLM2-135M, a hybrid recipe, before/after table
tandem eval MODEL_OR_RUN --task NAME ...    accuracy, pass@k, maj@k per task and split
tandem recipes [--details METHOD]           presets, bundled recipes, parts of an objective
tandem tasks [NAME] [--rg]                  tasks and their params; reasoning-gym names
tandem plot RUN_DIR [RUN_DIR ...]           overlay runs' metrics into PNGs, one per panel
tandem convert gguf FILE OUT_DIR            a GGUF file as a trainable HF checkpoint directory
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from importlib import resources
from pathlib import Path

from tandem.errors import TandemError, TandemWarning


def bundled_recipes() -> dict[str, Path]:
    root = resources.files("tandem") / "recipes"
    return {
        p.name.removesuffix(".yaml"): Path(str(p))
        for p in root.iterdir()
        if p.name.endswith(".yaml")
    }


def _recipe_path(name: str) -> str:
    if Path(name).exists():
        return name
    bundled = bundled_recipes()
    if name in bundled:
        return str(bundled[name])
    raise TandemError(
        f"recipe not found: {name!r} is neither a file nor a bundled recipe ({', '.join(sorted(bundled))})"
    )


def cmd_train(args: argparse.Namespace) -> int:
    from tandem.train.loop import train_from_files

    if args.resume:
        overrides = ([args.recipe] if args.recipe else []) + args.overrides
        summary = train_from_files(
            None, overrides, resume_dir=args.resume, accept_config_change=args.accept_config_change
        )
    elif args.recipe and "=" in args.recipe and not Path(args.recipe).exists():
        # no recipe file: defaults plus overrides (`tandem train method=sft steps=5 ...`)
        summary = train_from_files(None, [args.recipe, *args.overrides])
    else:
        if not args.recipe:
            raise TandemError(
                "tandem train: give a RECIPE (a YAML file or a bundled name) or --resume RUN_DIR"
            )
        summary = train_from_files(_recipe_path(args.recipe), args.overrides)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 prints the run's summary
        print(json.dumps(summary, indent=2))
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from tandem.quickstart import quickstart

    quickstart(output_dir=args.output_dir, overrides=args.overrides)
    return 0


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise TandemError(f"{flag}: comma-separated integers >= 1, got {text!r}") from None
    if any(k < 1 for k in values):
        raise TandemError(f"{flag}: comma-separated integers >= 1, got {text!r}")
    return values


def cmd_eval(args: argparse.Namespace) -> int:
    from tandem.eval.run import (
        TaskSpec,
        add_params,
        default_out,
        render_table,
        run_eval,
        write_json_atomic,
    )

    specs = add_params([TaskSpec.parse(t) for t in args.task], args.param)
    if args.param and not specs:
        raise TandemError("--param: give the task with --task NAME")
    doc = run_eval(
        args.model,
        specs,
        splits=[s.strip() for s in args.splits.split(",") if s.strip()],
        prompts=args.prompts,
        max_new_tokens=args.max_new_tokens,
        pass_k=_int_list("--pass-k", args.pass_k),
        maj_k=_int_list("--maj-k", args.maj_k),
        samples=args.pass_samples,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
        prior=args.prior,
        system_prompt=args.system_prompt,
        device=args.device,
        bf16=args.bf16,
    )
    out = Path(args.out) if args.out else default_out(args.model, doc["run_dir"])
    write_json_atomic(out, doc)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        render_table(doc)
    print(f"tandem eval: wrote {out}", file=sys.stderr)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from tandem.algo.advantages import ADVANTAGES
    from tandem.algo.controllers import CONTROLLERS
    from tandem.algo.objective import TERMS
    from tandem.methods import PRESETS, get_preset
    from tandem.train.filters import FILTERS
    from tandem.train.selection import SELECTORS
    from tandem.train.sources import SOURCES

    if args.details:
        import yaml

        p = get_preset(args.details)
        body = {"stages": p.stages} if p.stages else {"objective": p.objective}
        if p.run_defaults:
            body.update(p.run_defaults)
        print(f"{p.name}: {p.summary}\npaper: {p.paper}\n\n{p.notes}\n")
        print(yaml.safe_dump(body, sort_keys=False).rstrip())
        return 0
    print("method presets (use with method: NAME in a recipe, or method=NAME on the command line):")
    for p in PRESETS.values():
        print(f"  {p.name:<22} {p.summary}")
    print("bundled recipes (tandem train NAME):")
    for name, path in sorted(bundled_recipes().items()):
        first = next(
            (ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")), ""
        )
        print(f"  {name:<22} {first}")
    print("the parts an objective is built from (kind: in objective.sources / terms / ...):")
    for title, reg in (
        ("sources", SOURCES),
        ("terms", TERMS),
        ("advantage estimators", ADVANTAGES),
        ("filters", FILTERS),
        ("controllers", CONTROLLERS),
        ("prompt selectors (objective.sources.<name>.select)", SELECTORS),
    ):
        print(f" {title}:")
        for name, summary in reg.summaries():
            print(f"  {name:<16} {summary}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from tandem.tasks import list_tasks
    from tandem.tasks.registry import task_params

    if args.rg:
        from tandem.tasks.rgym import dataset_names

        names = dataset_names()
        print(
            f"reasoning-gym datasets ({len(names)}; use as rg:<name>, details: tandem tasks rg:NAME):"
        )
        for name in names:
            print(f"  rg:{name}")
        return 0
    if args.name:
        params = task_params(args.name)
        described = dict(list_tasks()).get(args.name)
        if described is None and args.name.startswith("rg:"):
            from tandem.tasks.registry import get_task

            described = get_task(args.name).description
        print(f"{args.name}: {described}")
        print("params (task.params.<name> in a recipe; tandem eval --task 'NAME key=value'):")
        for key, desc in params.items():
            print(f"  {key:<20} {desc}")
        if not params:
            print("  (none documented)")
        return 0
    print("tasks (details: tandem tasks NAME; reasoning-gym names: tandem tasks --rg):")
    for name, desc in list_tasks():
        print(f"  {name:<18} {desc}")
        params = task_params(name) if not name.startswith("rg:") else _rg_extra_params()
        for key, pdesc in params.items():
            print(f"      {key:<16} {pdesc}")
    return 0


def _rg_extra_params() -> dict[str, str]:
    from tandem.tasks.registry import RG_EXTRA_PARAMS

    return {"<config field>": "the dataset's difficulty knobs (tandem tasks rg:NAME)"} | (
        RG_EXTRA_PARAMS
    )


def cmd_plot(args: argparse.Namespace) -> int:
    from tandem.report.plots import plot_runs

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    for path in plot_runs(args.run_dirs, args.out, names=names, smooth=args.smooth):
        print(path)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    import time

    from tandem.model.load import convert_gguf

    print(f"tandem: converting {args.file} into {args.out_dir} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    out = convert_gguf(args.file, args.out_dir, dtype=args.dtype)
    print(
        f"tandem: done in {time.perf_counter() - t0:.0f}s; train it with model.name={out}",
        file=sys.stderr,
    )
    print(out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tandem.export import export_run

    print(export_run(args.run_dir, args.out_dir, log=lambda m: print(m, file=sys.stderr)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tandem",
        description="Post-training where SFT and RL work in tandem.",
        epilog="train, quickstart and eval run on tcmalloc (else jemalloc) when installed: the "
        "process re-executes itself once with the library preloaded. Set TANDEM_ALLOCATOR="
        "auto|tcmalloc|jemalloc|system to choose (see tandem.allocator).",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser(
        "train", help="train from a recipe (YAML file or bundled name) with key.sub=value overrides"
    )
    t.add_argument(
        "recipe", nargs="?", help="recipe YAML path or bundled recipe name (see `tandem recipes`)"
    )
    t.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. steps=50 objective.clip_high=0.28"
    )
    t.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint"
    )
    t.add_argument(
        "--accept-config-change",
        action="store_true",
        help="with --resume: go on with a config that differs from the checkpoint's (otherwise "
        "refused with the list of changes; steps, save_every and reporting may always change)",
    )
    t.set_defaults(fn=cmd_train)

    q = sub.add_parser(
        "quickstart", help="SmolLM2-135M-Instruct + sft_then_grpo on arithmetic, before/after table"
    )
    q.add_argument(
        "--output-dir", default="runs/quickstart", help="run directory (default runs/quickstart)"
    )
    q.add_argument("overrides", nargs="*", help="dotted overrides of the quickstart recipe")
    q.set_defaults(fn=cmd_quickstart)

    e = sub.add_parser(
        "eval",
        help="accuracy, pass@k, maj@k of a model or run on tasks: a table, and JSON on disk",
        description="Evaluate MODEL_OR_RUN on each --task and split: accuracy (greedy), unbiased pass@k "
        "and maj@k (from --pass-samples samples at --temperature) and mean completion length "
        "(tokens). Prints a table (or the JSON with --json) and writes the JSON to --out. "
        "Metric definitions: docs/eval.md. Before the table existed this command printed "
        "flat JSON ({split}/accuracy ...) to stdout; that is now 'results' in the JSON file.",
        epilog="examples: tandem eval smollm2-135m --task champ --task 'add digits=3' "
        "--pass-k 1,4 --maj-k 4 --prompts 32 | tandem eval runs/grpo-tiny (the run's task) | "
        "tandem eval tiny --task add --param digits=1 --splits eval",
    )
    e.add_argument(
        "model",
        metavar="MODEL_OR_RUN",
        help="tiny, smollm2-135m, a local HF model directory, a tandem run directory (its "
        "newest intact checkpoint) or a checkpoint directory",
    )
    e.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="'NAME [key=value ...]'",
        help="a task and its params (repeatable; `tandem tasks` lists them); default for a "
        "run: the run's task",
    )
    e.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="[TASK.]key=value",
        help="task parameter (repeatable): key=value with one --task, TASK.key=value to pick one",
    )
    e.add_argument("--splits", default="eval,ood", help="comma-separated splits (train, eval, ood)")
    e.add_argument("--prompts", type=int, default=64, help="prompts per task and split")
    e.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's, else 32")
    e.add_argument("--pass-k", default="", help="comma-separated k values for pass@k, e.g. 1,4")
    e.add_argument("--maj-k", default="", help="comma-separated k values for maj@k, e.g. 4,8")
    e.add_argument(
        "--pass-samples",
        type=int,
        default=8,
        help="samples per prompt for pass@k and maj@k (raised to the largest k), default 8",
    )
    e.add_argument("--temperature", type=float, default=1.0, help="for the samples (default 1)")
    e.add_argument("--batch-size", type=int, default=64, help="completions decoded together")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    e.add_argument("--bf16", action="store_true", help="bf16 autocast")
    e.add_argument(
        "--prior",
        default=None,
        help="prior prompt around each question, as in training (task.prior): reasoning, "
        "planning, code, knowledge, null_example, or a template with {prompt}; default for a "
        "run: the run's",
    )
    e.add_argument(
        "--system-prompt",
        default=None,
        help="system message (models with a chat template); default for a run: the run's",
    )
    e.add_argument(
        "--out",
        metavar="FILE.json",
        help="where the JSON goes (written atomically); default RUN_DIR/eval.json for a run, "
        "else ./eval-<model>.json",
    )
    e.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    e.set_defaults(fn=cmd_eval)

    r = sub.add_parser(
        "recipes", help="list method presets, bundled recipes and the parts of an objective"
    )
    r.add_argument(
        "--details", metavar="METHOD", help="print one preset's notes (paper, deviations)"
    )
    r.set_defaults(fn=cmd_recipes)
    tk = sub.add_parser(
        "tasks",
        help="list tasks and their params; tandem tasks NAME for one, --rg for reasoning-gym",
    )
    tk.add_argument(
        "name", nargs="?", metavar="NAME", help="one task (e.g. champ, rg:chain_sum) in detail"
    )
    tk.add_argument("--rg", action="store_true", help="list every reasoning-gym dataset name")
    tk.set_defaults(fn=cmd_tasks)

    pl = sub.add_parser(
        "plot",
        help="overlay runs' metrics into PNGs (reward, eval accuracy, losses, coefficients, ...)",
        description="Overlay the metrics.jsonl of one or more runs into DIR/reward.png, "
        "eval_accuracy.png (eval/ood accuracy and pass@k), loss.png (each loss/<term> and "
        "loss/total), coef.png, entropy.png (rollout/entropy) and length.png (rollout/len_mean): "
        "one axes per metric, x = step, one line per run. A file is written only when some run "
        "logged its metrics. Prints the paths written.",
        epilog="example: tandem plot runs/grpo-tiny runs/sft-tiny --names grpo,sft --out "
        "runs/compare",
    )
    pl.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (metrics.jsonl)"
    )
    pl.add_argument(
        "--out", default="plots", metavar="DIR", help="output directory (default plots)"
    )
    pl.add_argument(
        "--names",
        metavar="A,B,...",
        help="comma-separated legend names, one per RUN_DIR (default: each directory's name)",
    )
    pl.add_argument(
        "--smooth",
        type=int,
        default=0,
        metavar="N",
        help="also draw a trailing moving average over N logged points (per-step panels; eval "
        "points are never smoothed; default 0: raw values only)",
    )
    pl.set_defaults(fn=cmd_plot)

    c = sub.add_parser("convert", help="convert a model file into a trainable HF checkpoint dir")
    formats = c.add_subparsers(dest="format", required=True, metavar="FORMAT")
    g = formats.add_parser(
        "gguf",
        help="a GGUF file (llama.cpp) of a Llama-family model",
        description="Convert a GGUF file (any architecture transformers loads from GGUF; llama "
        "covers the Llama family) into OUT_DIR: model.safetensors, config.json and the "
        "tokenizer, loadable by AutoModelForCausalLM.from_pretrained(OUT_DIR) and trainable "
        "with model.name=OUT_DIR. Quantized tensors (Q4_K, Q8_0, ...) are dequantized to "
        "float32 by transformers, then saved in --dtype. OUT_DIR must be new or empty (never "
        "overwritten): it is written to a hidden folder beside it, then renamed into place. Llama "
        "3.1+ files (RoPE frequency factors, which transformers drops) are refused.",
    )
    g.add_argument("file", metavar="FILE", help="the .gguf file")
    g.add_argument("out_dir", metavar="OUT_DIR", help="new (or empty) checkpoint directory")
    g.add_argument("--dtype", default="fp32", help="weights saved as fp32 (default) or bf16")
    g.set_defaults(fn=cmd_convert)

    x = sub.add_parser(
        "export",
        help="a run's model as a plain HF directory (a LoRA adapter merged in)",
        description="Write the newest intact checkpoint of RUN_DIR to OUT_DIR as a plain "
        "Hugging Face model directory (safetensors, config, tokenizer) that "
        "AutoModelForCausalLM.from_pretrained(OUT_DIR) loads. A LoRA run (model.lora) has "
        "only its adapter in the checkpoint: the base model is loaded and the adapter merged "
        "into its weights. OUT_DIR must not exist; it is renamed into place when complete.",
    )
    x.add_argument("run_dir", metavar="RUN_DIR", help="a tandem run directory")
    x.add_argument("out_dir", metavar="OUT_DIR", help="new directory for the model")
    x.set_defaults(fn=cmd_export)
    return ap


def _quiet_libraries() -> None:
    """Our progress bar and log lines are the run's output; silence the libraries' own bars."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """tandem's own warnings (`TandemWarning`) as one line; the libraries' as Python prints them."""
    if issubclass(category, TandemWarning):
        return f"tandem: warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


_PYTHON_FORMAT = warnings.formatwarning


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    warnings.formatwarning = _format_warning
    try:
        return args.fn(args)
    except TandemError as e:
        print(f"tandem: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tandem: interrupted (the last checkpoint is intact)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`tandem tasks | head`): not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def entry() -> None:
    """The `tandem` console script: `main` on tcmalloc or jemalloc where installed (the process
    re-executes itself once with the library preloaded; `tandem.allocator`, TANDEM_ALLOCATOR)."""
    if len(sys.argv) > 1 and sys.argv[1] in ("train", "quickstart", "eval"):
        from tandem import allocator

        try:
            allocator.reexec()
        except TandemError as e:
            print(f"tandem: {e}", file=sys.stderr)
            sys.exit(2)
    sys.exit(main())


if __name__ == "__main__":
    entry()

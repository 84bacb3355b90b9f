"""``chex pipeline status``: what ``chex pipeline run`` would do with each stage, and why, decided from
``<workdir>/pipeline_state.json`` and today's configs and raw files, without running anything (no Ray, no MLflow).

A stage is judged as the runner's ``run_or_skip`` judges it: ``cached`` when its key equals the recorded key of a
success whose outputs still exist; ``stale`` otherwise; ``never run`` without a record. Its key is computed from the
recorded outputs of the stages before it. A stage that reads the outputs of an earlier stage that will rerun is
stale too ("after ingest reruns"): it gets new inputs once that stage has rerun, unless the rerun reproduces
identical outputs. The code version is not part of any key (a docs-only commit must not retrain a model for days):
a cached result built by other code is reported as a note.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chex_model.typed_config import ConfigError
from pipelines.ingest.checks import IngestError
from pipelines.workflow.stages import Context, IngestStage, Stage
from pipelines.workflow.state import PipelineState, attempt_of

CACHED, STALE, NEVER = "cached", "stale", "never run"
MAX_CHANGES = 6  # input changes named per stage; the rest are counted
EXAMPLES = 2     # example paths per kind of raw-file change
# what computing a key raises on a changed world (a raw folder gone, an old record lacking a field); anything else
# is a bug and fails loudly
KEY_ERRORS = (IngestError, ConfigError, OSError, KeyError)
REPO = Path(__file__).resolve().parents[2]


@dataclass
class StageStatus:
    """One stage's verdict. ``reasons``: why it would run; ``notes``: about a result it would reuse (when it was
    made, by which pipeline run and which code)."""

    name: str
    state: str
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: str | None = None        # the recorded status: succeeded, failed, running (None: no record)
    finished_at: str | None = None   # of the recorded success
    seconds: float | None = None
    pipeline_run: str | None = None  # the MLflow parent run of the recorded success
    log: str | None = None           # relative to the workdir
    code: dict[str, Any] | None = None

    @property
    def would_run(self) -> bool:
        return self.state != CACHED


class _NoOutputs(Exception):
    """A stage's inputs read an earlier stage that has no recorded outputs (never ran, failed, interrupted)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _Upstream(dict):
    """The recorded outputs of the earlier stages, as ``Stage.inputs`` reads them (``[]``, ``get``, ``in``): notes
    which earlier stages (``stages``) a stage read, and stops it at one that has no outputs (where the runner would
    have fresh ones) rather than letting it guess. A later stage reads as absent, as in the runner."""

    def __init__(self) -> None:
        super().__init__()
        self.stages: set[str] = set()
        self.read: set[str] = set()

    def _touch(self, name: object) -> None:
        if name in self.stages:
            self.read.add(name)
            if not dict.__contains__(self, name):
                raise _NoOutputs(str(name))

    def __getitem__(self, name: str) -> Any:
        self._touch(name)
        return dict.__getitem__(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        self._touch(name)
        return dict.get(self, name, default)

    def __contains__(self, name: object) -> bool:
        self._touch(name)
        return dict.__contains__(self, name)


def pipeline_status(pipeline: Any) -> list[StageStatus]:
    """Each stage of ``pipeline`` (a :class:`~pipelines.workflow.runner.Pipeline`), in order, as a plain
    ``chex pipeline run`` would treat it now."""
    from pipelines.ingest.manifest import code_version

    state, code = PipelineState(pipeline.workdir), code_version(REPO)
    up = _Upstream()
    judged: dict[str, StageStatus] = {}
    for stage in pipeline.stages:
        prev = state.get(stage.name)
        judged[stage.name] = _judge(stage, prev, Context(pipeline, up), judged, code)
        up.stages.add(stage.name)
        if prev.get("status") == "succeeded" and "outputs" in prev:
            dict.__setitem__(up, stage.name, prev["outputs"])
    return list(judged.values())


def _judge(stage: Stage, prev: dict[str, Any], ctx: Context, before: dict[str, StageStatus],
           code: dict[str, Any]) -> StageStatus:
    if not prev:
        return StageStatus(stage.name, NEVER, ["no recorded run in this workdir"])
    st = StageStatus(stage.name, CACHED, status=prev.get("status"), log=prev.get("log"))
    if st.status == "succeeded":
        st.finished_at, st.seconds = prev.get("finished_at"), prev.get("seconds")
        st.pipeline_run, st.code = prev.get("pipeline_run"), prev.get("code")
    key, inputs, reasons = _key(stage, ctx, before)
    if key is not None and key != prev.get("key"):
        reasons += _changes(stage, ctx, prev, inputs)
    if st.status != "succeeded":
        reasons.append(_unfinished(stage.name, prev, key, ctx.pipeline.workdir))
    elif not stage.outputs_exist(prev.get("outputs", {})):
        reasons += _missing(stage, prev.get("outputs", {}))
    reruns = [n for n in before if n in ctx.upstream.read and before[n].would_run]
    if reruns:
        single = "runs" if before[reruns[0]].state == NEVER else "reruns"
        names = reruns[0] if len(reruns) == 1 else f"{', '.join(reruns[:-1])} and {reruns[-1]}"
        reasons.append(f"after {names} {single if len(reruns) == 1 else 'rerun'}")
    st.reasons = list(dict.fromkeys(reasons))
    st.state = STALE if st.reasons else CACHED
    if st.state == CACHED:
        st.notes = _success_notes(st, code)
    return st


def _key(stage: Stage, ctx: Context, before: dict[str, StageStatus]) -> tuple[str | None, dict[str, Any], list[str]]:
    """The stage's key and inputs as the runner would compute them now; None with a reason when they cannot be."""
    ctx.upstream.read = set()
    try:
        key, inputs = stage.key(ctx)
    except _NoOutputs as exc:
        if exc.name in before and before[exc.name].would_run:
            return None, {}, []  # the "after <stage> reruns" reason says it
        return None, {}, [f"its inputs cannot be computed: {exc.name} recorded no outputs"]
    except KEY_ERRORS as exc:
        return None, {}, [f"its inputs cannot be computed: {type(exc).__name__}: {exc}"]
    return key, json.loads(json.dumps(inputs, default=str)), []  # as recorded (JSON), as the key sees it


def _changes(stage: Stage, ctx: Context, prev: dict[str, Any], inputs: dict[str, Any]) -> list[str]:
    """Why the key changed: each input that differs from the recorded one (old -> new), and for ingest, which raw
    files are new, changed or removed."""
    if "inputs" not in prev:
        return ["its inputs changed (this record predates recording them)"]
    old, new = _flat(prev["inputs"]), _flat(inputs)
    keys = [k for k in sorted(old.keys() | new.keys()) if old.get(k, _ABSENT) != new.get(k, _ABSENT)]
    reasons = []
    if isinstance(stage, IngestStage) and any(k.startswith("raw_files.") for k in keys):
        sources = [k.split(".", 1)[1] for k in keys if k.startswith("raw_files.")]
        reasons.append(_raw_file_changes(ctx, prev, inputs, sources) if "raw_files" in prev["inputs"] else
                       "the raw files' fingerprints: not recorded by the version that ran it")
        keys = [k for k in keys if not k.startswith("raw_files.")]
    reasons += [f"{k}: {_short(old.get(k, _ABSENT))} -> {_short(new.get(k, _ABSENT))}" for k in keys[:MAX_CHANGES]]
    if len(keys) > MAX_CHANGES:
        reasons.append(f"and {len(keys) - MAX_CHANGES} more changed inputs")
    return reasons or ["its key changed with the same recorded inputs (the key's recipe changed with the code)"]


class _Absent:
    def __repr__(self) -> str:
        return "(none)"


_ABSENT = _Absent()


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"stage": {"lr": 1e-3}}`` -> ``{"stage.lr": 1e-3}``: the config keys a person recognises."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _short(value: Any) -> str:
    """A value as a diff shows it: digests cut to 10 characters, long text to its last 50 (a path's tail)."""
    if isinstance(value, _Absent):
        return repr(value)
    if isinstance(value, str):
        if len(value) >= 32 and all(c in "0123456789abcdef" for c in value):
            return value[:10] + "…"
        return value if len(value) <= 50 else "…" + value[-49:]
    text = json.dumps(value, default=str)
    return text if len(text) <= 50 else text[:49] + "…"


def _raw_file_changes(ctx: Context, prev: dict[str, Any], inputs: dict[str, Any], sources: list[str]) -> str:
    """Today's raw files against those the last ingest consumed (its lineage): counts of new, changed (size or
    mtime) and removed files, with example paths relative to the raw folder."""
    from pipelines.ingest.incremental import known_files
    from pipelines.ingest.plan import scan_sources, source_roots

    raw = Path(inputs["raw"])
    roots = source_roots(raw, ctx.pipeline.ingest_cfg)
    tables = Path(prev.get("outputs", {}).get("tables_dir") or ctx.pipeline.workdir / "ingested")
    known = known_files(tables, roots)
    today = {str(f.path): (f.size, f.mtime_ns) for fs in scan_sources(roots).values() for f in fs} if known else {}
    kinds = {"new": sorted(today.keys() - known.keys()),
             "changed": sorted(p for p in today.keys() & known.keys() if today[p] != known[p][:2]),
             "removed": sorted(known.keys() - today.keys())}
    parts = [f"{len(paths)} {kind} ({', '.join(_relative(p, raw) for p in paths[:EXAMPLES])}"
             f"{', …' if len(paths) > EXAMPLES else ''})" for kind, paths in kinds.items() if paths]
    if not parts:  # no lineage of the last ingest (or it consumed another listing): name the sources at least
        return f"raw files changed under {', '.join(sorted(sources))}"
    return "raw files: " + "; ".join(parts)


def _relative(path: str, raw: Path) -> str:
    try:
        return Path(path).relative_to(raw).as_posix()
    except ValueError:
        return path


def _missing(stage: Stage, outputs: dict[str, Any]) -> list[str]:
    return [f"output missing: {k} ({outputs[k]})" if k in outputs else f"output missing: {k} (not recorded)"
            for k in stage.paths if k not in outputs or not Path(outputs[k]).exists()]


def _unfinished(name: str, prev: dict[str, Any], key: str | None, workdir: Path) -> str:
    """A failed or interrupted last run, and whether a rerun continues its attempt (a training stage resumes from
    its last checkpoint) or starts a new one."""
    what = (f"last run failed: {prev.get('error', 'no error recorded')}" if prev.get("status") == "failed"
            else "last run did not finish (interrupted, or running now)")
    if key is not None and prev.get("attempt") and attempt_of(prev, key, False) == prev["attempt"]:
        what += f"; a rerun continues attempt {prev['attempt']} (`--from {name}` starts afresh)"
    return what + (f"; log: {workdir / prev['log']}" if prev.get("log") else "")


def _success_notes(st: StageStatus, code: dict[str, Any]) -> list[str]:
    """When the reused result was made, by which pipeline run, and whether by the code checked out now."""
    from pipelines.console.rows import clock

    made = "unchanged" + (f"; succeeded {st.finished_at}" if st.finished_at else "")
    made += f" in {clock(st.seconds)}" if st.seconds is not None else ""
    notes = [made + (f", MLflow run {st.pipeline_run}" if st.pipeline_run else "")]
    built = st.code or {}
    diffs = [f"{what} {_short(built[k])} (now {_short(code.get(k))})"
             for k, what in (("git_commit", "commit"), ("package_version", "version"))
             if built.get(k) and code.get(k) and built[k] != code[k]]
    if diffs:
        notes.append(f"built by other code ({', '.join(diffs)}); code is not part of the key: "
                     f"`chex pipeline run --from {st.name}` rebuilds it")
    return notes

"""Scoring one model (or the oracle / chance / shuffled-image baselines) on the nine tasks: load the split, predict,
search the post-processing on the validation split where the reference does, score on the evaluation split with
bootstrap standard deviations, and draw the figures. ``cfg.protocol`` says, per item, whether the paper's protocol or
ours is followed (evaluation/protocol.py); what a mean leaves out is warned and recorded per task (``skipped``)."""
from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import task_detection as od
from evaluation import task_grounding as sg
from evaluation import task_region_cls as rc
from evaluation import task_text as tx
from evaluation.bootstrap import bootstrap, per_group
from evaluation.config import EvalConfig
from evaluation.data import Row, load_mscxr_paper_split, load_rows
from evaluation.skips import group_skips
from evaluation.detection_map import map_metrics, pr_curve
from evaluation.figures import example_picture, pr_figure
from evaluation.postprocess import BoxPostprocess
from preprocessing.box_geometry import cxcywh_to_xyxy
from preprocessing.image_io import decode_png
from preprocessing.progress import Progress, report

log = logging.getLogger(__name__)
_WARNED: set[tuple] = set()
NAMED_SKIPS = 8  # a warning names this many left-out classes at most (a console line, not a list of 41)
SHUFFLE_SEED = 0  # fixed, so every run and every task pairs the same images
SOURCES = {"od_vindr": "vindr_cxr", "od_nih": "nih_cxr", "od_mscxr": "ms_cxr", "sg_mscxr": "ms_cxr", "rc_mscxr": "ms_cxr",
           "rc_cig": "mimic_cxr", "re_mscxr": "ms_cxr", "re_cig": "mimic_cxr", "rg_mimic": "mimic_cxr"}


@dataclass
class TaskResult:
    task: str
    source: str
    split: str
    n: int  # scored samples: images, phrases, boxes or regions
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: search, predict, score, figures
    note: str = ""
    images: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)  # metric -> what its mean leaves out (no truth / negatives)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def derangement(groups: Sequence[str], seed: int = SHUFFLE_SEED) -> np.ndarray:
    """``perm[i]``: the row whose image row ``i`` is shown instead of its own. A permutation without fixed points (two
    rows or more) that pairs no two images of one group (patient) while no group holds more than half the rows: a
    patient's other view would flatter the baseline. Groups in a seeded random order, each group's rows together,
    and every row takes the image ``s`` places on, ``s`` = the largest group's size."""
    n = len(groups)
    if n < 2:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    sizes = Counter(groups)
    rank = dict(zip(sorted(sizes), rng.permutation(len(sizes)).tolist()))
    tie = rng.permutation(n)
    order = sorted(range(n), key=lambda i: (rank[groups[i]], tie[i]))
    shift = min(max(sizes.values()), n - 1)
    perm = np.empty(n, dtype=int)
    perm[order] = np.roll(order, -shift)
    return perm


def image_groups(rows: Sequence[Row]) -> list[str]:
    """The patient of each row (its sample where the source names no patient)."""
    return [str(r.get("patient_id") or r["sample_id"]) for r in rows]


class Evaluation:
    """One evaluation: the data folder, the settings, and the model runner (None for the oracle / random baselines)."""

    def __init__(self, tables: Path, cfg: EvalConfig, runner=None, out: Path | None = None, labeler=None) -> None:
        if cfg.runs_model and runner is None:
            raise ValueError(f"the {cfg.predictor} predictor needs a model")
        self.tables, self.cfg, self.runner, self.out = Path(tables), cfg, runner, out
        self._labeler = labeler
        self._meteor = None
        self._rows: dict[tuple[str, str, bool], list[Row]] = {}
        self._row_notes: dict[tuple[str, str, bool], str] = {}
        self._timings: dict[str, float] = {}
        self._notes: list[str] = []

    def for_predictor(self, predictor: str, postprocess: dict[str, BoxPostprocess] | None = None) -> "Evaluation":
        """The same evaluation (tasks, split, settings) for a baseline predictor, without figures; it shares the loaded
        rows, the labeler and the model rather than loading them again. ``postprocess``: fixed box post-processing
        per task (no search)."""
        cfg = replace(self.cfg, predictor=predictor, baselines=[])
        if postprocess:
            cfg = replace(cfg, search=False, postprocess={**cfg.postprocess, **postprocess})
        other = Evaluation(self.tables, cfg, self.runner, None, self._labeler)
        other._rows, other._row_notes = self._rows, self._row_notes
        return other

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._timings[name] = self._timings.get(name, 0.0) + time.perf_counter() - start

    # ---- shared -------------------------------------------------------------------------------------------
    @property
    def unique_boxes(self) -> bool:
        """Whether identical ground-truth boxes count once (ours) or as given (the paper)."""
        return self.cfg.protocol.gt_boxes == "ours"

    def rows(self, source: str, split: str, frontal: bool = False) -> list[Row]:
        """The rows of a source and split; MS-CXR split as the protocol says (ingested, or mapped from MIMIC-CXR's)."""
        key = (source, split, frontal)
        if key not in self._rows:
            if source == "ms_cxr" and self.cfg.protocol.mscxr_split == "paper":
                self._rows[key], unmapped = load_mscxr_paper_split(self.tables, split, self.cfg.max_images)
                if unmapped:
                    self._row_notes[key] = f"{unmapped} MS-CXR images are not in the MIMIC-CXR tables: they kept their ingested split"
            else:
                self._rows[key] = load_rows(self.tables, source, split, self.cfg.max_images, frontal_only=frontal)
        if key in self._row_notes:
            self._notes.append(self._row_notes[key])
        return self._rows[key]

    def skipped(self, res: TaskResult, skipped: dict[str, list[str]]) -> None:
        """Record what each mean leaves out (results.json, MLflow) and warn, naming each left-out class."""
        res.skipped = skipped
        for names, metrics in group_skips(skipped).items():
            said = (res.task, res.source, res.split, names, tuple(metrics))
            shown = ", ".join(names) if len(names) <= NAMED_SKIPS else (
                f"{', '.join(names[:NAMED_SKIPS - 2])} and {len(names) - NAMED_SKIPS + 2} more (results.json names them)")
            (log.debug if said in _WARNED else log.warning)(
                "%s %s: left out of the mean (no ground truth, or no negatives) on %s/%s: %s", res.task,
                ", ".join(metrics), res.source, res.split, shown)
            _WARNED.add(said)   # once per process: training-time validation repeats the same sets

    @property
    def labeler(self):
        if self._labeler is None:
            from evaluation.chexbert import load_labeler

            self._labeler = load_labeler(self.cfg.labeler)
        return self._labeler

    @property
    def meteor(self):
        if self._meteor is None:
            from evaluation.meteor import MeteorScorer

            self._meteor = MeteorScorer.shared()
        return self._meteor

    def _pick(self, model: Callable, oracle: Callable, chance: Callable):
        return {"model": model, "shuffled": model, "oracle": oracle, "random": chance}[self.cfg.predictor]()

    def seen(self, rows: list[Row]) -> list[Row]:
        """The rows as the model sees them: as they are, or (shuffled) each with another row's image and its own
        boxes, prompts and truth, so the score says how much of the model's answer the image actually drives."""
        if self.cfg.predictor != "shuffled":
            return rows
        if len(rows) < 2:
            self._notes.append("shuffled: a single image, so it was shown its own image")
            return rows
        groups = image_groups(rows)
        perm = derangement(groups)
        if same := sum(groups[i] == groups[j] for i, j in enumerate(perm)):
            self._notes.append(f"shuffled: {same} of {len(rows)} rows were shown another image of their own patient")
        return [{**r, "image_png": rows[j]["image_png"]} for r, j in zip(rows, perm)]

    def _figure_path(self, task: str, name: str) -> Path | None:
        return None if self.out is None else self.out / "figures" / f"{task}_{name}.png"

    def _boot(self, metric: Callable[[np.ndarray], dict[str, float]], n: int, text: bool = False) -> dict[str, dict[str, float]]:
        b = self.cfg.bootstrap
        return bootstrap(metric, n, b.text if text else b.boxes, b.seed)

    def run(self, tasks: list[str] | None = None, on_result: Callable[[TaskResult], None] | None = None) -> dict[str, TaskResult]:
        tasks = tasks or self.cfg.tasks
        if any(t.startswith(("re_", "rg_")) for t in tasks):
            from evaluation.meteor import require_java

            require_java()  # fail before any generation, not after it
            _ = self.labeler, self.meteor
        results = {}
        for task in tasks:
            start = time.perf_counter()
            self._timings, self._notes = {}, []
            label = task if self.cfg.predictor == "model" else f"{task} ({self.cfg.predictor})"
            if self.runner is not None:
                self.runner.task = label
            report(Progress(label, 0, None, "", {"phase": "loading"}))
            res = getattr(self, f"_{task}")(task) if not task.startswith("od_") else self._od(task)
            report(Progress(label, res.n, res.n, "samples", {"seconds": round(time.perf_counter() - start, 1)}, final=True))
            res.note = "; ".join(dict.fromkeys(n for n in (res.note, *self._notes) if n))
            res.seconds = round(time.perf_counter() - start, 2)
            res.timings = {k: round(v, 2) for k, v in self._timings.items()}
            log.info("%s: %d samples, %.1f s", task, res.n, res.seconds)
            results[task] = res
            if on_result is not None:
                on_result(res)
        return results

    def _empty(self, task: str, split: str) -> TaskResult:
        return TaskResult(task, SOURCES[task], split, 0, note=f"no samples in {SOURCES[task]}/{split}")

    # ---- detection and grounding ---------------------------------------------------------------------------
    def _od_raw(self, rows: list[Row], task: od.DetectionTask, true) -> od.RawDetections:
        return self._pick(lambda: od.predict(self.runner, self.seen(rows), task), lambda: od.oracle(true, len(task.classes)),
                          lambda: od.chance(len(rows), len(task.classes)))

    def _od(self, name: str) -> TaskResult:
        task, cfg = od.TASKS[name], self.cfg
        rows = od.scored_rows(self.rows(task.source, cfg.split), task)
        if not rows:
            return self._empty(name, cfg.split)
        pp, settings = cfg.postprocess[name], {}
        if cfg.search and cfg.runs_model:
            val = od.scored_rows(self.rows(task.source, cfg.val_split), task)
            vtrue = od.truth(val, task, self.unique_boxes)
            if any(vtrue):
                with self.phase("search"):
                    pp, trace = od.search(self._od_raw(val, task, vtrue), vtrue, task, pp, cfg.grid.scales, cfg.grid.temperatures,
                                          cfg.grid.detection_nms)
                settings["search"] = {"val_images": len(val), **trace}
            else:
                settings["search"] = f"skipped: no boxes in {task.source}/{cfg.val_split}"
        true = od.truth(rows, task, self.unique_boxes)
        with self.phase("predict"):
            raw = self._od_raw(rows, task, true)
        with self.phase("score"):
            matches = od.matches(raw, true, pp)
            metrics = self._boot(lambda w: map_metrics(matches, task.classes, w), len(rows))
        res = TaskResult(name, task.source, cfg.split, len(rows), metrics, {**settings, "postprocess": asdict(pp)}, images=len(rows))
        self.skipped(res, od.skips(true, task))
        if self.out is not None:
            with self.phase("figures"):
                self._od_figures(res, name, rows, raw, true, pp, matches)
        return res

    def _od_figures(self, res: TaskResult, name: str, rows: list[Row], raw, true, pp, matches) -> None:
        task = od.TASKS[name]
        curves = {c: cur for k, c in enumerate(task.classes) if (cur := pr_curve(matches, k, 0.5)) is not None}
        res.figures.append(str(pr_figure(curves, f"{name}: precision-recall at IoU 0.5", self._figure_path(name, "pr"))))
        samples = od.samples(raw, true, pp)
        for i in range(min(self.cfg.examples, len(rows))):
            s = samples[i]
            best = sorted((c for c in s.pred_boxes if len(s.pred_boxes[c])), key=lambda c: -s.pred_scores[c].max())[:3]
            pred = [(f"{task.classes[c]} {s.pred_scores[c][0]:.2f}", s.pred_boxes[c][0], "") for c in best]
            gt = [(task.classes[c], b, "") for c, bs in true[i].items() for b in bs]
            res.figures.append(str(example_picture(decode_png(rows[i]["image_png"]), pred, gt, self._figure_path(name, f"example{i}"))))

    def _sg_raw(self, rows: list[Row], phrases: list[sg.Phrase]) -> od.RawDetections:
        return self._pick(lambda: sg.predict(self.runner, self.seen(rows), phrases), lambda: sg.oracle(phrases), lambda: sg.chance(phrases))

    def _sg_mscxr(self, name: str) -> TaskResult:
        cfg = self.cfg
        rows = self.rows("ms_cxr", cfg.split)
        phrases = sg.truth(rows, self.unique_boxes)
        if not phrases:
            return self._empty(name, cfg.split)
        pp, settings = cfg.postprocess[name], {}
        if cfg.search and cfg.runs_model:
            val = self.rows("ms_cxr", cfg.val_split)
            vphrases = sg.truth(val, self.unique_boxes)
            if vphrases:
                paper = cfg.protocol.sg_selection == "paper"
                with self.phase("search"):
                    pp, trace = sg.search(self._sg_raw(val, vphrases), vphrases, pp, cfg.grid.scales,
                                          cfg.grid.detection_nms if paper else cfg.grid.grounding_nms, "mAP" if paper else "mIoU")
                settings["search"] = {"val_phrases": len(vphrases), **trace}
            else:
                settings["search"] = f"skipped: no phrases in ms_cxr/{cfg.val_split}"
        with self.phase("predict"):
            raw = self._sg_raw(rows, phrases)
        with self.phase("score"):
            counts, matches = sg.metric_inputs(raw, phrases, pp)
            metric, n_images = per_group(lambda w: sg.metrics(counts, matches, w), np.array([p.row for p in phrases]))
            metrics = self._boot(metric, n_images)  # resamples images: all phrases of an image together
        res = TaskResult(name, "ms_cxr", cfg.split, len(phrases), metrics, {**settings, "postprocess": asdict(pp)}, images=len(rows))
        if self.out is not None:
            with self.phase("figures"):
                self._sg_figures(res, name, rows, phrases, raw, pp)
        return res

    def _sg_figures(self, res: TaskResult, name: str, rows: list[Row], phrases, raw, pp) -> None:
        shown = phrases[: self.cfg.examples]
        for i, (p, b, s) in enumerate(sg.finalized(raw.subset(range(len(shown))), shown, pp)):
            pred = [(f"{s[j]:.2f}", b[j], "") for j in np.argsort(-s)[:2]]
            gt = [("phrase", t, p.text) for t in p.boxes]
            res.figures.append(str(example_picture(decode_png(rows[p.row]["image_png"]), pred, gt, self._figure_path(name, f"example{i}"))))

    # ---- region classification --------------------------------------------------------------------------------
    def _rc_mscxr(self, name: str) -> TaskResult:
        rows = self.rows("ms_cxr", self.cfg.split)
        true = rc.mscxr_truth(rows, self.unique_boxes)
        if not len(true.label):
            return self._empty(name, self.cfg.split)
        c = len(rc.MS_CXR_8)
        with self.phase("predict"):
            probs = self._pick(lambda: rc.mscxr_predict(self.runner, self.seen(rows), true), lambda: rc.multiclass_oracle(true.label, c),
                               lambda: rc.random_probs((len(true.label), c)))
        with self.phase("score"):
            metrics = self._boot(lambda w: rc.mscxr_metrics(probs, true.label, w), len(true.label))
        res = TaskResult(name, "ms_cxr", self.cfg.split, len(true.label), metrics, {"negative_prompt": "centroid of the class prompts"},
                         images=len(set(true.row.tolist())))
        self.skipped(res, rc.mscxr_skips(true.label))
        return res

    def _rc_cig(self, name: str) -> TaskResult:
        rows = [r for r in self.rows("mimic_cxr", self.cfg.split, frontal=True) if r.get("region_boxes")]
        if not rows:
            return self._empty(name, self.cfg.split)
        true = rc.cig_truth(rows)
        with self.phase("predict"):
            probs = self._pick(lambda: rc.cig_predict(self.runner, self.seen(rows), true), lambda: true.targets.astype(float),
                               lambda: rc.random_probs(true.targets.shape))
        with self.phase("score"):
            metrics = self._boot(lambda w: rc.cig_metrics(probs, true, w), len(rows))
        res = TaskResult(name, "mimic_cxr", self.cfg.split, len(rows), metrics,
                         {"positives": int(true.targets.sum()), "regions": int(true.present.sum())}, images=len(rows))
        self.skipped(res, rc.cig_skips(true))
        return res

    # ---- text -------------------------------------------------------------------------------------------
    def _text(self, name: str, rows: list[Row], samples: tx.TextSamples, generate: Callable[[], list[str]],
              split_abnormal: bool = False, grounded: dict[int, list] | None = None) -> TaskResult:
        """``grounded`` (filled by ``generate`` for reports): sample -> its (label, xyxy box, sentence) triples."""
        source = SOURCES[name]
        if not samples.targets:
            return self._empty(name, self.cfg.split)
        with self.phase("predict"):
            texts = self._pick(generate, lambda: list(samples.targets), lambda: tx.shuffled(samples.targets))
        with self.phase("score"):
            scorer = tx.TextScorer(texts, samples, self.labeler, self.meteor, split_abnormal, claims=name == "rg_mimic")
            metrics = self._boot(scorer, scorer.n_groups, text=True)
        settings = {"labeler": self.labeler.name} | ({"report_policy": self.cfg.report_prompt_set} if name == "rg_mimic" else {})
        res = TaskResult(name, source, self.cfg.split, len(samples.targets), metrics, settings,
                         images=len(set(samples.row.tolist())))
        if self.out is not None:
            with self.phase("figures"):
                self._text_figures(res, name, rows, samples, texts, grounded or {})
        return res

    def _text_figures(self, res: TaskResult, name: str, rows: list[Row], samples, texts: list[str], grounded: dict[int, list]) -> None:
        full = np.array([0.0, 0.0, 1.0, 1.0])
        for i in sorted(set(samples.row.tolist()))[: self.cfg.examples]:
            ks = np.flatnonzero(samples.row == i)[:4]
            if len(samples.boxes):
                pred = [(f"{k}", samples.boxes[k], texts[k]) for k in ks]
                gt = [(f"{k}", samples.boxes[k], samples.targets[k]) for k in ks]
            else:
                pred = grounded.get(int(ks[0])) or [("report", full, texts[ks[0]])]
                gt = [("report", full, samples.targets[ks[0]])]
            res.figures.append(str(example_picture(decode_png(rows[i]["image_png"]), pred, gt, self._figure_path(name, f"example{i}"))))

    def _re_mscxr(self, name: str) -> TaskResult:
        rows = self.rows("ms_cxr", self.cfg.split)
        samples = tx.mscxr_truth(rows, self.unique_boxes)
        return self._text(name, rows, samples, lambda: tx.describe(self.runner, self.seen(rows), samples, "MS-CXR boxes"))

    def _re_cig(self, name: str) -> TaskResult:
        rows = self.rows("mimic_cxr", self.cfg.split, frontal=True)
        samples = tx.cig_truth(rows)
        return self._text(name, rows, samples, lambda: tx.describe(self.runner, self.seen(rows), samples, "anatomy regions"), split_abnormal=True)

    def _rg_mimic(self, name: str) -> TaskResult:
        from chex_model.prompts import load_prompt_set

        rows = self.rows("mimic_cxr", self.cfg.split, frontal=True)
        samples = tx.report_truth(rows)
        prompt_set = load_prompt_set(self.cfg.report_prompt_set)
        grounded: dict[int, list] = {}

        def generate() -> list[str]:
            reports = self.runner.reports(self.seen([rows[i] for i in samples.row]), prompt_set)
            for k, rep in enumerate(reports):
                grounded[k] = [(s.query, cxcywh_to_xyxy(np.asarray(s.box)) if s.finding else None, s.sentence) for s in rep.sentences]
                if rep.undetermined:
                    grounded[k].append(("cannot tell", None, ", ".join(rep.undetermined)))
            return [rep.text for rep in reports]

        return self._text(name, rows, samples, generate, grounded=grounded)

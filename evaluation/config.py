"""Typed evaluation settings (YAML under configs/evaluate/)."""
from __future__ import annotations

from dataclasses import dataclass, field

from evaluation.postprocess import BoxPostprocess
from evaluation.protocol import Protocol

ALL_TASKS: tuple[str, ...] = ("od_vindr", "od_nih", "od_mscxr", "sg_mscxr", "rc_mscxr", "rc_cig", "re_mscxr", "re_cig", "rg_mimic")
ALIASES: dict[str, tuple[str, ...]] = {
    "all": ALL_TASKS, "od": ALL_TASKS[:3], "sg": ("sg_mscxr",), "rc": ("rc_mscxr", "rc_cig"), "re": ("re_mscxr", "re_cig"),
    "rg": ("rg_mimic",),
}
PREDICTORS = ("model", "oracle", "random", "shuffled")
MODEL_PREDICTORS = ("model", "shuffled")  # the predictors that run the model
BASELINES = ("random", "oracle", "shuffled")


@dataclass
class SearchGrid:
    """The reference's validation search grid (chex-reference §5); ``grounding_nms`` is the NMS grid of our
    mIoU selection for grounding (the paper's selection tries ``detection_nms``)."""

    scales: list[float] = field(default_factory=lambda: [0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 2.0])
    temperatures: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45])
    detection_nms: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.25, 0.5])
    grounding_nms: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5])


@dataclass
class Bootstrap:
    boxes: int = 250  # detection, grounding, classification
    text: int = 10  # METEOR and clinical efficacy
    seed: int = 2147483647


def _default_postprocess() -> dict[str, BoxPostprocess]:
    return {
        "od_vindr": BoxPostprocess(mode="both", temperature=0.5, nms=0.25),
        "od_nih": BoxPostprocess(mode="prompts", temperature=0.1, fusion="top1"),
        "od_mscxr": BoxPostprocess(mode="prompts", temperature=0.1, nms=0.25),
        "sg_mscxr": BoxPostprocess(mode="weights", nms=0.25),
    }


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS))
    split: str = "test"
    val_split: str = "val"  # the post-processing search runs here; skipped (defaults kept) when it is empty
    search: bool = True
    # model | oracle (ground truth: the ceiling) | random (chance) | shuffled (the model's answer for another image)
    predictor: str = "model"
    baselines: list[str] = field(default_factory=list)  # scored beside a model run, on the same tasks: random, oracle, shuffled
    max_images: int = 0  # per task and split; 0 = all
    batch_size: int = 16
    max_new_tokens: int = 128
    labeler: str = "rules"  # "rules" or "chexbert:<checkpoint>[,<bert dir>]"
    report_prompt_set: str = "report"
    examples: int = 3  # example pictures per task
    bootstrap: Bootstrap = field(default_factory=Bootstrap)
    grid: SearchGrid = field(default_factory=SearchGrid)
    postprocess: dict[str, BoxPostprocess] = field(default_factory=_default_postprocess)
    protocol: Protocol = field(default_factory=Protocol)  # paper or ours per item (evaluation/protocol.py)

    def __post_init__(self) -> None:
        from chex_model.typed_config import ConfigError

        if isinstance(self.protocol, str):
            self.protocol = Protocol.preset(self.protocol)

        tasks: list[str] = []
        for t in self.tasks:
            for name in ALIASES.get(t, (t,)):
                if name not in ALL_TASKS:
                    raise ConfigError(f"unknown task {t!r}; tasks: {', '.join(ALL_TASKS)} or groups {', '.join(ALIASES)}")
                if name not in tasks:
                    tasks.append(name)
        self.tasks = tasks
        if self.predictor not in PREDICTORS:
            raise ConfigError(f"predictor {self.predictor!r} is not one of {', '.join(PREDICTORS)}")
        for b in self.baselines:
            if b not in BASELINES:
                raise ConfigError(f"baseline {b!r} is not one of {', '.join(BASELINES)}")
        self.baselines = list(dict.fromkeys(self.baselines))
        if self.labeler != "rules" and not self.labeler.startswith("chexbert:"):
            raise ConfigError(f"labeler {self.labeler!r} is not 'rules' or 'chexbert:<checkpoint>[,<bert dir>]'")
        defaults = _default_postprocess()
        self.postprocess = {**defaults, **self.postprocess}
        from chex_model.prompts import load_prompt_set

        load_prompt_set(self.report_prompt_set)  # a ConfigError now, not after hours of training

    @property
    def runs_model(self) -> bool:
        """Whether the predictor needs the model runner (and so the validation search)."""
        return self.predictor in MODEL_PREDICTORS

    def preflight(self) -> None:
        """What the text tasks need before any work starts: Java for METEOR, the labeler's local files."""
        if any(t.startswith(("re_", "rg_")) for t in self.tasks):
            from evaluation.chexbert import check_labeler
            from evaluation.meteor import require_java

            require_java()
            check_labeler(self.labeler)

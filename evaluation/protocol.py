"""Where the paper's evaluation protocol and ours differ: one setting per item, "paper" (computed as the reference's
code computes it, chex-reference.md §5) or "ours" (this project's choice), so a reader of the results knows which
numbers sit next to the paper's Table 2 (docs/metrics.md defines every metric and item)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

CHOICES = ("paper", "ours")
# How each item is computed under each choice (what results.json and MLflow record beside the choice).
MEANING: dict[str, dict[str, str]] = {
    "sg_selection": {"paper": "box scale, then NMS IoU in {0.05, 0.1, 0.25, 0.5}, chosen on val by mAP; a tie keeps the later option",
                     "ours": "box scale, then NMS IoU in grid.grounding_nms, chosen on val by mIoU; a tie keeps the first option"},
    "gt_boxes": {"paper": "ground-truth boxes as given, duplicates included",
                 "ours": "identical ground-truth boxes of one class (OD) or phrase (SG, RC, RE) counted once"},
    "mscxr_split": {"paper": "MS-CXR split from MIMIC-CXR's: train -> val, validate and test -> test",
                    "ours": "MS-CXR split as ingested (v1.1.0's official column)"},
}
# Items that are not settings: the paper's definition under the paper's name, ours under its own name.
FIXED: dict[str, str] = {
    "accuracy": "paper: rc_mscxr accuracy = macro accuracy (mean per-class recall); ours beside it: accuracy_micro",
    "ex_f1_14": "paper: mean F1 over examples with tp > 0; ours beside it: ex_f1_14_strict (tp = 0 examples count 0)",
    "bootstrap": "paper: torch Generator seeded, torch.randint(b, (b,)) per resample, std ddof 0; SG resamples images",
    "edge_conventions": "ours: a class without ground truth or without negatives is left out of a mean (named in skipped)",
}


@dataclass
class Protocol:
    """The items of the evaluation protocol that are settings; each "paper" or "ours" (the default: the demo's)."""

    sg_selection: str = "ours"
    gt_boxes: str = "ours"
    mscxr_split: str = "ours"

    def __post_init__(self) -> None:
        from chex_model.typed_config import ConfigError

        for f in fields(self):
            if getattr(self, f.name) not in CHOICES:
                raise ConfigError(f"protocol.{f.name}: {getattr(self, f.name)!r} is not 'paper' or 'ours'")

    @classmethod
    def preset(cls, name: str) -> "Protocol":
        """Every item "paper" or every item "ours" (a config may write ``protocol: paper``)."""
        from chex_model.typed_config import ConfigError

        if name not in CHOICES:
            raise ConfigError(f"protocol: {name!r} is not 'paper', 'ours' or a mapping of items")
        return cls(**{f.name: name for f in fields(cls)})

    @property
    def name(self) -> str:
        """"paper" or "ours" when every item agrees, else "mixed: ours for <items>"."""
        ours = [k for k, v in asdict(self).items() if v == "ours"]
        if len(ours) in (0, len(fields(self))):
            return "ours" if ours else "paper"
        return f"mixed: ours for {', '.join(ours)}"

    def describe(self) -> dict[str, str]:
        """Per item its choice and what it means, the fixed items included (for results.json and the table)."""
        out = {k: f"{v}: {MEANING[k][v]}" for k, v in asdict(self).items()}
        return {**out, **FIXED}

    def tags(self) -> dict[str, str]:
        """MLflow tags: ``protocol`` (the summary) and ``protocol.<item>`` = paper | ours."""
        fixed = {f"protocol.{k}": v.split(":", 1)[0] for k, v in FIXED.items()}
        return {"protocol": self.name, **{f"protocol.{k}": v for k, v in asdict(self).items()}, **fixed}

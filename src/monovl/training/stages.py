"""EViP stage presets: which parameters train in each stage (delta tuning), as named objects.

    >>> from monovl.training.stages import get_stage
    >>> print(get_stage("s1.1", "v1").describe())

Reference section 9.5: in s1.1/s1.2 only the patch embedding, `mlp1` and the visual experts learn
(v1.5 adds the visual attention experts) while everything of the pretrained LLM stays frozen, so
text-only outputs cannot change. s1.3 also unfreezes the text attention projections; s2 trains all.
New special-token embedding rows (`<img>`, `</img>`, ...) may train in s1.x; the original rows stay
frozen, enforced by zeroing their gradients (and no weight decay on embeddings).
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

VISION = ("vision_model.*", "mlp1.*")
VISUAL_FFN = ("language_model.model.layers.*.feed_forward_ve.*",)
VISUAL_ATTENTION = ("language_model.model.layers.*.attention.wqkv_ve.*",
                    "language_model.model.layers.*.attention.wo_ve.*")
TEXT_ATTENTION = ("language_model.model.layers.*.attention.wqkv.*",
                  "language_model.model.layers.*.attention.wo.*")
EMBEDDINGS = "language_model.model.tok_embeddings.weight"
DEAD_CLS = "vision_model.embeddings.class_embedding"


@dataclass(frozen=True)
class StagePreset:
    name: str
    description: str
    trainable: tuple[str, ...]  # fnmatch globs over parameter names
    new_token_rows: bool = False  # also train the embedding rows of added special tokens

    def matches(self, param_name: str) -> bool:
        return any(fnmatch.fnmatchcase(param_name, g) for g in self.trainable)

    def describe(self) -> str:
        rows = " + new special-token embedding rows" if self.new_token_rows else ""
        return f"{self.name}: {self.description}\n  trainable: {', '.join(self.trainable)}{rows}"


def _presets(version: str) -> dict[str, StagePreset]:
    visual = VISION + VISUAL_FFN + (VISUAL_ATTENTION if version == "v1.5" else ())
    return {
        "s1.1": StagePreset("s1.1", "concept learning on noisy image-text pairs; the LLM is frozen",
                            visual, new_token_rows=True),
        "s1.2": StagePreset("s1.2", "semantic learning on clean captions; the LLM is frozen",
                            visual, new_token_rows=True),
        "s1.3": StagePreset("s1.3", "alignment learning on task data; text attention unfrozen too",
                            visual + TEXT_ATTENTION, new_token_rows=True),
        "s2": StagePreset("s2", "instruction tuning; every parameter trains", ("*",)),
    }


STAGE_NAMES = ("s1.1", "s1.2", "s1.3", "s2")


def get_stage(name: str, version: str = "v1", trainable: list[str] | None = None) -> StagePreset:
    """The preset for `name` and model version ("v1" or "v1.5"); `trainable` globs replace its list."""
    presets = _presets(version)
    if name not in presets:
        if trainable is None:
            raise ValueError(f"unknown stage {name!r}; choose from {list(STAGE_NAMES)} or pass trainable globs")
        return StagePreset(name, "custom", tuple(trainable))
    preset = presets[name]
    if trainable is not None:
        # The purpose stays; what the preset says about its trainable set would now be wrong.
        purpose = preset.description.split(";")[0]
        return StagePreset(preset.name, purpose + "; custom trainable list", tuple(trainable),
                           preset.new_token_rows)
    return preset


def apply_stage(model: nn.Module, stage: StagePreset) -> list[str]:
    """Set requires_grad from the preset; return the trainable parameter names. Fails on a glob that
    matches nothing, since a typo there would silently freeze what the user meant to train."""
    names = [n for n, _ in model.named_parameters()]
    for g in stage.trainable:
        if not any(fnmatch.fnmatchcase(n, g) for n in names):
            raise ValueError(f"trainable pattern {g!r} matches no parameter of this model")
    # With tied embeddings the new rows are also rows of the output head: training them would change
    # the logits of text-only inputs, so tied models keep them frozen outside s2.
    cfg = getattr(model, "config", None)
    rows = stage.new_token_rows and not (cfg is not None and cfg.llm.tie_word_embeddings)
    trainable = []
    for n, p in model.named_parameters():
        # The CLS embedding never reaches the output (reference 1.2): it would get no gradient and
        # no optimizer state, so it is never trainable.
        p.requires_grad_(n != DEAD_CLS and (stage.matches(n) or (rows and n == EMBEDDINGS)))
        if p.requires_grad:
            trainable.append(n)
    return trainable


def parameter_group(name: str) -> str:
    """The group a parameter belongs to, for the summary table and the per-group gradient norms."""
    if name.startswith("vision_model"):
        return "patch embedding"
    if name.startswith("mlp1"):
        return "mlp1 projector"
    if "_ve." in name:
        return "visual attention experts" if ".attention." in name else "visual FFN experts"
    if ".attention." in name:
        return "text attention"
    if "feed_forward." in name:
        return "text FFN"
    if "tok_embeddings" in name:
        return "token embeddings"
    if name.startswith("language_model.output"):
        return "output head"
    return "norms"


def parameter_summary(model: nn.Module, new_rows: int = 0) -> str:
    """A table of trainable vs frozen parameters by group, printed before training starts."""
    groups: OrderedDict[str, list[int]] = OrderedDict()
    seen: set[int] = set()
    for n, p in model.named_parameters():
        if id(p) in seen:  # tied weights count once
            continue
        seen.add(id(p))
        g = groups.setdefault(parameter_group(n), [0, 0])
        if p.requires_grad and n == EMBEDDINGS and new_rows:
            row = p.shape[1]
            g[0] += new_rows * row
            g[1] += p.numel() - new_rows * row
        else:
            g[0 if p.requires_grad else 1] += p.numel()
    lines = [f"{'group':<26}{'trainable':>14}{'frozen':>14}"]
    for name, (t, f) in groups.items():
        lines.append(f"{name:<26}{t:>14,}{f:>14,}")
    tt, ff = sum(v[0] for v in groups.values()), sum(v[1] for v in groups.values())
    lines.append(f"{'total':<26}{tt:>14,}{ff:>14,}   ({100 * tt / max(tt + ff, 1):.1f}% trainable)")
    return "\n".join(lines)

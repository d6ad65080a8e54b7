"""Is the model learning to *see*? Numbers that tell, logged next to the loss during training.

A falling loss is no proof of vision: a frozen LLM lowers it fast by learning the answer prior of
each question (issue 13: loss 2.3 -> 0.7 in 10 steps while the answers ignored the image). These
statistics separate the two, on one fixed probe batch (the run's first batch), every
`TrainConfig.diag_every` steps:

* ``grad_norm/<group>``: L2 norm of the gradient of each parameter group (before clipping), the
  groups of :func:`monovl.training.stages.parameter_group`.
* ``img_norm`` / ``text_norm``: mean L2 norm of the image-token embeddings (the `mlp1` output that
  enters the decoder) and of the text-token embeddings of the same batch.
* ``img_token_spread``: RMS distance of the image tokens from their mean, over ``img_norm``: near 0
  means every image token is the same vector, so after the first RMSNorm the decoder sees no
  picture (the collapse of issue 13 had ``img_norm`` 1135 against 2.8 for text, spread < 1%).
* ``img_image_spread``: the same for the per-image mean embedding (do different images differ?).
* ``attn_to_image``: attention mass that the supervised (answer) positions put on image tokens,
  averaged over heads and layers (``attn_to_image_max``: the layer with the most).
* ``swap_tv``: mean total-variation distance between the distributions of the first token of each
  answer with each sample's own image and with another sample's image (the batch's images rolled
  by one). 0 means the answers do not depend on the image; a model that reads the image scores
  about the share of neighbouring samples whose answers differ. ``swap_target_dlogp`` is the mean
  drop in log-probability of the reference first token when the image is swapped. (Later answer
  tokens and the end-of-turn token mostly follow from the first, so they would only dilute it.)

Cost: two no-grad forward passes of the probe batch (about 2/3 of one training step) per call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from ..data.packing import supervised_positions
from .stages import parameter_group


def gradient_norms(model: torch.nn.Module) -> dict[str, float]:
    """``{"grad_norm/<group>": norm}`` over the parameters that have a gradient (call before clipping)."""
    sums: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        g = p.grad
        if hasattr(g, "full_tensor"):  # DTensor under FSDP2
            g = g.full_tensor()
        key = "grad_norm/" + parameter_group(name)
        sums[key] = sums.get(key, 0.0) + float(g.float().pow(2).sum())
    return {k: v**0.5 for k, v in sums.items()}


class _Capture:
    """Forward hooks on the embedding table and `mlp1`, and attention probes on every layer."""

    def __init__(self, model: torch.nn.Module, queries: tuple[torch.Tensor, torch.Tensor], image_keys: torch.Tensor):
        self.text: torch.Tensor | None = None
        self.image: torch.Tensor | None = None
        self.mass: list[float] = []
        self.queries, self.image_keys = queries, image_keys
        self.handles = [
            model.language_model.model.tok_embeddings.register_forward_hook(self._text),
            model.mlp1.register_forward_hook(self._image),
        ]
        self.attentions = [layer.attention for layer in model.language_model.model.layers]
        for att in self.attentions:
            att.attention_probe = self._attention

    def _text(self, module, args, out):
        self.text = out.detach()

    def _image(self, module, args, out):
        self.image = out.detach()

    def _attention(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> None:
        # q [B, heads, T, d], k [B, kv heads, S, d]; probabilities only at the answer positions, so
        # the [T, S] score matrix is never built for the whole sequence.
        b_idx, t_idx = self.queries
        groups = q.shape[1] // k.shape[1]
        qs = q[b_idx, :, t_idx].float()  # [N, heads, d]
        ks = k[b_idx].float().repeat_interleave(groups, dim=1)  # [N, heads, S, d]
        scores = torch.einsum("nhd,nhsd->nhs", qs, ks) / q.shape[-1] ** 0.5
        s = k.shape[2]
        if mask is not None:
            allowed = mask[b_idx, 0, t_idx] if mask.shape[0] > 1 else mask[0, 0, t_idx]
        else:
            allowed = torch.arange(s, device=q.device)[None, :] <= t_idx[:, None]
        scores = scores.masked_fill(~allowed[:, None, :], float("-inf"))
        probs = scores.softmax(-1)
        self.mass.append(float((probs * self.image_keys[b_idx][:, None, :]).sum(-1).mean()))

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        for att in self.attentions:
            att.attention_probe = None


def _rolled_images(batch: dict, image_token_id: int) -> torch.Tensor | None:
    """The batch's tiles with every sample's image replaced by the next sample's, or None when the
    samples hold different tile counts (then no swap fits the token layout)."""
    pixels = batch.get("pixel_values")
    if pixels is None or batch["input_ids"].shape[0] < 2:
        return None
    slots = (batch["input_ids"] == image_token_id).sum(1)
    if slots.min() == 0 or slots.min() != slots.max():
        return None
    per_sample = pixels.shape[0] // batch["input_ids"].shape[0]
    return pixels.roll(per_sample, dims=0)


@torch.no_grad()
def vision_probe(model: torch.nn.Module, batch: dict, device: torch.device, image_token_id: int,
                 autocast=None, agree: Callable[[bool], bool] | None = None) -> dict[str, float]:
    """The statistics of the module docstring for one batch (empty when the batch has no image).

    `agree(flag)` is True only when `flag` holds on every process (sharded training): each forward
    is a collective under FSDP2, so every rank must make the same passes, whatever its own batch.
    """
    from contextlib import nullcontext

    autocast = autocast if autocast is not None else nullcontext()
    agree = agree if agree is not None else bool
    ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)
    pixels = batch.get("pixel_values")
    if not agree(pixels is not None and bool((ids == image_token_id).any())):
        return {}
    keep, targets = supervised_positions(labels)
    kwargs = {k: batch[k].to(device) for k in ("attention_mask", "position_ids", "segment_ids")
              if batch.get(k) is not None}
    image_keys = (ids == image_token_id).float()
    was_training = model.training
    model.eval()
    capture = _Capture(model, keep.nonzero(as_tuple=True), image_keys)
    try:
        with autocast:
            logits = model(ids, pixels.to(device), image_token_id, logits_to_keep=keep, **kwargs).logits.float()
    finally:
        capture.close()
    stats: dict[str, float] = {}
    img, txt = capture.image.float().reshape(-1, capture.image.shape[-1]), capture.text.float()
    real = kwargs["attention_mask"].bool() if "attention_mask" in kwargs else torch.ones_like(ids, dtype=torch.bool)
    txt = txt[real & (ids != image_token_id)]
    img_norm = float(img.norm(dim=-1).mean())
    stats["img_norm"] = img_norm
    stats["text_norm"] = float(txt.norm(dim=-1).mean())
    stats["img_token_spread"] = float((img - img.mean(0)).pow(2).sum(-1).mean().sqrt()) / max(img_norm, 1e-12)
    per_image = img.reshape(pixels.shape[0], -1, img.shape[-1]).mean(1)
    if per_image.shape[0] > 1:
        stats["img_image_spread"] = float((per_image - per_image.mean(0)).pow(2).sum(-1).mean().sqrt()) / max(img_norm, 1e-12)
    if capture.mass:
        stats["attn_to_image"] = sum(capture.mass) / len(capture.mass)
        stats["attn_to_image_max"] = max(capture.mass)
    rolled = _rolled_images(batch, image_token_id)
    if agree(rolled is not None):
        with autocast:
            swapped = model(ids, rolled.to(device), image_token_id, logits_to_keep=keep, **kwargs).logits.float()
        # keep is True at positions whose next token is supervised; an answer starts where the
        # previous position was not. `first` indexes the rows of the [N, V] logits.
        starts = keep.clone()
        starts[:, 1:] &= ~keep[:, :-1]
        first = starts[keep]
        p, q = logits[first].softmax(-1), swapped[first].softmax(-1)
        stats["swap_tv"] = float(0.5 * (p - q).abs().sum(-1).mean())
        lp = logits[first].log_softmax(-1).gather(1, targets[first][:, None])
        lq = swapped[first].log_softmax(-1).gather(1, targets[first][:, None])
        stats["swap_target_dlogp"] = float((lp - lq).mean())
    model.train(was_training)
    return stats


def plot_diagnostics(metrics: Path, png: Path) -> None:
    """`vision.png`: gradient norms per group, embedding scales, attention to image, swap sensitivity."""
    if not metrics.exists():
        return
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    diag = [r for r in rows if "img_norm" in r]
    grads = [r for r in rows if any(k.startswith("grad_norm/") for k in r)]
    if not diag and not grads:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), dpi=100)
    ax = axes[0, 0]
    for key in sorted({k for r in grads for k in r if k.startswith("grad_norm/")}):
        pts = [(r["step"], r[key]) for r in grads if r.get(key)]
        if pts:
            ax.plot(*zip(*pts), lw=1, label=key.split("/", 1)[1])
    ax.set_yscale("log")
    ax.set_title("gradient norm per group")
    ax.legend(fontsize=7)
    steps = [r["step"] for r in diag]
    ax = axes[0, 1]
    if diag:
        ax.plot(steps, [r["img_norm"] for r in diag], label="image-token norm")
        ax.plot(steps, [r["text_norm"] for r in diag], label="text-token norm")
        ax.set_yscale("log")
        ax2 = ax.twinx()
        ax2.plot(steps, [r["img_token_spread"] for r in diag], "--", color="C2", label="token spread / norm")
        if all("img_image_spread" in r for r in diag):
            ax2.plot(steps, [r["img_image_spread"] for r in diag], "--", color="C3", label="image spread / norm")
        ax2.set_ylim(0, None)
        ax.legend(fontsize=7, loc="upper left")
        ax2.legend(fontsize=7, loc="upper right")
    ax.set_title("image vs text embeddings")
    ax = axes[1, 0]
    if any("attn_to_image" in r for r in diag):
        ax.plot(steps, [r.get("attn_to_image", float("nan")) for r in diag], label="mean over layers")
        ax.plot(steps, [r.get("attn_to_image_max", float("nan")) for r in diag], label="max layer")
        ax.legend(fontsize=7)
    ax.set_title("attention of answer tokens on image tokens")
    ax = axes[1, 1]
    if any("swap_tv" in r for r in diag):
        ax.plot(steps, [r.get("swap_tv", float("nan")) for r in diag])
        ax.set_ylim(0, 1)
    ax.set_title("answer change when the image is swapped (TV)")
    for a in axes.flat:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.suptitle(png.parent.name)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)

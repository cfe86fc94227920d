"""What makes our models TransformerLens-native (issue 16): the logits convention, a
TransformerLens-style config, ``run_with_cache`` returning TransformerLens's ``ActivationCache``,
and the model surface its methods read (``W_U``, ``tokens_to_residual_directions``, ...).

**Logits.** As TransformerLens (Nanda & Bloom, "TransformerLens", 2022): a token model returns
``logits [batch, pos, d_vocab_out]`` with ``d_vocab_out = task.n_classes``, so ``logits[:, -1]``
are the class logits. The ``transformer`` (Nanda, Chan, Lieberum, Smith, Steinhardt 2023) returns
every position, or only the last (``[batch, 1, d_vocab_out]``) with ``last_position_only = True``
(the trainer's setting). ``embed_mlp`` (Minegishi et al. 2024) reads the two operand tokens and
answers at one position: ``[batch, 1, d_vocab_out]``. The vector-input ``mlp`` (Liu et al. 2023)
has no positions: ``[batch, n_classes]``. :func:`class_logits` gives ``[batch, n_classes]`` for
all three; everything in grokinterp that needs class logits goes through it.

``forward(x, return_type=...)``: ``"logits"`` (default), ``None`` (nothing; for
``run_with_cache``), ``"loss"`` or ``"both"`` (``(logits, loss)``). A classification model's
targets are not in its input (TransformerLens's ``"loss"`` is next-token prediction on the input
itself), so ``"loss"``/``"both"`` need ``labels [batch]`` (class indices) and give the mean
cross-entropy of the class logits; without ``labels`` they raise a :class:`GrokinterpError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule

from grokinterp.config import GrokinterpError, ModelConfig

RETURN_TYPES = ("logits", None, "loss", "both")


@dataclass
class HookedConfig(ModelConfig):
    """A :class:`~grokinterp.config.ModelConfig` that also answers to TransformerLens's config
    names (``model.cfg`` of every grokinterp model), which ``ActivationCache`` and TL users read:
    ``n_layers``, ``d_model``, ``n_heads``, ``d_head``, ``d_mlp``, ``act_fn`` (shared),
    ``d_vocab`` (input vocabulary; -1 for vector inputs), ``d_vocab_out`` (classes), ``n_ctx``
    (sequence length; None for vector inputs), ``normalization_type``, ``attn_only``,
    ``final_rms``, ``positional_embedding_type``."""

    d_vocab: int = -1
    d_vocab_out: int = -1
    n_ctx: int | None = None

    @classmethod
    def of(cls, cfg: ModelConfig, task: Any) -> HookedConfig:
        tokens = task.input_kind == "tokens"
        return cls(
            **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelConfig)},
            d_vocab=task.vocab_size if tokens else -1,
            d_vocab_out=task.n_classes,
            n_ctx=task.x_train.shape[1] if tokens else None,
        )

    @property
    def normalization_type(self) -> str | None:
        return "LN" if self.normalization == "LN" else None

    @property
    def attn_only(self) -> bool:
        return False

    @property
    def final_rms(self) -> bool:
        return False

    @property
    def positional_embedding_type(self) -> str:
        return "standard"


def class_logits(model: nn.Module, x: Tensor, fwd_hooks: Sequence[tuple[Any, Any]] = ()) -> Tensor:
    """Class logits ``[batch, n_classes]`` of ``model`` on ``x``: the last position of a token
    model's ``[batch, pos, d_vocab_out]`` (TransformerLens's ``logits[:, -1]``), a vector
    model's output as it is. With ``fwd_hooks`` the forward runs under ``run_with_hooks``.

    Works inside ``torch.func.vmap`` / ``functional_call`` and on a ``TransformerBridge``."""
    out = model.run_with_hooks(x, fwd_hooks=list(fwd_hooks)) if fwd_hooks else model(x)
    return out[:, -1] if out.ndim == 3 else out


def model_output(logits: Tensor, return_type: str | None, labels: Tensor | None) -> Any:
    """What ``forward(..., return_type, labels)`` returns, from the full ``logits``."""
    if return_type == "logits":
        return logits
    if return_type is None:
        return None
    if return_type not in ("loss", "both"):
        raise GrokinterpError(
            f"return_type={return_type!r} is not valid; allowed: 'logits', None, 'loss', 'both'"
        )
    if labels is None:
        raise GrokinterpError(
            f"return_type={return_type!r} needs labels=[batch] class indices: a classification "
            "task's targets are not in its input tokens"
        )
    last = logits[:, -1] if logits.ndim == 3 else logits
    loss = F.cross_entropy(last, labels.to(last.device))
    return loss if return_type == "loss" else (logits, loss)


class HookedModel(HookedRootModule):
    """A ``HookedRootModule`` whose ``run_with_cache`` returns TransformerLens's
    ``ActivationCache`` (``cache["post", 0]``, ``cache.decompose_resid()``, ...), with the
    unembedding surface that the cache's logit methods read."""

    cfg: HookedConfig
    unembed: nn.Module

    def run_with_cache(
        self, *model_args: Any, return_cache_object: bool = True, **kwargs: Any
    ) -> tuple[Any, ActivationCache | dict[str, Tensor]]:
        """``(output, cache)`` as TransformerLens: ``cache`` an ``ActivationCache`` over this
        model (a plain dict with ``return_cache_object=False``). Keyword arguments are those of
        ``HookedRootModule.run_with_cache`` (``names_filter``, ``remove_batch_dim``, ...) and of
        ``forward`` (``return_type``, ``labels``)."""
        out, cache = super().run_with_cache(*model_args, **kwargs)
        if not return_cache_object:
            return out, cache
        return out, ActivationCache(cache, self, has_batch_dim=not kwargs.get("remove_batch_dim"))

    # ---- unembedding, as TransformerLens's models expose it (output_scale folded in)
    @property
    def W_U(self) -> Tensor:
        """``[d_in, d_vocab_out]``: logits are ``x @ W_U + b_U`` (``output_scale`` folded in)."""
        u = self.unembed
        return u.W_U if u.output_scale == 1.0 else u.W_U * u.output_scale

    @property
    def b_U(self) -> Tensor:
        """``[d_vocab_out]`` (zeros for a model without a logit bias)."""
        u = self.unembed
        if u.b_U is None:
            return torch.zeros(u.W_U.shape[1], dtype=u.W_U.dtype, device=u.W_U.device)
        return u.b_U if u.output_scale == 1.0 else u.b_U * u.output_scale

    def to_single_token(self, token: int | str | Tensor) -> int:
        """A class index as an int (our models have no tokenizer: strings of digits only)."""
        if isinstance(token, Tensor) and token.numel() == 1:
            token = int(token.item())
        if isinstance(token, str) and token.strip().isdigit():
            token = int(token)
        if not isinstance(token, int) or not 0 <= token < self.cfg.d_vocab_out:
            raise GrokinterpError(
                f"a class must be an index in [0, {self.cfg.d_vocab_out}); got {token!r} "
                "(grokinterp models have no tokenizer)"
            )
        return token

    def tokens_to_residual_directions(self, tokens: int | str | Tensor) -> Tensor:
        """``W_U[:, tokens]`` with the class axis moved first (``[..., d_model]``), as
        TransformerLens: the residual direction whose dot product is the class's logit (minus
        ``b_U``; LayerNorm not folded, as in TransformerLens without ``fold_ln``)."""
        if isinstance(tokens, Tensor) and tokens.numel() > 1:
            return self.W_U[:, tokens.to(self.W_U.device)].movedim(0, -1)
        return self.W_U[:, self.to_single_token(tokens)]

    def to_tokens(self, tokens: Tensor | Sequence[Sequence[int]]) -> Tensor:
        """Token ids ``[batch, pos]`` as a LongTensor (no tokenizer: ids pass through)."""
        t = torch.as_tensor(tokens, dtype=torch.long, device=self.W_U.device)
        return t if t.ndim == 2 else t.reshape(1, -1)


__all__ = ["RETURN_TYPES", "HookedConfig", "HookedModel", "class_logits", "model_output"]

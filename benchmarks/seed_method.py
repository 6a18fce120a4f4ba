"""The original Harmony-Image method, written plainly: the oracle for tests, the baseline for
benchmarks. Needs scikit-image (dev extra), which cannot ship in the Lambda layer.

Per query and for every catalog image: decode, resize both to 256x256, convert to gray,
SSIM (scikit-image defaults) and ORB matches (cross-checked Hamming brute force) over the
query's keypoints, averaged; rank; drop repeated URLs; keep the top k.
"""

from __future__ import annotations

import hashlib
from typing import Any

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from harmony_image.decode import decode_image


def prepare(data: bytes) -> np.ndarray:
    image = decode_image(data)
    return cv2.cvtColor(cv2.resize(image, (256, 256)), cv2.COLOR_BGR2GRAY)


def ssim(query_gray: np.ndarray, catalog_gray: np.ndarray) -> float:
    """scikit-image's SSIM with its defaults, as the seed calls it."""
    return float(structural_similarity(query_gray, catalog_gray))


def compare(query_gray: np.ndarray, catalog_gray: np.ndarray) -> tuple[float, float, float]:
    """(score, ssim, orb) exactly as the seed computes them."""
    ssim_value = ssim(query_gray, catalog_gray)
    orb = cv2.ORB.create()
    kp1, des1 = orb.detectAndCompute(query_gray, None)
    _kp2, des2 = orb.detectAndCompute(catalog_gray, None)
    if des1 is None or des2 is None or len(kp1) == 0:
        orb_score = 0.0
    else:
        matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(des1, des2)
        orb_score = len(matches) / len(kp1)
    return (ssim_value + orb_score) / 2.0, ssim_value, orb_score


def search(query: bytes, catalog: list[tuple[str, str, bytes]], k: int = 5) -> list[dict[str, Any]]:
    """``catalog`` is (key, url, bytes) triples; returns the top ``k`` distinct URLs.

    Unlike the original, duplicates are dropped before the cut (the original cut first and
    could return fewer than ``k``), and images with identical bytes count as one.
    """
    q = prepare(query)
    scored: list[dict[str, Any]] = []
    for key, url, data in catalog:
        score, ssim, orb = compare(q, prepare(data))
        sha = hashlib.sha256(data).hexdigest()
        scored.append({"key": key, "url": url, "score": score, "ssim": ssim, "orb": orb, "sha256": sha})
    scored.sort(key=lambda r: (-r["score"], r["key"]))
    results, urls, hashes = [], set(), set()
    for r in scored:
        if r["url"] in urls or r["sha256"] in hashes:
            continue
        urls.add(r["url"])
        hashes.add(r["sha256"])
        results.append(r)
        if len(results) == k:
            break
    return results

"""Independent oracle for the loss curves' smoothing: the bias-corrected EMA over finite losses."""

from __future__ import annotations

import math
from typing import List, Sequence


def bias_corrected_ema(loss: Sequence[float], b: float) -> List[float]:
    r""":math:`m_k = b\,m_{k-1} + (1 - b)\,\ell_k`, :math:`\hat m_k = m_k / (1 - b^k)`, with ``k``
    counting only the finite losses; a non-finite loss gives a gap (NaN) and leaves ``m`` and ``k``."""
    m, k, out = 0.0, 0, []
    for v in loss:
        if math.isfinite(v):
            k += 1
            m = b * m + (1 - b) * v
            out.append(m / (1 - b**k))
        else:
            out.append(float("nan"))
    return out

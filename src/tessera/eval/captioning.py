"""Caption quality against one reference per image: exact match, BLEU-4 and token-level F1.

Texts are compared as lists of whitespace words after lowercasing and
separating punctuation (the same tokenisation for candidates and references).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lowercased words and punctuation marks."""
    return _WORD.findall(text.lower())


def exact_match(candidates: Sequence[str], references: Sequence[str]) -> float:
    """Share of candidates whose words equal the reference's."""
    _check(candidates, references)
    return sum(words(c) == words(r) for c, r in zip(candidates, references)) / max(len(candidates), 1)


def token_f1(candidates: Sequence[str], references: Sequence[str]) -> float:
    """Mean over pairs of the F1 of word bags (SQuAD's token F1)."""
    _check(candidates, references)
    total = 0.0
    for c, r in zip(candidates, references):
        cw, rw = words(c), words(r)
        common = sum((Counter(cw) & Counter(rw)).values())
        if not cw or not rw:
            total += float(cw == rw)
        elif common:
            p, rec = common / len(cw), common / len(rw)
            total += 2 * p * rec / (p + rec)
    return total / max(len(candidates), 1)


def bleu4(candidates: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002): geometric mean of clipped 1-4-gram precisions times the brevity penalty.

    Counts are summed over the corpus before the precisions are taken; with no
    matching n-gram of some order the score is 0 (no smoothing).
    """
    _check(candidates, references)
    matched, total = [0] * 4, [0] * 4
    cand_len = ref_len = 0
    for c, r in zip(candidates, references):
        cw, rw = words(c), words(r)
        cand_len, ref_len = cand_len + len(cw), ref_len + len(rw)
        for n in range(1, 5):
            cn = Counter(tuple(cw[i : i + n]) for i in range(len(cw) - n + 1))
            rn = Counter(tuple(rw[i : i + n]) for i in range(len(rw) - n + 1))
            matched[n - 1] += sum((cn & rn).values())
            total[n - 1] += sum(cn.values())
    if min(matched) == 0 or cand_len == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matched, total)) / 4
    bp = 1.0 if cand_len > ref_len else math.exp(1 - ref_len / cand_len)
    return bp * math.exp(log_p)


def _check(candidates: Sequence[str], references: Sequence[str]) -> None:
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")

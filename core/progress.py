"""Progress bars: tqdm on stderr, as the HF libraries draw theirs.

Every bar posttrain draws comes from ``bar``. A caller's ``progress=False`` hides it; otherwise ``disable`` is not
passed at all, so tqdm's own switch applies: ``TQDM_DISABLE=1`` in the environment (tqdm reads ``TQDM_*`` variables
as the defaults of the arguments a caller leaves out) turns off every bar of a command — posttrain's, the HF
Trainer's and vLLM's alike. Bars start only once a command's input is checked, so a bad-input error stays one line.
"""

from __future__ import annotations

from tqdm.auto import tqdm


def bar(iterable=None, enabled: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on stderr; hidden when not ``enabled`` (and, when enabled, by ``TQDM_DISABLE=1``).
    """
    if not enabled:
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)

"""Library log lines a person cannot act on, kept from drowning Stamen's own.

bitsandbytes warns ``MatMul8bitLt: inputs will be cast ...`` on every 8-bit matmul (a thousand times a round),
and on CPUs with AVX512-BF16 ``Failed to load CPU gemm_4bit_forward from kernels-community`` when it cannot fetch
an optional kernel from a model hub (Stamen never asks it to; bitsandbytes uses its own CPU kernel instead). The
first passes once per process, the second not at all. Both are set on those libraries' own loggers, so they hold in
an app that configures no logging (the edge API) as in the ``stamen`` commands, whose handler also passes each
other library warning once (:class:`LibraryWarningsOnce`). peft's use of a transformers call deprecated for v6
(``is_gradient_checkpointing``) is not shown either. The commands also hide libraries' progress bars (loading
and writing a base's weights, a blink on a small base) unless ``--verbose`` (:func:`quiet_progress_bars`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

REPEATED_EVERY_CALL = ("bitsandbytes.autograd._functions",)
NOTHING_TO_ACT_ON = ("bitsandbytes.backends.cpu.ops",)
DEPRECATED_IN_A_LIBRARY = r"`is_gradient_checkpointing` is deprecated"  # transformers 5.x, called by peft


class LibraryWarningsOnce(logging.Filter):
    """Each warning a library logs (by logger and message template) passes once; Stamen's and Flower's lines all
    pass."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(("stamen", "flwr")):
            return True
        key = (record.name, str(record.msg))
        first = key not in self.seen
        self.seen.add(key)
        return first


def quiet_library_logs() -> None:
    """Thin the library loggers above (idempotent: each gets one filter however often this runs)."""
    for name in REPEATED_EVERY_CALL:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, LibraryWarningsOnce) for existing in logger.filters):
            logger.addFilter(LibraryWarningsOnce())
    for name in NOTHING_TO_ACT_ON:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=DEPRECATED_IN_A_LIBRARY, category=FutureWarning)


def quiet_progress_bars() -> None:
    """No library progress bars (transformers', flwr-datasets' partitioning) in this process and the processes it
    starts (Flower's app processes, Ray's workers); Stamen's own are Rich's."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when transformers is imported
    os.environ["TQDM_DISABLE"] = "1"  # read when tqdm is imported
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

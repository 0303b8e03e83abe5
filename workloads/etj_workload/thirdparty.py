"""torchao without its known notices: filters on the loggers that print them, installed before it is imported.

torchao 0.18 logs on import, on a CPU-only torch, that its CUDA kernels (``_C_mxfp8``, ``_C_cutlass_90a``)
cannot be loaded and, without triton, that "certain kernels will not work"; and with torch 2.13 each enum
torchao registers with torch's pytree (at import of the module defining it, some only when transformers
imports them) makes torch log a deprecation. None of it matters to int8 weight-only quantization, the only
torchao feature the harness uses, yet every pod that compressed, and every program importing transformers
(which imports torchao), printed them.

:func:`import_torchao` puts a :class:`logging.Filter` on each of those loggers that drops exactly these
records (a kernel that fails to load on a CUDA build of torch, or the triton notice where triton is
installed, is kept), imports torchao, and says once, at INFO, what it left out. Everything else these
loggers log passes.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
from types import ModuleType

__all__ = ["KnownNotices", "import_torchao"]

log = logging.getLogger(__name__)

_CUDA_KERNEL = re.compile(r"^Failed to load \S*torchao/_C\w*[.]\S*so\b")
_NO_TRITON = "Detected no triton"
_ENUM_DEPRECATION = "is an Enum subclass and is now natively supported by torch.compile"

#: The notices, by the logger that logs them.
LOGGERS = ("torchao", "torchao.kernel.intmm", "torch.utils._pytree")


class KnownNotices(logging.Filter):
    """Drops torchao's known notices (see the module docstring) and remembers which it dropped.

    ``cuda``: torch is a CUDA build (then a kernel that fails to load is a real problem and passes);
    ``triton``: triton is installed (then its notice is unexpected and passes).
    """

    def __init__(self, *, cuda: bool, triton: bool) -> None:
        super().__init__()
        self.cuda, self.triton = cuda, triton
        self.dropped: set[str] = set()

    def notice(self, record: logging.LogRecord) -> str | None:
        """Which known notice ``record`` is (a short description), or None."""
        if record.name.startswith("torchao"):
            message = record.getMessage()
            if not self.cuda and _CUDA_KERNEL.match(message):
                return "CUDA-only kernels not loaded on a CPU-only torch"
            if not self.triton and _NO_TRITON in message:
                return "no triton (its kernels are for GPUs)"
        elif record.name == "torch.utils._pytree" and _ENUM_DEPRECATION in str(record.msg):
            cls = record.args[0] if isinstance(record.args, tuple) and record.args else None
            if isinstance(cls, type) and cls.__module__.startswith("torchao"):
                return "torch's deprecation notice for torchao's enum registrations"
        return None

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record but the known notices."""
        notice = self.notice(record)
        if notice is None:
            return True
        self.dropped.add(notice)
        return False


_filter: KnownNotices | None = None
_torchao: ModuleType | None = None


def import_torchao() -> ModuleType:
    """Import torchao and ``torchao.quantization`` with the filters in place (once per process)."""
    global _filter, _torchao
    if _torchao is not None:
        return _torchao
    import torch

    _filter = KnownNotices(cuda=torch.version.cuda is not None, triton=importlib.util.find_spec("triton") is not None)
    for name in LOGGERS:
        logging.getLogger(name).addFilter(_filter)
    _torchao = importlib.import_module("torchao")
    importlib.import_module("torchao.quantization")
    if _filter.dropped:
        log.info("torchao imported; its known notices are left out (%s; docs/harness.md)",
                 "; ".join(sorted(_filter.dropped)))
    return _torchao

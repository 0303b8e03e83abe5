"""torchao's known notices: dropped by the filter only where they are known to be harmless, said once."""

import enum
import logging
import subprocess
import sys

from workload_support import base_env

from etj_workload.thirdparty import KnownNotices

SO = "/venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so"


def record(name: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)


class TorchaoEnum(enum.Enum):
    A = 1


TorchaoEnum.__module__ = "torchao.quantization.quantize_.common.kernel_preference"


class OtherEnum(enum.Enum):
    A = 1


def test_each_notice_is_dropped_only_where_it_is_harmless() -> None:
    cpu = KnownNotices(cuda=False, triton=False)
    cuda = KnownNotices(cuda=True, triton=True)
    kernel = record("torchao", "Failed to load %s: Could not load this library: %s", SO, SO)
    triton = record("torchao.kernel.intmm", "Warning: Detected no triton, on systems without Triton certain kernels")
    deprecation = "%s is an Enum subclass and is now natively supported by torch.compile as an opaque value type."
    assert not cpu.filter(kernel) and not cpu.filter(triton)
    assert cuda.filter(kernel) and cuda.filter(triton)  # on a CUDA build, or with triton, they mean something
    assert not cpu.filter(record("torch.utils._pytree", deprecation, TorchaoEnum))
    assert cpu.filter(record("torch.utils._pytree", deprecation, OtherEnum))  # someone else's enum: passed on
    assert cpu.filter(record("torchao", "quantize_: something else went wrong"))
    assert cpu.dropped == {"CUDA-only kernels not loaded on a CPU-only torch", "no triton (its kernels are for GPUs)",
                           "torch's deprecation notice for torchao's enum registrations"}


def test_importing_torchao_through_the_harness_prints_one_info_line() -> None:
    code = (
        "import logging; logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')\n"
        "from etj_workload.thirdparty import import_torchao; import_torchao()\n"
        "from torchao.quantization import Int8WeightOnlyConfig, quantize_\n"
        "import torch; m = torch.nn.Sequential(torch.nn.Linear(8, 4)); quantize_(m, Int8WeightOnlyConfig())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=base_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) <= 1, lines  # torch's CPU build here: the notices are left out, and said in one line
    assert all(line.startswith("INFO etj_workload.thirdparty: torchao imported;") for line in lines), lines

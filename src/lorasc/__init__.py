"""LoRASC: LoRA Slow Cascade Learning on PEFT (see METHOD.md in the docs)."""

import logging

# bitsandbytes, which PEFT imports when it is installed, warns at import on CPUs with AVX512-BF16 that an
# optional inference kernel is missing; a cascade turns that inference path off (quantized.keep_dequantize_path).
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda record: "gemm_4bit_forward" not in record.getMessage())

from .callback import LoRASCCallback, LoRASCTrainerMixin
from .cascade import LoRASC
from .config import LoRASCConfig
from .export import delta_ranks, export_compressed, export_dense, export_stacked

__all__ = ["LoRASC", "LoRASCCallback", "LoRASCConfig", "LoRASCTrainerMixin", "delta_ranks", "export_compressed", "export_dense", "export_stacked"]
__version__ = "0.1.0"

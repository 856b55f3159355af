"""LoRASC: LoRA Slow Cascade Learning on PEFT (see METHOD.md in the docs)."""

from .callback import LoRASCCallback, LoRASCTrainerMixin
from .cascade import LoRASC
from .config import LoRASCConfig
from .export import delta_ranks, export_compressed, export_dense, export_stacked

__all__ = ["LoRASC", "LoRASCCallback", "LoRASCConfig", "LoRASCTrainerMixin", "delta_ranks", "export_compressed", "export_dense", "export_stacked"]
__version__ = "0.1.0"

"""The paged KV cache tensor: ``[num_layers, 2, num_blocks * block_size, kv_heads, width]``
(``width``: head_dim, or head_dim + 4 for int8 rows and their scales; `models.kv_layout`)."""

from __future__ import annotations

import torch

from inferline.models import kv_layout
from inferline.models.config import ModelConfig


class KVCache:
    """Slots for K and V of every layer; slot ``b * block_size + i`` is token ``i`` of block ``b``.

    Memory is reserved once, up front, for exactly ``num_blocks`` blocks.
    """

    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.device = device
        shape = (
            config.num_layers,
            2,
            num_blocks * block_size,
            config.num_kv_heads,
            kv_layout.row_width(config.head_dim, dtype),
        )
        # Allocated, not written: the pages of blocks never used stay out of resident memory
        # (a 1 GiB budget costs what the traffic uses). Only block 0 is zeroed: padded key
        # positions of the torch attention path read slot 0, and although they are masked,
        # NaN garbage in V would poison the output (NaN * 0); every other slot is written
        # before it is read.
        self.tensor = torch.empty(shape, dtype=dtype, device=device)
        self.tensor[:, :, :block_size].zero_()

    def copy_block(self, src: int, dst: int) -> None:
        """Copies all layers' K/V of block ``src`` into block ``dst``."""
        size = self.block_size
        self.tensor[:, :, dst * size : (dst + 1) * size] = self.tensor[
            :, :, src * size : (src + 1) * size
        ]

from typing_extensions import Buffer

KERNELS: str  # "avx2+fma" or "baseline": the inner loops chosen for this CPU

def scan(image: Buffer, nr: int, nc: int, upsample: int, levels: int, cell: int, detectors: int,
         filter_nr: int, filter_nc: int, bank: Buffer, counts: Buffer, biases: Buffer, adjust: float,
         /) -> list[tuple[float, int, int, int, int]]: ...

def upsampled_size(nr: int, nc: int, upsample: int, /) -> tuple[int, int]: ...

def set_kernels(baseline_only: bool, /) -> str: ...

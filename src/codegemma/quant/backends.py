"""How the native layers (quant/layers.py) compute their products on the native kernels.

A backend is owned by one engine; its layers are swapped into that engine's model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from codegemma.quant.blocks import BLOCK
from codegemma.quant.formats import Weight, row_slice
from codegemma.quant.native import NativeKernels
from codegemma.quant.row_groups import GROUP, RowGroups

_SCRATCH_FLOATS = 2 * 1024 * 1024  # 8 MB of float32 for one widened slice of a weight
# A pass of at most this many tokens per sequence (a decode step, drafted tokens checked, a
# keystroke's new tokens after a cached prefix) goes through the matrix-vector kernels as rows:
# every token gets the numbers it would get alone, and each weight is still read once.
DECODE_ROWS = 16


class NativeBackend:
    """Float32 activations; up to `DECODE_ROWS` tokens per sequence through the C
    matrix-vector kernels (which read bfloat16 or quantized weights directly), each token as
    it would go alone. Longer inputs (prompts): through quantized
    weights in row groups, a C GEMM on the weight bytes (`byte_gemm`: activations in int8
    blocks, as for one token, so every token gets the numbers it would get alone); through
    other weights, a GEMM (bfloat16 on CPUs with bf16 units, else float32) on a widened copy
    of one slice of a weight at a time (reused scratch memory)."""

    def __init__(self, kernels: NativeKernels, fast_bf16_gemm: bool, byte_gemm: bool = True):
        self.kernels = kernels
        self.fast_bf16_gemm = fast_bf16_gemm  # CPUs with bf16 matrix units: GEMM in bf16
        # prompts through weights in row groups: byte dot products on the weights as they are
        # (no widened copy; README, 'Speed and quantization'); False widens them instead
        self.byte_gemm = byte_gemm
        self._scratch = torch.empty(0, dtype=torch.float32)

    def linear(self, x: torch.Tensor, weight: Weight) -> torch.Tensor:
        """x (B, T, K) or (rows, K) float32 -> (..., N) float32.

        The path depends only on T (tokens per sequence), never on how many sequences share
        the batch, so a sequence computes the same numbers alone or batched.
        """
        if isinstance(weight, torch.Tensor) and weight.dtype == torch.float32:
            return F.linear(x, weight)
        if x.dim() == 2 or x.shape[-2] <= DECODE_ROWS:  # decode: every token as a row
            flat = x.reshape(-1, x.shape[-1]).float()
            return self.kernels.matvec(flat, weight).view(*x.shape[:-1], -1)
        if self._bytes_serve(weight):
            flat = x.reshape(-1, x.shape[-1]).float()
            out = torch.empty(flat.shape[0], weight.shape[0], dtype=torch.float32)
            self.kernels.gemm_groups(self.kernels.quantize_rows(flat, weight.bits), weight, out)
            return out.view(*x.shape[:-1], -1)
        if isinstance(weight, torch.Tensor) and self.fast_bf16_gemm:
            return per_sequence_linear(x.to(weight.dtype), weight).float()
        # Widen one slice of rows at a time: scratch memory stays small (a 256000-row
        # embedding would need 2 GB at once) and each slice is still a large GEMM. CPUs with
        # bf16 matrix units widen quantized weights to bfloat16 and multiply in bf16 (faster
        # than the float32 GEMM there); others widen to float32.
        quantized_bf16 = self.fast_bf16_gemm and not isinstance(weight, torch.Tensor)
        dtype = torch.bfloat16 if quantized_bf16 else torch.float32
        x = x.to(dtype)
        out = torch.empty(*x.shape[:-1], weight.shape[0], dtype=torch.float32)
        for start, stop in self._slices(weight):
            out[..., start:stop] = self._slice_product(x, weight, start, stop)
        return out

    def fuses_mlp(self, x: torch.Tensor, gate: Weight, up: Weight) -> bool:
        """True when `gated_mlp` serves this input: a prompt (T > DECODE_ROWS) through
        quantized weights, in row groups or on a CPU with bf16 GEMMs."""
        quantized = not isinstance(gate, torch.Tensor) and not isinstance(up, torch.Tensor)
        prompt = x.dim() == 3 and x.shape[-2] > DECODE_ROWS
        return prompt and quantized and (self._mlp_by_bytes(gate, up) or self.fast_bf16_gemm)

    def gated_mlp(self, x: torch.Tensor, gate: Weight, up: Weight, down: Weight) -> torch.Tensor:
        """down(gelu_tanh(x @ gate^T) * (x @ up^T)) for a prompt that `fuses_mlp` serves.
        On weight bytes, each slice of the hidden state is rounded to int8 blocks as soon as
        it is made (what the down projection does to it anyway: the same numbers as
        `linear(gated_hidden(...), down)`), so the float32 hidden state never exists whole:
        ~17 MB less at the peak of a 256-token chunk of CodeGemma-2B."""
        if not (self._mlp_by_bytes(gate, up) and self._bytes_serve(down)):
            return self.linear(self.gated_hidden(x, gate, up), down)
        flat = x.reshape(-1, x.shape[-1]).float()
        quantized = self.kernels.quantize_rows(flat, gate.bits)
        hidden = self.kernels.empty_rows(flat.shape[0], gate.shape[0], down.bits)
        for start, stop in self._slices(gate, multiple=BLOCK):
            activated = self._gated_slice(quantized, gate, up, start, stop)
            piece = self.kernels.quantize_rows(activated, down.bits)
            hidden.values[:, start:stop] = piece.values
            hidden.scales[:, start // BLOCK : stop // BLOCK] = piece.scales
            hidden.sums[:, start // BLOCK : stop // BLOCK] = piece.sums
        out = torch.empty(flat.shape[0], down.shape[0], dtype=torch.float32)
        return self.kernels.gemm_groups(hidden, down, out).view(*x.shape[:-1], -1)

    def gated_hidden(self, x: torch.Tensor, gate: Weight, up: Weight) -> torch.Tensor:
        """gelu_tanh(x @ gate^T) * (x @ up^T), (B, T, N), one slice of rows at a time, so
        neither whole product ever exists. Row groups (`byte_gemm`): float32, exactly two
        `linear` calls and the product, with x quantized once."""
        if self._mlp_by_bytes(gate, up):
            return self._gated_by_bytes(x, gate, up)
        return self._gated_widened(x, gate, up)

    def _gated_by_bytes(self, x: torch.Tensor, gate: RowGroups, up: RowGroups) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()
        quantized = self.kernels.quantize_rows(flat, gate.bits)
        hidden = torch.empty(flat.shape[0], gate.shape[0], dtype=torch.float32)
        for start, stop in self._slices(gate):
            hidden[:, start:stop] = self._gated_slice(quantized, gate, up, start, stop)
        return hidden.view(*x.shape[:-1], -1)

    def _gated_slice(self, x, gate: RowGroups, up: RowGroups, start: int, stop: int):
        """gelu_tanh(x @ gate[start:stop]^T) * (x @ up[start:stop]^T) for quantized rows x,
        (rows of x, stop - start) float32 in the reused scratch memory."""
        rows = stop - start
        both = self._buffer((x.values.shape[0], 2 * rows), torch.float32)  # gate | up
        self.kernels.gemm_groups(x, row_slice(gate, start, stop), both[:, :rows])
        self.kernels.gemm_groups(x, row_slice(up, start, stop), both[:, rows:])
        activated = torch.ops.aten.gelu_(both[:, :rows], approximate="tanh")
        return activated.mul_(both[:, rows:])

    def _gated_widened(self, x: torch.Tensor, gate: Weight, up: Weight) -> torch.Tensor:
        """(B, T, N) in bfloat16 (CPUs with bf16 GEMMs): the same numbers as two `linear` calls
        and the product, rounded as the next projection's GEMM rounds its input anyway (2 x 16
        MB fewer at the peak of a 256-token prompt chunk than two float32 products); the gate's
        and the up projection's rows of a slice are widened side by side and meet the input in
        one GEMM (half the calls, same numbers)."""
        x = x.to(torch.bfloat16)
        hidden = torch.empty(*x.shape[:-1], gate.shape[0], dtype=torch.bfloat16)
        for start, stop in self._slices(gate):
            rows = stop - start
            both = self._buffer((2 * rows, x.shape[-1]), torch.bfloat16)  # gate rows, up rows
            self.kernels.dequantize(row_slice(gate, start, stop), both[:rows])
            self.kernels.dequantize(row_slice(up, start, stop), both[rows:])
            product = per_sequence_linear(x, both)  # (B, T, 2 rows) bfloat16
            activated = torch.ops.aten.gelu_(product[..., :rows].float(), approximate="tanh")
            hidden[..., start:stop] = activated.mul_(product[..., rows:])
        return hidden

    def _bytes_serve(self, weight: Weight) -> bool:
        """Whether a prompt through `weight` runs as a GEMM on its bytes."""
        return self.byte_gemm and isinstance(weight, RowGroups)

    def _mlp_by_bytes(self, gate: Weight, up: Weight) -> bool:
        return self._bytes_serve(gate) and self._bytes_serve(up) and gate.bits == up.bits

    def _slices(self, weight: Weight, multiple: int = GROUP) -> list[tuple[int, int]]:
        """Row ranges of `weight` whose widened copy fits the scratch memory (in bfloat16,
        two such slices fit), starting at multiples of `multiple` (16 or 32)."""
        n, k = weight.shape
        rows = max(multiple, max(self.kernels.threads, _SCRATCH_FLOATS // k) // multiple * multiple)
        return [(start, min(start + rows, n)) for start in range(0, n, rows)]

    def _slice_product(self, x: torch.Tensor, weight: Weight, start: int, stop: int):
        """x @ weight[start:stop]^T through a widened copy of those rows (x's dtype)."""
        piece = row_slice(weight, start, stop)
        widened = self.kernels.dequantize(piece, self._buffer(piece.shape, x.dtype))
        return per_sequence_linear(x, widened)

    def _buffer(self, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """Reused scratch memory viewed as `shape` of `dtype` (float32 or bfloat16)."""
        size = shape[0] * shape[1]
        floats = size if dtype == torch.float32 else -(-size // 2)
        if self._scratch.numel() < floats:
            self._scratch = torch.empty(floats, dtype=torch.float32)
        return self._scratch[:floats].view(dtype)[:size].view(shape)


def per_sequence_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (B, T, K) @ weight (N, K)^T -> (B, T, N), one GEMM of T rows per sequence.

    PyTorch's CPU GEMMs (MKL, oneDNN) choose their blocking, and with it the order of each
    sum, by the number of rows: on AVX2 machines a batch of 10 prompts rounded differently
    from each prompt alone. Called per sequence, a sequence's GEMM has the same shape, the same
    call and (its rows being contiguous, K a multiple of 16) the same alignment alone or
    batched, so its numbers never depend on the batch."""
    if x.dim() != 3:
        return F.linear(x, weight)
    out = x.new_empty(*x.shape[:-1], weight.shape[0])
    for row in range(x.shape[0]):
        torch.mm(x[row], weight.t(), out=out[row])
    return out

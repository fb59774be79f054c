"""Weight-only quantization: block formats, reference (de)quantizers, and fast kernels."""

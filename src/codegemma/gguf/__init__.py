"""GGUF files (llama.cpp, Ollama, LM Studio): reading, dequantizing, loading and writing.

`loader.load_gguf` turns a file of architecture `gemma` into a config, a state dict in Hugging
Face names, a tokenizer and notes on how each tensor type was mapped; `writer` goes the other
way. Modules are imported on use; this package imports nothing at import time.
"""

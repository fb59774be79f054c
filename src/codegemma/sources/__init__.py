"""Checkpoints written by other systems: keras-hub presets, Flax (`gemma` library) checkpoints
and Jlama model directories. Each has its own loader module with a declarative name table that
returns weights in the engine's (Hugging Face) names; `detect` recognises them by content."""

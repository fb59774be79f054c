"""Training Gemma-architecture models: CodeGemma's FIM data pipeline, a trainer, LoRA.

Modules: `split_points` (natural middles), `fim_transform` (PSM/SPM/plain examples),
`repo_packing` (which files, in what order; the walk itself is `codegemma.source_tree`),
`dataset` (token rows), `trainer` (full training or LoRA, resumable), `lora` (PEFT-layout
adapters), `line_infilling` and `humaneval_infill` (scores), `default_recipe` and `model_card`
(the shipped model), `cli` (commands).
"""

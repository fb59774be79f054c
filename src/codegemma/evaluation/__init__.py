"""`codegemma eval`: reproduce the model card's HumanEval, infilling and MBPP numbers.

Modules: `tasks` (one problem), `humaneval_data`, `infilling`, `mbpp`, `datasets` (by name),
`prompts`, `sandbox` (+ `sandbox_child`, run in the sandbox), `pass_at_k`, `store` (run
directory), `runner` (batched, resumable), `report`, `cli`.
"""

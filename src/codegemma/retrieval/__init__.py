"""Repository context for completions: index a repository, retrieve chunks of other files.

Modules: `syntax` (tree-sitter spans of definitions), `chunking` (files into chunks), `lexical`
(BM25 terms of code), `index` (`RepoIndex`: the chunks on disk, updated incrementally, and
their BM25 index), `context` (`ContextAssembler`: the chunks for one request within a token
budget, in a stable order), `cli` (`codegemma index`, `complete --repo`). Needs the `repo`
extra: `pip install 'codegemma[repo]'` (bm25s, tree-sitter, tree-sitter-python).
"""

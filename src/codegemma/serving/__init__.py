"""`codegemma serve`: a completion server for editors (llama.cpp, OpenAI and Ollama formats).

`scheduler` owns the model; `prefix_cache` keeps recent KV caches for reuse across
keystrokes; `requests` is the one internal request type the `adapters` translate into;
`app` is the ASGI application.
"""

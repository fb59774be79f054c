"""`codegemma serve --replicas N`: the server scaled out on Ray Serve (extra `cluster`).

`options` (the settings, no Ray) · `affinity` (which replica runs a request: pure functions) ·
`router` (Ray Serve's request-router extension point, over `affinity`) · `replica` (an engine
replica: a local `Scheduler` over a loaded model) · `backend` (the routes' `Backend` on the
ingress, reaching replicas through a deployment handle) · `deployment` (the Serve
application, and its builder for config files) · `launch` (the CLI's runner). Only `options`,
`affinity` and `replica` import without Ray.
"""

"""`codegemma serve --replicas N [--ray-address ADDR]`: run the Serve application on a Ray
cluster (a local one, started and stopped here, or one joined with `ray start`) until
interrupted; the HTTP proxy of Serve listens on the given host and port."""

from __future__ import annotations

import logging
import os
import sys
import time

from codegemma.optional import require
from codegemma.serving.cluster.options import APP_NAME, ClusterOptions


def run(options: ClusterOptions, *, host: str, port: int, ray_address: str | None) -> int:
    """Serve until Ctrl-C; the exit code (1: the application could not be deployed)."""
    ray = require("ray", "cluster", "codegemma serve --replicas")
    serve = require("ray.serve", "cluster", "codegemma serve --replicas")
    from codegemma.serving.cluster.deployment import build  # extra 'cluster': Ray Serve

    local = ray_address is None
    if local:  # every replica gets its threads, even if that oversubscribes the cores
        cpus = max(os.cpu_count() or 1, options.threads * options.replicas)
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=ray_address, logging_level=logging.WARNING)
    try:
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(build(options), name=APP_NAME, route_prefix="/")
        except RuntimeError as exc:  # a replica that cannot start (e.g. no such model)
            print(f"codegemma serve: error: deployment failed: {exc}", file=sys.stderr)
            return 1
        print(
            f"serving {options.model or 'the default model'} as '{options.alias}' on "
            f"http://{host}:{port} with {options.replicas} replica(s) on Ray",
            file=sys.stderr,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        if local:
            serve.shutdown()
        else:  # the cluster, and Serve on it, stay up for others
            serve.delete(APP_NAME)
        ray.shutdown()

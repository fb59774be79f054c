"""The Ray Serve application: an ingress deployment serving `create_app`'s routes over a
`RayBackend`, and an engine deployment of N `EngineReplica`s routed by `AffinityRouter`.

`build(options)` makes the application (`codegemma serve --replicas` runs it); `app(args)` is
the same for Serve's config files (`serve run`, KubeRay's `serveConfigV2`), whose `args` are
`ClusterOptions` fields: `import_path: codegemma.serving.cluster.deployment:app`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Mapping

# The `cluster` extra (pip install 'codegemma[cluster]').
from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from codegemma.serving.app import create_app
from codegemma.serving.cluster.backend import RayBackend
from codegemma.serving.cluster.options import ClusterOptions
from codegemma.serving.cluster.replica import EngineReplica
from codegemma.serving.cluster.router import AffinityRouter

API_KEY_ENV = "CODEGEMMA_API_KEY"  # the key, when the options give none (e.g. a k8s Secret)
INGRESS_MAX_ONGOING = 1024  # HTTP requests one ingress replica holds (it only relays)
CONSTRUCTOR_RETRIES = 2  # a replica that cannot load its model fails the deployment soon
# Serve's own per-call log lines would double ours (`--log-level info`): warnings only.
SERVE_LOGGING = {"log_level": "WARNING", "enable_access_log": False}


class Ingress:
    """The HTTP side of the deployment: every route of the single-process server."""

    async def __init__(self, engine: DeploymentHandle, options: ClusterOptions) -> None:
        _log_to_stderr(options.log_level)
        description = await engine.describe.remote()
        self.options = options
        self.info = description.info
        self.backend = RayBackend(
            engine,
            description,
            asyncio.get_running_loop(),  # the loop Serve runs this replica's routes on
            replicas=options.replicas,
            fim_mode=options.fim_mode,
            stable_prefix=options.stable_prefix,
            retries=options.retries,
        )

    def __serve_build_asgi_app__(self):
        """Serve asks for the ASGI app once the constructor has run."""
        options = self.options
        return create_app(
            self.backend,
            self.info,
            api_key=options.api_key or os.environ.get(API_KEY_ENV) or None,
            max_body_bytes=int(options.max_body_mib * (1 << 20)),
            cors_origins=options.cors_origins,
        )


def build(options: ClusterOptions) -> Application:
    """The application: `options.replicas` engines behind one ingress."""
    router = {}
    if options.routing == "affinity":
        router["request_router_config"] = RequestRouterConfig(
            request_router_class=AffinityRouter,
            request_router_kwargs={"imbalance": options.router_imbalance},
        )
    engine = serve.deployment(
        EngineReplica,
        name="Engine",
        num_replicas=options.replicas,
        max_ongoing_requests=options.max_ongoing,
        ray_actor_options={"num_cpus": options.threads},
        max_constructor_retry_count=CONSTRUCTOR_RETRIES,
        logging_config=SERVE_LOGGING,
        **router,
    )
    ingress = serve.deployment(
        serve.ingress()(Ingress),
        name="Ingress",
        max_ongoing_requests=INGRESS_MAX_ONGOING,
        ray_actor_options={"num_cpus": 0},
        max_constructor_retry_count=CONSTRUCTOR_RETRIES,
        logging_config=SERVE_LOGGING,
    )
    return ingress.bind(engine.bind(options), options)


def app(args: Mapping[str, object]) -> Application:
    """The application of a Serve config file's `args` (ClusterOptions fields)."""
    return build(ClusterOptions.from_args(args))


def _log_to_stderr(level: str) -> None:
    """Our loggers (the access log among them) print to the replica's stderr at `level`."""
    logger = logging.getLogger("codegemma")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if level == "trace" else level.upper())

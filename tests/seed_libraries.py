"""Importing the libraries whose own file writers and forward passes the source loaders are
tested against (keras-hub, Google's `gemma` on jax), each configured for a quiet CPU run."""

from __future__ import annotations

import importlib
import os

import pytest


def seed_library(name: str):
    """Import `name`. Missing: a skip that names it on a developer's machine, a failure in CI
    (where `.ci/run` installs it), so the parity tests never drop out unnoticed."""
    if os.environ.get("CI"):
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"{name} is not installed (.ci/run installs it)")


def keras_on_torch():
    """keras and keras_hub with the torch backend (chosen before keras is first imported)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = seed_library("keras")
    assert keras.backend.backend() == "torch", "keras was imported earlier with another backend"
    return keras, seed_library("keras_hub")


def jax_on_one_cpu_thread():
    """jax on the CPU, one thread (set before jax is first imported), and the gemma library."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )
    jax = seed_library("jax")
    seed_library("gemma.transformer")
    return jax

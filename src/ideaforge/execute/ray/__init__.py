"""The Ray backend: trials run in detached Ray actors anywhere on a cluster.

    packing.py    deterministic, content-addressed tarballs of workspaces and hidden files
    actor.py      the worker side: a reusable actor that runs trials on its node
    executor.py   the controller side: `RayExecutor`, the `Executor` protocol over Ray

Ray itself is imported only when a `RayExecutor` is built.
"""

from ideaforge.execute.ray.executor import RayExecutor

__all__ = ["RayExecutor"]

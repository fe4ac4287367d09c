"""What every KFP component here shares: the image it runs on and how it is declared.

Components are lightweight Python components on the project's image: their bodies import the
project, nothing is installed at run time, and `kfp.local`'s SubprocessRunner runs the very same
definitions in this environment. The image is set here, once; `TAUFORGE_IMAGE` overrides it.
"""

from __future__ import annotations

import functools
import os
from typing import List  # noqa: UP035 (KFP's collected inputs are typed with typing.List)

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

IMAGE = os.environ.get("TAUFORGE_IMAGE", "ghcr.io/tauforge/tauforge:0.1.0")

if hasattr(dsl, "component"):
    component = functools.partial(dsl.component, base_image=IMAGE, install_kfp_package=False)
else:  # inside a running task (_KFP_RUNTIME=true) kfp.dsl has no decorators, and none are needed
    def component(func):
        return func

__all__ = ["HTML", "IMAGE", "Artifact", "Dataset", "Input", "List", "Metrics", "Model", "Output", "component"]

"""Spatial Control: a ComfyUI node pack for region-wise spatial control of diffusion models.

ComfyUI imports this package from ``custom_nodes/``. Nothing from ``comfy`` is imported at module
level, so the maths in ``guidance/`` and ``models/`` can be imported and tested outside ComfyUI.
"""


async def comfy_entrypoint():
    from .nodes import SpatialControlExtension

    return SpatialControlExtension()

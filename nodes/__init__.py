"""The pack's one node registry (ComfyUI V3 API)."""

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

NODES: list[type[io.ComfyNode]] = [
]


class SpatialControlExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)

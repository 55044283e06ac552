"""The pack's one node registry (ComfyUI V3 API)."""

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .attention_maps import CrossAttentionMaps
from .attention_masking import RegionAttentionMasking
from .concept_em import ConceptTokenEM
from .demo_model import ShapeWorldDemoModel, ShapeWorldSpaTextModel
from .guided_sampler import RegionGuidedKSampler, RegionGuider
from .multi_conditional_cfg import MultiConditionalCFGGuider
from .region_guidance import RegionBackwardGuidance
from .region_proposer import RegionProposer
from .regions import RegionFromBox, RegionFromMask
from .spatio_textual import SpatioTextualEncoder
from .text_grounding import TextGroundingMap

NODES: list[type[io.ComfyNode]] = [
    CrossAttentionMaps,
    ShapeWorldDemoModel,
    ShapeWorldSpaTextModel,
    RegionFromBox,
    RegionFromMask,
    RegionBackwardGuidance,
    RegionAttentionMasking,
    RegionGuider,
    RegionGuidedKSampler,
    ConceptTokenEM,
    RegionProposer,
    TextGroundingMap,
    SpatioTextualEncoder,
    MultiConditionalCFGGuider,
]


class SpatialControlExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)

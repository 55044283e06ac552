"""The pack's custom socket types."""

from comfy_api.latest import io

# A tuple of guidance.regions.Region: phrase, soft mask, weight, optional box.
Regions = io.Custom("REGIONS")

# models.spatio_textual.RegionTextEncoder: embeds region texts for a spatio-textual UNet's map.
SpatioTextualTextEncoder = io.Custom("SPATEXT_ENCODER")

"""Segment maps: the hand-written colour lines, and splitting a painted map into region masks."""

import pytest
import torch

from spatial_control.guidance.errors import RegionTextError, SegmentMapError
from spatial_control.guidance.segment_map import (
    MAX_REGIONS,
    RegionText,
    parse_colour,
    parse_region_texts,
    split_segment_map,
)

RED, BLUE = (255, 0, 0), (0, 0, 255)
TWO = [RegionText(RED, "a red circle", 1), RegionText(BLUE, "a blue square", 2)]


def _map(size: int = 32) -> torch.Tensor:
    """Black background, a red left block and a blue right block."""
    image = torch.zeros(size, size, 3)
    image[4:20, 2:14, 0] = 1.0
    image[8:28, 18:30, 2] = 1.0
    return image


def test_lines_are_parsed_tolerantly():
    text = "\n  #FF0000 :  a red   circle \n\n#00f: a blue square\n   \n"
    assert parse_region_texts(text) == [
        RegionText(RED, "a red circle", 2),
        RegionText(BLUE, "a blue square", 4),
    ]
    assert parse_colour(" #0F0 ") == (0, 255, 0) and parse_colour("000000") == (0, 0, 0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("#ff0000: a red circle\nblue: a blue square", "line 2 ('blue: a blue square') is not of the form"),
        ("#ff0000 a red circle", "line 1 ('#ff0000 a red circle') is not of the form"),
        ("#ff00: a red circle", "line 1 ('#ff00: a red circle') is not of the form"),
        ("#ff0000: a red circle\n#0000ff:   ", "colour #0000ff (line 2) has no text"),
        ("#ff0000: a\n#00f: b\n#F00: c", "colour #ff0000 is listed on lines 1 and 3"),
        ("\n  \n", "lists no region"),
    ],
)
def test_malformed_lines_are_refused_naming_the_line_or_colour(text, message):
    with pytest.raises(RegionTextError) as err:
        parse_region_texts(text)
    assert message in str(err.value)


def test_more_regions_than_a_conditioning_takes_are_refused():
    lines = "\n".join(f"#{i:02x}{i:02x}{i:02x}: region {i}" for i in range(MAX_REGIONS + 1))
    expected = f"lists {MAX_REGIONS + 1} regions, more than the {MAX_REGIONS}"
    with pytest.raises(RegionTextError, match=expected):
        parse_region_texts(lines)
    assert len(parse_region_texts("\n".join(lines.splitlines()[:MAX_REGIONS]))) == MAX_REGIONS


def test_a_bad_background_colour_is_refused():
    with pytest.raises(ValueError, match="'black' is not a colour"):
        parse_colour("black")


def test_each_listed_colour_becomes_its_mask_and_the_background_none():
    masks = split_segment_map(_map(), TWO)
    assert masks.shape == (2, 32, 32)
    assert masks[0].sum() == 16 * 12 and masks[0][4:20, 2:14].all()
    assert masks[1].sum() == 20 * 12 and masks[1][8:28, 18:30].all()
    assert (masks.sum(0) <= 1).all() and masks[:, 0, 0].sum() == 0  # disjoint; the corner is background


def test_anti_aliased_edges_go_to_the_nearest_colour():
    image = _map()
    image[4:20, 14, 0] = 0.7  # a 70% red fringe column right of the red block
    image[4:20, 15, 0] = 0.3  # and a 30% one: nearer the black background
    image[8:28, 17, 2], image[8:28, 17, 0] = 0.6, 0.3  # blue blended with some red
    masks = split_segment_map(image, TWO)
    assert masks[0][4:20, 14].all() and not masks[0][4:20, 15].any()
    assert masks[1][8:28, 17].all()


def test_a_noisy_map_parses_like_the_clean_one():
    gen = torch.Generator().manual_seed(0)
    noisy = (_map() + 0.03 * torch.randn(32, 32, 3, generator=gen)).clamp(0, 1)  # JPEG-like noise
    assert torch.equal(split_segment_map(noisy, TWO), split_segment_map(_map(), TWO))


def test_an_explicit_background_colour_replaces_black():
    image = _map()
    image[(image == 0).all(-1)] = 1.0  # white background
    masks = split_segment_map(image, TWO, background=(255, 255, 255))
    assert torch.equal(masks, split_segment_map(_map(), TWO))


def test_an_unlisted_colour_painted_over_an_area_is_refused_with_its_pixel_count():
    image = _map()
    image[24:30, 2:10] = torch.tensor([0.0, 1.0, 0.0])  # a 6x8 green patch no line lists
    with pytest.raises(SegmentMapError) as err:
        split_segment_map(image, TWO)
    assert "has 48 pixels of #00ff00, a colour no line of region_texts lists" in str(err.value)
    with pytest.raises(SegmentMapError, match="pixels of #000000"):  # black, when it is not the background
        split_segment_map(_map(), TWO, background=(255, 255, 255))


def test_a_listed_colour_missing_from_the_map_is_refused_with_its_line():
    green = RegionText((0, 255, 0), "a green triangle", 3)
    with pytest.raises(RegionTextError) as err:
        split_segment_map(_map(), [*TWO, green])
    assert "colour #00ff00 (line 3, 'a green triangle') is not in the segment map" in str(err.value)


def test_colours_too_close_to_tell_apart_are_refused():
    with pytest.raises(RegionTextError, match=r"colour #ff0000 \(line 1\) and colour #f01010 \(line 2\)"):
        split_segment_map(_map(), [TWO[0], RegionText((240, 16, 16), "a darker red", 2)])
    with pytest.raises(RegionTextError, match="and the background colour #000000 are too close"):
        split_segment_map(_map(), [*TWO, RegionText((10, 10, 10), "a shadow", 3)])


def test_a_map_that_is_not_one_rgb_image_is_refused():
    with pytest.raises(SegmentMapError, match=r"got shape \(32, 32, 4\)"):
        split_segment_map(torch.zeros(32, 32, 4), TWO)


def test_a_resampled_jpeg_map_parses_into_the_painted_shapes():
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    painted = Image.new("RGB", (256, 256))
    draw = ImageDraw.Draw(painted)
    draw.ellipse((20, 20, 130, 130), fill=RED)
    draw.rectangle((100, 100, 240, 235), fill=BLUE)  # overlaps the circle: a red-blue edge
    hard = split_segment_map(torch.from_numpy(np.array(painted)).float() / 255, TWO)
    buffer = io.BytesIO()
    painted.resize((128, 128), Image.BICUBIC).save(buffer, "JPEG", quality=75)  # fringes and noise
    soft = torch.from_numpy(np.array(Image.open(buffer))).float() / 255
    masks = split_segment_map(soft, TWO)
    expected = torch.nn.functional.interpolate(hard[None], size=(128, 128), mode="area")[0]
    assert ((masks - expected).abs() > 0.5).float().mean() < 0.01  # at most 1% of pixels differ

"""Which objects a few images share: co-segmentation on the denoiser's own features.

The concept EM needs a first mask per concept and image. Textual inversion on the whole images
(the EM's own first round without masks) found the shared object in 0.41 of the cases on the
shape world (docs/concept_em.md): its tokens learn a mixture of whatever recurs (a colour, the
background) and their attention points anywhere. The shared objects are found more directly by
co-segmentation, as with self-supervised ViT features (Amir et al., "Deep ViT Features as Dense
Visual Descriptors", 2021), here on the features the diffusion model itself computes (the image
queries of its cross-attention layers on the lightly noised image, as DIFT reads a diffusion
model's features: Tang et al., NeurIPS 2023), so it needs no other network and works on any
checkpoint:

- saliency: a position whose feature is unlike most of its image's is part of an object (contrast
  saliency; the background is what most positions look like);
- proposals: the connected salient parts of each image, each described by its saliency-weighted
  mean feature;
- groups: ``count`` times, the proposals, one per image, whose descriptors agree best across the
  images; the best group is taken and its proposals leave the pool. A proposal far from its group
  (cosine below ``min_similarity`` to the others' mean) is dropped: that image lacks the concept.

Plain torch; the caller supplies the features (``AttentionStore.query_features``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .mask_refinement import otsu_levels


def contrast_saliency(features: torch.Tensor) -> torch.Tensor:
    """``[n, h, w]`` in [0, 1] for unit features ``[n, dim, h, w]``: one minus each position's mean
    cosine similarity to its image's positions, min-max scaled per image."""
    flat = features.flatten(2)
    typical = torch.einsum("ndp,ndq->np", flat, flat) / flat.shape[-1]
    saliency = 1 - typical
    low, high = saliency.amin(1, keepdim=True), saliency.amax(1, keepdim=True)
    return ((saliency - low) / (high - low).clamp_min(1e-8)).reshape(features.shape[0], *features.shape[-2:])


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """Labels ``[h, w]`` of a boolean ``[h, w]`` mask: 0 outside it, 1..m for its 8-connected
    components in raster order of their first position."""
    h, w = mask.shape
    inside = mask.reshape(1, 1, h, w).float()
    labels = torch.arange(1, h * w + 1, dtype=torch.float32, device=mask.device).reshape(1, 1, h, w) * inside
    while True:  # each position takes the largest index of its component: max-pool until stable
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * inside
        if torch.equal(grown, labels):
            break
        labels = grown
    flat = labels.flatten().long()
    values, inverse = torch.unique(flat, return_inverse=True)
    positions = torch.arange(flat.numel(), device=flat.device)
    first = torch.full_like(values, flat.numel()).scatter_reduce(0, inverse, positions, "amin")
    first = torch.where(values == 0, torch.full_like(first, -1), first)
    rank = first.argsort().argsort()  # the background (if any) ranks 0
    if not bool((values == 0).any()):
        rank = rank + 1
    return rank[inverse].reshape(h, w)


def object_proposals(
    features: torch.Tensor, saliency: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image, ``(masks [m, h, w], descriptors [m, dim])`` of its salient parts: the connected
    components of the positions above the image's Otsu level of ``saliency``, each described by the
    saliency-weighted mean of ``features`` over it (unit length)."""
    levels = otsu_levels(saliency)
    found = []
    for feature, salient, level in zip(features, saliency, levels, strict=True):
        labels = connected_components(salient > level)
        count = int(labels.max())
        masks = (
            torch.stack([(labels == j + 1).float() for j in range(count)])
            if count
            else salient.new_zeros(0, *salient.shape)
        )
        weights = masks * salient
        descriptors = (
            torch.einsum("mhw,dhw->md", weights, feature) / weights.sum((1, 2)).clamp_min(1e-8)[:, None]
        )
        found.append((masks, F.normalize(descriptors, dim=1)))
    return found


def shared_groups(
    descriptors: list[torch.Tensor], count: int, min_similarity: float = 0.5
) -> list[list[int | None]]:
    """``count`` groups of proposals, one per image (its index in that image's ``descriptors``, or
    None where the image has none left or none close enough), best agreeing group first.

    Each candidate group grows from one proposal: its nearest free proposal in every other image.
    Its score is the mean pairwise cosine similarity of the members. The best group is kept, its
    members leave the pool, and the search repeats. Members whose cosine to the mean of the others
    is below ``min_similarity`` are dropped from the kept group."""
    n = len(descriptors)
    free = [set(range(len(d))) for d in descriptors]
    groups: list[list[int | None]] = []
    for _ in range(count):
        best, best_score = None, -2.0
        for seed_image in range(n):
            for seed in sorted(free[seed_image]):
                anchor = descriptors[seed_image][seed]
                members: list[int | None] = []
                for image in range(n):
                    if image == seed_image:
                        members.append(seed)
                        continue
                    options = sorted(free[image])
                    if not options:
                        members.append(None)
                        continue
                    similarity = descriptors[image][options] @ anchor
                    members.append(options[int(similarity.argmax())])
                score = _agreement([descriptors[i][m] for i, m in enumerate(members) if m is not None])
                if score > best_score:
                    best, best_score = members, score
        if best is None:
            groups.append([None] * n)
            continue
        best = _drop_outliers(descriptors, best, min_similarity)
        for image, member in enumerate(best):
            if member is not None:
                free[image].discard(member)
        groups.append(best)
    return groups


def _agreement(vectors: list[torch.Tensor]) -> float:
    """Mean pairwise cosine of unit vectors (a lone vector scores 0: nothing agrees with it)."""
    if len(vectors) < 2:
        return 0.0
    stacked = torch.stack(vectors)
    similarity = stacked @ stacked.T
    k = len(vectors)
    return float((similarity.sum() - similarity.diagonal().sum()) / (k * (k - 1)))


def _drop_outliers(descriptors, members: list[int | None], min_similarity: float) -> list[int | None]:
    kept = list(members)
    present = [i for i, m in enumerate(members) if m is not None]
    if len(present) < 2:
        return kept
    for image in present:
        others = [descriptors[i][members[i]] for i in present if i != image]
        centre = F.normalize(torch.stack(others).mean(0), dim=0)
        if float(descriptors[image][members[image]] @ centre) < min_similarity:
            kept[image] = None
    return kept


def discover_concepts(features: torch.Tensor, count: int, min_similarity: float = 0.5) -> torch.Tensor:
    """Soft maps ``[n, count, h, w]`` of the ``count`` objects that unit ``features [n, dim, h, w]``
    of ``n`` images share best (``shared_maps`` of their saliency and object proposals)."""
    saliency = contrast_saliency(features)
    return shared_maps(object_proposals(features, saliency), saliency, count, min_similarity)


def shared_maps(
    proposals: list[tuple[torch.Tensor, torch.Tensor]],
    saliency: torch.Tensor,
    count: int,
    min_similarity: float = 0.5,
) -> torch.Tensor:
    """Soft maps ``[n, count, h, w]``: each of the ``count`` best agreeing groups of ``proposals``
    (``shared_groups``), its proposal weighted by ``saliency [n, h, w]``, zero in an image the group
    has no member in. With one image, the ``count`` most salient proposals."""
    n, (h, w) = saliency.shape[0], saliency.shape[-2:]
    maps = saliency.new_zeros(n, count, h, w)
    if n == 1:
        masks, _ = proposals[0]
        mass = (masks * saliency[0]).sum((1, 2))
        for c, j in enumerate(mass.argsort(descending=True)[:count].tolist()):
            maps[0, c] = masks[j] * saliency[0]
        return maps
    groups = shared_groups([d for _, d in proposals], count, min_similarity)
    for c, members in enumerate(groups):
        for image, member in enumerate(members):
            if member is not None:
                maps[image, c] = proposals[image][0][member] * saliency[image]
    return maps


def on_objects(
    attention: torch.Tensor,
    proposals: list[tuple[torch.Tensor, torch.Tensor]],
    previous: torch.Tensor | None = None,
    appearance_temperature: float = 0.05,
    fill: bool = False,
    evidence: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``attention`` ``[n, k, H, W]`` with each concept's map kept only on one object proposal of its
    image (``object_proposals``, resized to ``H x W``), each proposal to one concept at most (greedy,
    best pair first). A pair's score is the map's highest value on the proposal times, given the
    ``previous`` masks ``[n, k, H, W]``, how much the proposal looks like the concept in the other
    images: a softmax over the image's proposals of their cosine (at ``appearance_temperature``) to
    the concept's mean descriptor there (that of the proposals its previous masks lie on). A token
    that attends to two crosses alike is told apart by which of them looks like its concept
    elsewhere. ``evidence``: per image ``[k, m]`` probabilities over its proposals from another
    source (the denoiser's likelihood of each concept on each object), multiplied into the score.
    With ``fill``, a kept map is its highest value on the whole proposal: the attention picks the
    object, the proposal gives its extent. A concept left without a proposal keeps its whole map."""
    n, k = attention.shape[:2]
    regions = [_resized(masks, attention) for masks, _ in proposals]
    appearance = _appearance(regions, proposals, previous) if previous is not None else None
    out = attention.clone()
    for image, (masks, descriptors) in enumerate(proposals):
        if len(masks) == 0:
            continue
        inside = regions[image] >= 0.5
        score = (attention[image][:, None] * inside[None]).flatten(2).amax(-1)  # [k, m]
        if appearance is not None:
            others = [appearance[t] for t in range(n) if t != image]
            centre = (
                F.normalize(torch.stack(others).sum(0), dim=-1)
                if others
                else torch.zeros(k, descriptors.shape[1])
            )
            likeness = (centre.to(descriptors) @ descriptors.T / appearance_temperature).softmax(-1)
            score = score * likeness.to(score)
        if evidence is not None:
            score = score * evidence[image].to(score)
        free_concepts, free_objects = set(range(k)), set(range(len(masks)))
        for flat in score.flatten().argsort(descending=True).tolist():
            concept, obj = divmod(flat, len(masks))
            if concept in free_concepts and obj in free_objects:
                kept = attention[image, concept] * regions[image][obj]
                out[image, concept] = kept.amax() * regions[image][obj] if fill else kept
                free_concepts.discard(concept)
                free_objects.discard(obj)
    return out


def _resized(masks: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Proposal masks ``[m, h, w]`` resized bilinearly to ``like``'s ``H x W`` (``m`` may be 0)."""
    if len(masks) == 0:
        return like.new_zeros(0, *like.shape[-2:])
    size = like.shape[-2:]
    return F.interpolate(masks[None].float(), size=size, mode="bilinear", align_corners=False)[0].to(like)


def _appearance(regions, proposals, previous: torch.Tensor) -> list[torch.Tensor]:
    """Per image, ``[k, dim]``: the descriptor of the proposal each concept's previous mask overlaps
    most (zero where it overlaps none)."""
    k, out = previous.shape[1], []
    for image, (masks, descriptors) in enumerate(proposals):
        rows = torch.zeros(k, descriptors.shape[1])  # [0, dim] where the image has no proposal
        if len(masks):
            overlap = torch.einsum("khw,mhw->km", previous[image].float().to(regions[image]), regions[image])
            for concept in range(k):
                if float(overlap[concept].max()) > 0:
                    rows[concept] = descriptors[int(overlap[concept].argmax())].cpu()
        out.append(rows)
    return out

"""Errors a user can act on: each names what is wrong and what to connect or change instead."""

from contextlib import contextmanager


class UnsupportedModelError(ValueError):
    """The connected model cannot be used by a method (no cross-attention, unknown architecture)."""


class UnknownTokenizerError(ValueError):
    """The connected text encoder's tokenizer is not one the pack knows how to locate words in."""


class PhraseNotFoundError(ValueError):
    """A region's phrase does not occur in the prompt it is meant to steer."""


class RepeatedPhraseError(PhraseNotFoundError):
    """A region's phrase occurs several times in the prompt, so which object it means is unclear."""


class RegionShapeError(ValueError):
    """A region's mask does not have the aspect ratio of the latent it is meant to steer."""


class RegionTextError(ValueError):
    """A segment map's list of colours and texts is malformed, or names a colour the map lacks."""


class SegmentMapError(ValueError):
    """A segment map cannot be split into the listed regions (its shape, or an unlisted colour)."""


class ShortConditioningError(ValueError):
    """The conditioning a sampler uses lacks tokens that a patch of the MODEL was set up for."""


class NodeInputError(ValueError):
    """A bad input, reported as ``Node: input 'name': problem. fix`` (never a deep stack trace)."""

    def __init__(self, node: str, input_name: str, problem: str):
        self.node, self.input_name, self.problem = node, input_name, problem
        super().__init__(f"{node}: input '{input_name}': {problem}")


@contextmanager
def blame_input(node: str, input_name: str, *errors: type[Exception]):
    """Re-raise ``errors`` raised inside the block as ``NodeInputError(node, input_name, ...)``."""
    try:
        yield
    except errors as err:
        raise NodeInputError(node, input_name, str(err)) from None

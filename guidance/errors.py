"""Errors a user can act on: each names what is wrong and what to connect or change instead."""


class UnsupportedModelError(ValueError):
    """The connected model cannot be used by a method (no cross-attention, unknown architecture)."""


class UnknownTokenizerError(ValueError):
    """The connected text encoder's tokenizer is not one the pack knows how to locate words in."""


class PhraseNotFoundError(ValueError):
    """A region's phrase does not occur in the prompt it is meant to steer."""


class NodeInputError(ValueError):
    """A bad input, reported as ``Node: input 'name': problem. fix`` (never a deep stack trace)."""

    def __init__(self, node: str, input_name: str, problem: str):
        self.node, self.input_name, self.problem = node, input_name, problem
        super().__init__(f"{node}: input '{input_name}': {problem}")

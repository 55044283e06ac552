"""Turn the maths' precise errors into messages that name the node and the input to fix."""

from ..guidance.errors import blame_input

__all__ = ["blame_input"]

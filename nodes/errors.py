"""Turn the maths' precise errors into messages that name the node and the input to fix."""

from contextlib import contextmanager

from ..guidance.errors import NodeInputError


@contextmanager
def blame_input(node: str, input_name: str, *errors: type[Exception]):
    """Re-raise ``errors`` raised inside the block as ``NodeInputError(node, input_name, ...)``."""
    try:
        yield
    except errors as err:
        raise NodeInputError(node, input_name, str(err)) from None

"""Plain-torch maths of the spatial-control methods (no ComfyUI imports outside backends/)."""

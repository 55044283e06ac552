"""Backends: the only code that knows a host (ComfyUI MODELs, diffusers UNets)."""

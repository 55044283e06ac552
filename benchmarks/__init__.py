"""Benchmarks of the node pack (procedural data and metrics; no ComfyUI imports)."""

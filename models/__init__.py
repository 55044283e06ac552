"""nn.Modules, configs and safetensors loading for the pack's models (no weights in code)."""

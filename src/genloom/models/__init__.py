"""Model families, one file each: a Config dataclass, presets and an nn.Module."""

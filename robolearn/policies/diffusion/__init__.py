"""Diffusion Policy (Chi et al., RSS 2023): `DiffusionConfig`, `DiffusionPolicy` (policy.py), the
conditional 1D U-Net and observation encoder (modeling.py), DDPM training / DDIM sampling (scheduler.py)."""

from robolearn.policies.diffusion.policy import DiffusionConfig, DiffusionPolicy

__all__ = ["DiffusionConfig", "DiffusionPolicy"]

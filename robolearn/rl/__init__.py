"""Residual RL: a small residual policy trained by RL on top of a frozen BC base (ResiP, ResFiT)."""

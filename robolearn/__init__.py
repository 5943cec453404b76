"""robolearn: train manipulation policies in simulation and deploy them to real arms."""

__version__ = "0.1.0"

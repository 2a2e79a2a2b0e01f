"""The fleet: its boards' keys and registry entries, commands, workflows and rollouts."""

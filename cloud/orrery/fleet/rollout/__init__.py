"""Staged rollouts of workflow versions: planning, the orchestrator, the health gate."""

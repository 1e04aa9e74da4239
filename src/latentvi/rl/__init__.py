"""Reinforcement learning: environments seen through pixels, replay, and one file per agent."""

"""Parallel plans in the vocabulary PyTorch users know, validated against model and system."""

from dojo.plan.plan import ModelShape, Plan, parse_plan, validate_plan

__all__ = ["ModelShape", "Plan", "parse_plan", "validate_plan"]

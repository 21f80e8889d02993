"""Dataset fingerprint, the two-task planner, typed plans, splits, and the plan-and-preprocess entry point."""

"""Pure planning core: diff, safety limits, batching into waves, the plan document. No I/O."""

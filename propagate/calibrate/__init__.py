"""LEP self-calibration: generate, filter, and LoRA-train on the instruct model's own answers."""

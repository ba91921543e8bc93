"""Pipeline presets (*.yaml), shipped as package data: `lingraft pipeline --config smoke` finds them by name."""

"""The pipeline: workspace (task, prepared model, groups, calibration), evaluator, search job,
outputs. This is where stages meet; each stage stays usable on its own."""

"""Calibration: data sources, activation-range calibrators and the calibration artifact."""

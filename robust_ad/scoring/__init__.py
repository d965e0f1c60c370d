"""Anomaly scoring: per-pixel maps, fusion, calibration, metrics."""

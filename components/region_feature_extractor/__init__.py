"""RegionFeatureExtractor: images -> canonical per-image region-feature records (a TFX Beam component)."""

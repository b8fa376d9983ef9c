"""UniterExampleGen: annotations + region features -> a standard ``Examples`` artifact (train/eval, GZIP)."""

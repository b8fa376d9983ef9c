"""Gate that refuses to train on data the ExampleValidator found anomalies in."""

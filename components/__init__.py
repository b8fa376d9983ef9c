"""components package of uniter-tf."""

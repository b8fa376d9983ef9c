"""serving package of uniter-tf."""

"""pipeline package of uniter-tf."""

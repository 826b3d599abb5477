"""Weight files and the layouts of the tensors in them."""

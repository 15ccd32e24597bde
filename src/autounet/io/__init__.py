"""Reading and writing files: medical images, JSON contracts, atomic writes."""
